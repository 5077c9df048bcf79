"""ReLU, Numba kernels: one parallel pass over the flattened array (same results as the reference)."""
import numpy as np
from numba import njit, prange

from fastcnn.kernels._config import CACHE


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _relu_forward(x, zero, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else zero


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _relu_backward(dy, y, zero, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else zero


def relu_forward(x):
    """x (any shape) -> y = max(x, 0)."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu_forward(x.reshape(-1), x.dtype.type(0), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """dy, y (same shape) -> dx = dy where y > 0, else 0."""
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dy.dtype.type(0), dx.reshape(-1))
    return dx
