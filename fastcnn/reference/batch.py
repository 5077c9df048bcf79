"""The training step's two looks at a whole batch, outside the layers: whether its images are all
finite (NaN or infinite pixels would silently poison every weight) and how many of its predictions
are right."""
from __future__ import annotations

import numpy as np


def all_finite(x: np.ndarray) -> bool:
    """Whether every element of ``x`` is finite (no NaN, no infinity)."""
    return bool(np.isfinite(x).all())


def count_correct(logits: np.ndarray, labels: np.ndarray) -> int:
    """How many rows of (N, F) ``logits`` have their largest value at the row's label: the first
    largest, as np.argmax chooses (a NaN counts as the largest)."""
    return int((logits.argmax(axis=1) == labels).sum())
