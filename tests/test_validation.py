"""The validation split and early-stopping bookkeeping (fastcnn.validation)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastcnn.validation import EarlyStopping, parse_val_split, split_indices, val_count


def test_parse_and_count():
    assert parse_val_split("5000") == 5000 and parse_val_split("0.1") == 0.1
    for bad in ("0", "1.0", "-3", "abc", "0.0"):
        with pytest.raises(ValueError):
            parse_val_split(bad)
    assert val_count(0.1, 60000) == 6000 and val_count(7, 10) == 7
    with pytest.raises(ValueError, match="leaves 0 of 10"):
        val_count(10, 10)
    with pytest.raises(ValueError):
        val_count(0.01, 10)


def test_split_is_class_balanced_seeded_and_disjoint():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=1000, p=[0.5, 0.3, 0.2])
    tr, va = split_indices(labels, 0.1, seed=1)
    assert len(va) == 100 and len(tr) == 900
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    for c in range(3):                       # each class gives its share, to within one image
        assert abs((labels[va] == c).sum() - 0.1 * (labels == c).sum()) < 1
    again = split_indices(labels, 0.1, seed=1)
    assert np.array_equal(again[1], va)
    assert not np.array_equal(split_indices(labels, 0.1, seed=2)[1], va)
    assert len(split_indices(labels, 37, seed=0)[1]) == 37


def test_early_stopping_counts_epochs_without_improvement():
    es = EarlyStopping(2)
    assert es.update(1, 1.0) and es.best_epoch == 1
    assert not es.update(2, 1.0) and not es.stop            # equal is not better
    assert es.update(3, 0.5) and es.waited == 0
    assert not es.update(4, math.nan) and not es.update(5, 0.6) and es.stop
    assert es.best_epoch == 3 and es.best_loss == 0.5
    assert EarlyStopping.from_dict(es.to_dict()) == es
    assert EarlyStopping.from_dict(EarlyStopping(3).to_dict()) == EarlyStopping(3)
    with pytest.raises(ValueError):
        EarlyStopping(0)
