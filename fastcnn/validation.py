"""A validation split held out of the training set, and early stopping on its loss.

:func:`split_indices` holds out a seeded, class-balanced part of the training images: each class
gives its share (largest remainders settle the rounding), so the validation set has the training
set's class proportions. :class:`EarlyStopping` is the bookkeeping of "stop after K epochs without a
better validation loss, keep the best epoch": small and JSON-ready, so a resumed run continues it
exactly."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["EarlyStopping", "parse_val_split", "split_indices", "val_count"]


def parse_val_split(text) -> int | float:
    """``"5000"`` -> 5000 images; ``"0.1"`` -> a tenth of the training set. ValueError otherwise."""
    s = str(text).strip()
    try:
        value = int(s)
    except ValueError:
        try:
            value = float(s)
        except ValueError:
            value = None
        if value is None or not 0.0 < value < 1.0:
            raise ValueError(f"a validation split is a count of images (e.g. 5000) or a fraction in (0, 1) "
                             f"(e.g. 0.1), got {text!r}") from None
        return value
    if value < 1:
        raise ValueError(f"a validation split needs at least 1 image, got {value}")
    return value


def val_count(split, n: int) -> int:
    """How many of ``n`` training images ``split`` (a count or a fraction) holds out; ValueError when
    fewer than one would remain for training or none would be held out."""
    k = int(split) if isinstance(split, (int, np.integer)) else int(round(float(split) * n))
    if k < 1 or k >= n:
        raise ValueError(f"a validation split of {split} leaves {n - k} of {n} training images for training "
                         f"and {k} for validation: each needs at least one")
    return k


def split_indices(labels, split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices), each sorted, of ``labels`` (1-D ints) with ``split``
    images (a count or a fraction) held out, class by class in proportion to the class sizes, chosen
    by a generator seeded from ``seed`` (the same seed, labels and split: the same indices)."""
    labels = np.asarray(labels)
    n = len(labels)
    k = val_count(split, n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (k / n)
    quota = np.floor(exact).astype(np.int64)
    short = k - int(quota.sum())
    order = np.lexsort((classes, -(exact - quota)))          # largest remainder first, ties by class
    quota[order[:short]] += 1
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x76616C]))   # "val": its own stream
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    mask = np.zeros(n, bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without a validation loss below the best so far (a NaN loss is
    never better). ``update(epoch, loss)`` returns whether the epoch is the new best; ``stop`` says
    whether to stop now; ``best_epoch`` is the epoch whose model to keep."""
    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    waited: int = 0

    def __post_init__(self):
        if int(self.patience) < 1:
            raise ValueError(f"early stopping needs a patience of at least 1 epoch, got {self.patience}")

    def update(self, epoch: int, loss: float) -> bool:
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = float(loss), int(epoch), 0
            return True
        self.waited += 1
        return False

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_loss"] = d["best_loss"] if math.isfinite(d["best_loss"]) else None
        return d

    @classmethod
    def from_dict(cls, d) -> EarlyStopping:
        best = d.get("best_loss")
        return cls(int(d["patience"]), math.inf if best is None else float(best), int(d["best_epoch"]),
                   int(d["waited"]))
