"""The fully connected layer, Numba kernels: the same contract as :mod:`fastcnn.reference.linear`,
split over the threads by rows of x (forward, input gradient) and by columns of the weights (weight
gradient). Each output element is reduced in one fixed order whichever thread computes it, so
results are bit-identical for any thread count; they differ from BLAS's in the last bits (another
summation order), within the agreement tolerances."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._parallel import parallel_for

COLUMNS_PER_TASK = 256    # weight gradient: input features per task (a multiple of the vector width)


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_rows(lo, hi, x, w, b, y):
    """Rows lo .. hi of y = x @ w.T + b: one dot product of length F_in per element."""
    K, F = w.shape
    for n in range(lo, hi):
        xn = x[n]
        for k in range(K):
            wk = w[k]
            acc = b[k] * 0
            for i in range(F):
                acc += xn[i] * wk[i]
            y[n, k] = acc + b[k]


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _input_grad_rows(lo, hi, dy, w, dx):
    """Rows lo .. hi of dx = dy @ w: each row the sum over output features k, in order, of dy[n, k] * w[k]."""
    K, F = w.shape
    for n in range(lo, hi):
        dxn = dx[n]
        for i in range(F):
            dxn[i] = 0
        for k in range(K):
            g = dy[n, k]
            wk = w[k]
            for i in range(F):
                dxn[i] += g * wk[i]


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _weight_grad_columns(lo, hi, dy, x, dw):
    """Tasks lo .. hi of dw = dy.T @ x, task t the input features t*COLUMNS_PER_TASK onwards: each
    element the sum over the batch rows n, in order, of dy[n, k] * x[n, i]."""
    N, F = x.shape
    K = dy.shape[1]
    i0, i1 = lo * COLUMNS_PER_TASK, min(F, hi * COLUMNS_PER_TASK)
    for k in range(K):
        for i in range(i0, i1):
            dw[k, i] = 0
        for n in range(N):
            g = dy[n, k]
            xn = x[n]
            for i in range(i0, i1):
                dw[k, i] += g * xn[i]


def linear_forward(x, w, b):
    """x (N, F_in), w (F_out, F_in), b (F_out,) -> y (N, F_out)."""
    x, w, b = (np.ascontiguousarray(a) for a in check_float("linear", x, w, b))
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    parallel_for(_forward_rows, x.shape[0], x, w, b, y, grain=8)
    return y


def linear_backward(dy, x, w):
    """dy (N, F_out), x (N, F_in), w (F_out, F_in) -> (dx, dw, db)."""
    dy, x, w = (np.ascontiguousarray(a) for a in check_float("linear", dy, x, w))
    dx = np.empty(x.shape, x.dtype)
    dw = np.empty(w.shape, x.dtype)
    parallel_for(_input_grad_rows, x.shape[0], dy, w, dx, grain=8)
    parallel_for(_weight_grad_columns, -(-x.shape[1] // COLUMNS_PER_TASK), dy, x, dw)
    return dx, dw, dy.sum(axis=0)
