"""Data augmentation of training batches: ``shift`` (random translations of up to 2 pixels, for
digits) and ``crop-flip`` (random crops of the image padded by 4 pixels, and horizontal flips half
the time, for CIFAR-style photos). Uncovered pixels take the value of a black pixel (raw 0, as the
padding of the raw image would give).

Each batch's draws come from a generator seeded by (seed, epoch, batch) alone, never from a stream
that runs across batches, so a resumed run augments exactly as an uninterrupted one, and the Numba
kernel (:func:`fastcnn.kernels.augment.shift_flip`) is pure per pixel, so any thread count gives the
same bits. :func:`shift_flip_reference` is the NumPy statement of the same operation."""
from __future__ import annotations

import numpy as np

__all__ = ["AUGMENTATIONS", "augment_batch", "batch_draws", "shift_flip_reference"]

#: ``--augment`` choices -> (largest shift in pixels, horizontal flips).
AUGMENTATIONS = {"shift": (2, False), "crop-flip": (4, True)}
_STREAM = 0x61756700          # "aug": keeps these generators apart from every other seeded stream


def batch_draws(mode: str, n: int, seed: int, epoch: int, batch: int):
    """(dy, dx, flip) for the ``n`` images of training batch ``batch`` (1-based) of epoch ``epoch``."""
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {mode!r}; choose one of {sorted(AUGMENTATIONS)}")
    pad, flips = AUGMENTATIONS[mode]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, int(epoch), int(batch)]))
    dy = rng.integers(-pad, pad + 1, n)
    dx = rng.integers(-pad, pad + 1, n)
    flip = rng.random(n) < 0.5 if flips else np.zeros(n, bool)
    return dy, dx, flip


def shift_flip_reference(x, dy, dx, flip, fill):
    """The NumPy reference of :func:`fastcnn.kernels.augment.shift_flip`."""
    n, c, h, w = x.shape
    padded_h, padded_w = h + 2 * (p := int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))), w + 2 * p
    out = np.empty_like(x)
    for k in range(n):
        src = x[k, :, :, ::-1] if flip[k] else x[k]
        canvas = np.empty((c, padded_h, padded_w), x.dtype)
        canvas[:] = np.asarray(fill, x.dtype)[:, None, None]
        canvas[:, p:p + h, p:p + w] = src
        # a flip mirrors the image first, so the shift applies to the mirrored columns: x[.., W-1-j+dx]
        ox = -dx[k] if flip[k] else dx[k]
        out[k] = canvas[:, p + dy[k]:p + dy[k] + h, p + ox:p + ox + w]
    return out


def augment_batch(x, mode: str, seed: int, epoch: int, batch: int, fill):
    """The augmented copy of the float batch ``x`` (N, C, H, W); ``fill`` (C,) is the value of a black
    pixel after normalization."""
    from fastcnn.kernels.augment import shift_flip
    dy, dx, flip = batch_draws(mode, len(x), seed, epoch, batch)
    return shift_flip(x, dy, dx, flip, fill)
