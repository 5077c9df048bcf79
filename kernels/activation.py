"""ReLU, Numba kernels: one parallel pass over the flattened array (same results as the reference)."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for

ELEMENTS_PER_PART = 1 << 15   # fewer elements than this per thread: the split costs more than it saves


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _relu_forward(lo, hi, x, zero, y):
    xs, ys = x[lo:hi], y[lo:hi]                  # indexed from 0: no negative-index checks, so it vectorises
    for i in range(xs.shape[0]):
        v = xs[i]
        ys[i] = zero if v <= 0 else v            # NaN propagates, as np.maximum does


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _relu_backward(lo, hi, dy, y, zero, dx):
    dys, ys, dxs = dy[lo:hi], y[lo:hi], dx[lo:hi]
    for i in range(dys.shape[0]):
        dxs[i] = dys[i] if ys[i] > 0 else zero


def relu_forward(x):
    """x (any shape) -> y = max(x, 0)."""
    check_float("relu", x)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    parallel_for(_relu_forward, x.size, x.reshape(-1), x.dtype.type(0), y.reshape(-1), grain=ELEMENTS_PER_PART)
    return y


def relu_backward(dy, y):
    """dy, y (same shape) -> dx = dy where y > 0, else 0."""
    check_float("relu", dy, y)
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)
    parallel_for(_relu_backward, dy.size, dy.reshape(-1), y.reshape(-1), dy.dtype.type(0), dx.reshape(-1),
                 grain=ELEMENTS_PER_PART)
    return dx
