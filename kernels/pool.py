"""Max and average pooling, Numba kernels. Same contract and results as :mod:`fastcnn.reference.pool`
(no padding, floor mode; max-pool ties go to the first maximum in row-major window order and
``argmax`` holds that flat window offset r*kw + s as int32, or -1 where a fused ReLU clamped the
window). The common 2x2 / stride 2 case has its own specialised kernels.

Every driver loops with prange over the N*C independent (n, c) planes; backward accumulates only
inside its own plane, so overlapping windows need no atomics.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastcnn.kernels._config import CACHE, FASTMATH


@njit(inline="always", cache=CACHE)
def _beats(v, best):
    """True if v replaces the running maximum: strictly greater (so the first maximum keeps a
    tie), or the first NaN, which like np.argmax wins over every number."""
    return v > best or (v != v and best == best)


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _maxpool_forward(x, kh, kw, sh, sw, relu, zero, y, argmax):
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        xc, yc, ac = x[n, c], y[n, c], argmax[n, c]
        for p in range(P):
            for q in range(Q):
                h0, w0 = p * sh, q * sw
                best = xc[h0, w0]
                arg = 0
                for r in range(kh):
                    for s in range(kw):
                        v = xc[h0 + r, w0 + s]
                        if _beats(v, best):
                            best = v
                            arg = r * kw + s
                if relu and best <= 0:
                    best = zero
                    arg = -1
                yc[p, q] = best
                ac[p, q] = arg


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _maxpool_forward_2x2(x, relu, zero, y, argmax):
    """Specialised kernel_size = stride = (2, 2): the four taps unrolled, plain 4-D indexing."""
    N, C = x.shape[0], x.shape[1]
    P, Q = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for p in range(P):
            for q in range(Q):
                best, arg = x[n, c, 2 * p, 2 * q], 0
                v = x[n, c, 2 * p, 2 * q + 1]
                if _beats(v, best):
                    best, arg = v, 1
                v = x[n, c, 2 * p + 1, 2 * q]
                if _beats(v, best):
                    best, arg = v, 2
                v = x[n, c, 2 * p + 1, 2 * q + 1]
                if _beats(v, best):
                    best, arg = v, 3
                if relu and best <= 0:
                    best, arg = zero, -1
                y[n, c, p, q] = best
                argmax[n, c, p, q] = arg


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _maxpool_backward(dy, argmax, kh, kw, sh, sw, dx):
    N, C = dx.shape[0], dx.shape[1]
    P, Q = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dxc, dyc, ac = dx[n, c], dy[n, c], argmax[n, c]
        dxc[:] = 0
        for p in range(P):
            for q in range(Q):
                a = ac[p, q]
                if a >= 0:
                    dxc[p * sh + a // kw, q * sw + a % kw] += dyc[p, q]


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _maxpool_backward_2x2(dy, argmax, zero, dx):
    """Specialised kernel_size = stride = (2, 2): every covered input is written exactly once.
    (Plain 4-D indexing here measured 2.5x faster than per-row views.)"""
    N, C, H, W = dx.shape
    P, Q = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for p in range(P):
            for q in range(Q):
                a, g = argmax[n, c, p, q], dy[n, c, p, q]
                dx[n, c, 2 * p, 2 * q] = g if a == 0 else zero
                dx[n, c, 2 * p, 2 * q + 1] = g if a == 1 else zero
                dx[n, c, 2 * p + 1, 2 * q] = g if a == 2 else zero
                dx[n, c, 2 * p + 1, 2 * q + 1] = g if a == 3 else zero
            for w in range(2 * Q, W):                # floor mode: the uncovered last column
                dx[n, c, 2 * p, w] = zero
                dx[n, c, 2 * p + 1, w] = zero
        for h in range(2 * P, H):                    # and the uncovered last row
            for w in range(W):
                dx[n, c, h, w] = zero


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _avgpool_forward(x, kh, kw, sh, sw, y, inv):
    N, C = x.shape[0], x.shape[1]
    P, Q = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        xc, yc = x[n, c], y[n, c]
        for p in range(P):
            for q in range(Q):
                s_ = inv * 0
                for r in range(kh):
                    for s in range(kw):
                        s_ += xc[p * sh + r, q * sw + s]
                yc[p, q] = s_ * inv


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _avgpool_backward(dy, kh, kw, sh, sw, dx, inv):
    N, C = dx.shape[0], dx.shape[1]
    P, Q = dy.shape[2], dy.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dxc, dyc = dx[n, c], dy[n, c]
        dxc[:] = 0
        for p in range(P):
            for q in range(Q):
                g = dyc[p, q] * inv
                for r in range(kh):
                    for s in range(kw):
                        dxc[p * sh + r, q * sw + s] += g


def _out(x_shape, kernel_size, stride):
    (kh, kw), (sh, sw) = kernel_size, stride
    return (x_shape[2] - kh) // sh + 1, (x_shape[3] - kw) // sw + 1


def _contig(a):
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"pooling kernels need float32 or float64 arrays, got {a.dtype}")
    return np.ascontiguousarray(a)


def maxpool2d_forward(x, kernel_size=(2, 2), stride=(2, 2), relu=False):
    """x (N,C,H,W) -> (y (N,C,P,Q), argmax (N,C,P,Q) int32 flat window offsets, -1 = no gradient)."""
    x = _contig(x)
    P, Q = _out(x.shape, kernel_size, stride)
    y = np.empty(x.shape[:2] + (P, Q), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    if tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2):
        _maxpool_forward_2x2(x, bool(relu), x.dtype.type(0), y, argmax)
    else:
        _maxpool_forward(x, *kernel_size, *stride, bool(relu), x.dtype.type(0), y, argmax)
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, kernel_size=(2, 2), stride=(2, 2)):
    """dy (N,C,P,Q), argmax from forward -> dx (N,C,H,W)."""
    dy = _contig(dy)
    dx = np.empty(tuple(x_shape), dy.dtype)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    if tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2):
        _maxpool_backward_2x2(dy, argmax, dy.dtype.type(0), dx)
    else:
        _maxpool_backward(dy, argmax, *kernel_size, *stride, dx)
    return dx


def avgpool2d_forward(x, kernel_size=(2, 2), stride=(2, 2)):
    """x (N,C,H,W) -> y (N,C,P,Q), the mean of each window."""
    x = _contig(x)
    P, Q = _out(x.shape, kernel_size, stride)
    y = np.empty(x.shape[:2] + (P, Q), x.dtype)
    _avgpool_forward(x, *kernel_size, *stride, y, x.dtype.type(1.0 / (kernel_size[0] * kernel_size[1])))
    return y


def avgpool2d_backward(dy, x_shape, kernel_size=(2, 2), stride=(2, 2)):
    """dy (N,C,P,Q) -> dx (N,C,H,W)."""
    dy = _contig(dy)
    dx = np.empty(tuple(x_shape), dy.dtype)
    _avgpool_backward(dy, *kernel_size, *stride, dx, dy.dtype.type(1.0 / (kernel_size[0] * kernel_size[1])))
    return dx
