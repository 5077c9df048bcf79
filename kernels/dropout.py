"""Dropout, Numba kernels: the counter-based mask of :mod:`fastcnn.reference.dropout` (same bits)
built in parallel, one block of 4 elements (one 64-bit word) per iteration, so any thread count
gives the same mask."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.activation import ELEMENTS_PER_PART
from fastcnn.reference.dropout import GOLDEN, MIX1, MIX2, STEPS


@njit(nogil=True, boundscheck=False, cache=CACHE)
def drop_elements(xs, base, key, threshold, scale, zero, ys, ms):
    """ys = xs * ms for the elements base, base + 1, ... of an input (xs, ys, ms: 1-D, indexed from
    0): element i's draw is lane i % 4 (lowest first) of word splitmix64(key + (i // 4 + 1) *
    GOLDEN), ms the scale where it is at least threshold, else zero. The word is recomputed for each
    of its 4 elements: a loop without a dependence between elements, which LLVM vectorises, runs
    several times faster than one that shares the word. Also the fused dropout-linear forward's
    (kernels/linear.py), a row at a time."""
    s2, s30, s27, s31, m16 = np.uint64(2), np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(0xFFFF)
    for j in range(xs.shape[0]):
        u = base + np.uint64(j)
        z = key + ((u >> s2) + np.uint64(1)) * GOLDEN
        z = (z ^ (z >> s30)) * MIX1
        z = (z ^ (z >> s27)) * MIX2
        z = z ^ (z >> s31)
        draw = (z >> ((u & np.uint64(3)) * np.uint64(16))) & m16
        m = scale if draw >= threshold else zero
        ms[j] = m
        ys[j] = xs[j] * m


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _dropout_forward(lo, hi, x, key, threshold, scale, zero, y, mask):
    """Elements of blocks lo .. hi (4 elements each, one word of draws) of y = x * mask."""
    i0, i1 = 4 * lo, min(x.shape[0], 4 * hi)
    drop_elements(x[i0:i1], np.uint64(i0), key, threshold, scale, zero, y[i0:i1], mask[i0:i1])


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _dropout_backward(lo, hi, dy, mask, dx):
    dys, ms, dxs = dy[lo:hi], mask[lo:hi], dx[lo:hi]      # indexed from 0: vectorises
    for i in range(dys.shape[0]):
        dxs[i] = dys[i] * ms[i]


def dropout_forward(x, key, threshold):
    """x (any shape), the step's 64-bit key and 16-bit threshold -> (y = x * mask, mask)."""
    x = np.ascontiguousarray(check_float("dropout", x)[0])
    y, mask = np.empty_like(x), np.empty_like(x)
    scale = x.dtype.type(STEPS / (STEPS - threshold))
    parallel_for(_dropout_forward, -(-x.size // 4), x.reshape(-1), np.uint64(key), np.uint64(threshold), scale,
                 x.dtype.type(0), y.reshape(-1), mask.reshape(-1), grain=ELEMENTS_PER_PART // 4)
    return y, mask


def dropout_backward(dy, mask):
    """dy, the forward's mask -> dx = dy * mask."""
    dy, mask = (np.ascontiguousarray(a) for a in check_float("dropout", dy, mask))
    dx = np.empty_like(dy)
    parallel_for(_dropout_backward, dy.size, dy.reshape(-1), mask.reshape(-1), dx.reshape(-1),
                 grain=ELEMENTS_PER_PART)
    return dx
