"""Augmentation: the Numba kernel agrees with the NumPy reference bit for bit, for any thread count,
and the draws depend on (seed, epoch, batch) alone."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from fastcnn.augment import AUGMENTATIONS, augment_batch, batch_draws, shift_flip_reference
from fastcnn.kernels import augment as augment_kernels
from fastcnn.kernels.augment import shift_flip


def test_a_known_shift_and_flip():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    out = shift_flip(x, np.array([1, 0]), np.array([0, 1]), np.array([False, True]), np.array([-1.0]))
    assert out[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [-1, -1, -1]]       # moved up by one row
    # mirrored, then read one column to the right: x[i, W-1-j+1]
    assert out[1, 0].tolist() == [[-1, 11, 10], [-1, 14, 13], [-1, 17, 16]]


@pytest.mark.parametrize("mode", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_reference_for_any_thread_count(mode, dtype, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 3, 12, 10)).astype(dtype)
    dy, dx, flip = batch_draws(mode, len(x), seed=5, epoch=2, batch=7)
    fill = np.array([-0.5, 0.0, 0.5], dtype)
    expected = shift_flip_reference(x, dy, dx, flip, fill)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            for min_pixels in (0, 1 << 40):                   # the parallel driver, then the serial one
                monkeypatch.setattr(augment_kernels, "PARALLEL_MIN_PIXELS", min_pixels)
                assert np.array_equal(shift_flip(x, dy, dx, flip, fill), expected)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(augment_batch(x, mode, 5, 2, 7, fill), expected)


def test_draws_depend_on_seed_epoch_batch_only():
    a = batch_draws("crop-flip", 4000, seed=1, epoch=3, batch=9)
    assert all(np.array_equal(u, v) for u, v in zip(a, batch_draws("crop-flip", 4000, 1, 3, 9)))
    assert not np.array_equal(a[0], batch_draws("crop-flip", 4000, 1, 3, 10)[0])
    assert not np.array_equal(a[0], batch_draws("crop-flip", 4000, 1, 4, 9)[0])
    assert a[0].min() == -4 and a[0].max() == 4 and 0.45 < a[2].mean() < 0.55
    dy, dx, flip = batch_draws("shift", 4000, 1, 1, 1)
    assert set(dy.tolist()) == set(range(-2, 3)) and set(dx.tolist()) == set(range(-2, 3)) and not flip.any()
    with pytest.raises(ValueError, match="unknown augmentation"):
        batch_draws("rotate", 4, 0, 1, 1)


def test_bad_arguments():
    x = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(TypeError):
        shift_flip(x.astype(np.uint8), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(1))
    with pytest.raises(ValueError):
        shift_flip(x, np.zeros(3), np.zeros(2), np.zeros(2), np.zeros(1))
