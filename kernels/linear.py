"""The fully connected layer, Numba kernels: the same contract as :mod:`fastcnn.reference.linear`,
split over the threads by rows of x (forward, input gradient) and by columns of the weights (weight
gradient). Each output element is reduced in one fixed order whichever thread computes it, so
results are bit-identical for any thread count; they differ from BLAS's in the last bits (another
summation order), within the agreement tolerances. The forward and input-gradient drivers also
take a dropout mask: the fused ``dropout_linear_forward`` / ``_backward`` (DropoutLinear) run the
dropout before the layer in the same calls, one fewer kernel call and wrapper each way in the
Python between a step's kernels."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import TABLES, check_float
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.dropout import drop_elements
from fastcnn.reference.dropout import STEPS

COLUMNS_PER_TASK = 256    # weight gradient: input features per task (a multiple of the vector width)
ROWS = 4                  # forward: rows computed together
BLOCK = 512               # input features per block: w's block (F_out x BLOCK) stays in L1 while rows pass


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_rows(lo, hi, x, w, b, y, key, threshold, scale, zero, xd, mask):
    """Row groups lo .. hi (ROWS rows each, the last one shorter) of y = x @ w.T + b. A full group
    computes its ROWS dot products with w[k] together (each element of w loaded once for ROWS rows);
    each element is a sum of per-block dot products (blocks of BLOCK input features, in order), then
    the bias. Groups are fixed by the row index, so any split over threads gives the same bits.

    With a mask (not NO_DROPOUT's empty one) the input is dropout's first: the part's rows are
    dropped row after row (xd = x * mask, kernels/dropout.drop_elements, both stored for the
    backward), then multiplied from xd, the same values and products as the two ops one after the
    other in one call. (Dropping each row's block as the dot products reach it read x in the
    blocks' order, from memory: 228 against 186 us for the two ops in a training step.)"""
    N = x.shape[0]
    K, F = w.shape
    dropout = mask.shape[0] > 0
    src = xd if dropout else x
    n0, n1 = lo * ROWS, min(N, hi * ROWS)
    if dropout:
        for r in range(n0, n1):
            drop_elements(x[r], np.uint64(r * F), key, threshold, scale, zero, xd[r], mask[r])
    y[n0:n1] = 0
    for i0 in range(0, F, BLOCK):
        i1 = min(F, i0 + BLOCK)
        for gr in range(lo, hi):
            n = gr * ROWS
            if n + ROWS <= N:
                x0, x1, x2, x3 = src[n, i0:i1], src[n + 1, i0:i1], src[n + 2, i0:i1], src[n + 3, i0:i1]
                for k in range(K):
                    ws = w[k, i0:i1]
                    a0 = a1 = a2 = a3 = y[n, k] * 0
                    for i in range(ws.shape[0]):
                        wv = ws[i]
                        a0 += x0[i] * wv
                        a1 += x1[i] * wv
                        a2 += x2[i] * wv
                        a3 += x3[i] * wv
                    y[n, k] += a0
                    y[n + 1, k] += a1
                    y[n + 2, k] += a2
                    y[n + 3, k] += a3
            else:
                for r in range(n, N):
                    xs = src[r, i0:i1]            # slices indexed from 0: no negative-index checks, so LLVM vectorises
                    for k in range(K):
                        ws = w[k, i0:i1]
                        acc = y[r, k] * 0
                        for i in range(xs.shape[0]):
                            acc += xs[i] * ws[i]
                        y[r, k] += acc
    for n in range(n0, n1):
        for k in range(K):
            y[n, k] += b[k]


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _input_grad_rows(lo, hi, dy, w, dx, mask):
    """Rows lo .. hi of dx = dy @ w: each element the sum over output features k, four at a time
    from k = 0 (then the rest one by one), of dy[n, k] * w[k, i]; by blocks of BLOCK input features
    so w's block stays in L1. With a mask (not NO_DROPOUT's), the rows are then multiplied by it,
    row after row: dropout's backward, the product the two ops one after the other compute."""
    K, F = w.shape
    dropout = mask.shape[0] > 0
    for i0 in range(0, F, BLOCK):
        i1 = min(F, i0 + BLOCK)
        for n in range(lo, hi):
            dxs = dx[n, i0:i1]
            dxs[:] = 0
            k = 0
            while k + 4 <= K:                 # four rows of w per pass over dx's block
                g0, g1, g2, g3 = dy[n, k], dy[n, k + 1], dy[n, k + 2], dy[n, k + 3]
                w0, w1, w2, w3 = w[k, i0:i1], w[k + 1, i0:i1], w[k + 2, i0:i1], w[k + 3, i0:i1]
                for i in range(dxs.shape[0]):
                    dxs[i] += g0 * w0[i] + g1 * w1[i] + g2 * w2[i] + g3 * w3[i]
                k += 4
            for kk in range(k, K):
                g = dy[n, kk]
                ws = w[kk, i0:i1]
                for i in range(dxs.shape[0]):
                    dxs[i] += g * ws[i]
    if dropout:
        for n in range(lo, hi):
            dxs, ms = dx[n], mask[n]
            for i in range(dxs.shape[0]):
                dxs[i] *= ms[i]


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _weight_grad_columns(lo, hi, dy, x, dw, db):
    """Tasks lo .. hi of dw = dy.T @ x, task t the input features t*COLUMNS_PER_TASK onwards (the part
    holding task 0 also sums db = dy over the rows, in its one compiled order): each
    element the sum over the batch rows n, four at a time from n = 0 (then the rest one by one), of
    dy[n, k] * x[n, i] (each row of x read once, the task's block of dw in L1). Each task is its own
    loop, so where an element falls in the vectorised loop (and so how its multiply-adds are fused)
    does not depend on how the tasks are split over threads."""
    N, F = x.shape
    K = dy.shape[1]
    if lo == 0:
        db[:] = 0
        for n in range(N):
            for k in range(K):
                db[k] += dy[n, k]
    for t in range(lo, hi):
        i0, i1 = t * COLUMNS_PER_TASK, min(F, (t + 1) * COLUMNS_PER_TASK)
        dw[:, i0:i1] = 0
        n = 0
        while n + 4 <= N:                     # four rows of x per pass over dw's block
            x0, x1, x2, x3 = x[n, i0:i1], x[n + 1, i0:i1], x[n + 2, i0:i1], x[n + 3, i0:i1]
            for k in range(K):
                g0, g1, g2, g3 = dy[n, k], dy[n + 1, k], dy[n + 2, k], dy[n + 3, k]
                dws = dw[k, i0:i1]
                for i in range(dws.shape[0]):
                    dws[i] += g0 * x0[i] + g1 * x1[i] + g2 * x2[i] + g3 * x3[i]
            n += 4
        for nn in range(n, N):
            xs = x[nn, i0:i1]
            for k in range(K):
                g = dy[nn, k]
                dws = dw[k, i0:i1]
                for i in range(xs.shape[0]):
                    dws[i] += g * xs[i]


# The drivers' "no dropout" mask: empty (one compiled driver for both ops).
NO_DROPOUT = {np.dtype(t): np.empty((0, 0), t) for t in (np.float32, np.float64)}


@TABLES
def _dropout_scalars(dtype, threshold):
    """(threshold, scale, zero) as the forward driver takes them, made once per dtype and
    threshold: the wrapper runs in the Python between a step's kernels, on one thread."""
    t = dtype.type
    return np.uint64(threshold), t(STEPS / (STEPS - threshold)), t(0)


def linear_forward(x, w, b):
    """x (N, F_in), w (F_out, F_in), b (F_out,) -> y (N, F_out)."""
    x, w, b = (np.ascontiguousarray(a) for a in check_float("linear", x, w, b))
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    none = NO_DROPOUT[x.dtype]
    parallel_for(_forward_rows, -(-x.shape[0] // ROWS), x, w, b, y, np.uint64(0), *_dropout_scalars(x.dtype, 0),
                 none, none, grain=2)
    return y


def dropout_linear_forward(x, key, threshold, w, b):
    """dropout_forward then linear_forward in one pass over x (N, F_in) -> (y (N, F_out), xd, mask),
    xd = x * mask the dropped input (the linear layer's input, for its backward)."""
    x, w, b = (np.ascontiguousarray(a) for a in check_float("linear", x, w, b))
    y, xd, mask = np.empty((x.shape[0], w.shape[0]), x.dtype), np.empty_like(x), np.empty_like(x)
    parallel_for(_forward_rows, -(-x.shape[0] // ROWS), x, w, b, y, np.uint64(key),
                 *_dropout_scalars(x.dtype, threshold), xd, mask, grain=2)
    return y, xd, mask


def linear_backward(dy, x, w):
    """dy (N, F_out), x (N, F_in), w (F_out, F_in) -> (dx, dw, db)."""
    return _backward(dy, x, w, None)


def dropout_linear_backward(dy, xd, mask, w):
    """linear_backward(dy, xd, w) then dropout_backward of its dx with ``mask``, from the fused
    forward's xd and mask -> (dx, dw, db)."""
    return _backward(dy, xd, w, mask)


def _backward(dy, x, w, mask):
    dy, x, w = (np.ascontiguousarray(a) for a in check_float("linear", dy, x, w))
    mask = NO_DROPOUT[x.dtype] if mask is None else np.ascontiguousarray(check_float("linear", x, mask)[1])
    dx = np.empty(x.shape, x.dtype)
    dw = np.empty(w.shape, x.dtype)
    parallel_for(_input_grad_rows, x.shape[0], dy, w, dx, mask, grain=8)
    db = np.empty(w.shape[0], x.dtype)                  # written whole by the part holding task 0
    parallel_for(_weight_grad_columns, -(-x.shape[1] // COLUMNS_PER_TASK), dy, x, dw, db)
    return dx, dw, db
