"""Max and average pooling, Numba kernels. Same contract and results as :mod:`fastcnn.reference.pool`
(no padding, floor mode; max-pool ties go to the first maximum in row-major window order and
``argmax`` holds that flat window offset r*kw + s as int32).

Every driver loops with prange over the N*C independent (n, c) planes; backward accumulates only
inside its own plane, so overlapping windows need no atomics.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, boundscheck=False, cache=False)
def _maxpool_forward(x, kh, kw, sh, sw, y, argmax):
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
                        if v > best:                 # strict: the first maximum keeps the tie
                            best = v
                            arg = r * kw + s
                yc[p, q] = best
                ac[p, q] = arg


@njit(parallel=True, boundscheck=False, cache=False)
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
                dxc[p * sh + a // kw, q * sw + a % kw] += dyc[p, q]


@njit(parallel=True, fastmath={"reassoc", "contract", "nsz"}, boundscheck=False, cache=False)
def _avgpool_forward(x, kh, kw, sh, sw, y, inv):
    N, C = x.shape[0], x.shape[1]
    P, Q = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        xc, yc = x[n, c], y[n, c]
        for p in range(P):
            for q in range(Q):
                s_ = xc[p * sh, q * sw] * 0
                for r in range(kh):
                    for s in range(kw):
                        s_ += xc[p * sh + r, q * sw + s]
                yc[p, q] = s_ * inv


@njit(parallel=True, boundscheck=False, cache=False)
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


def maxpool2d_forward(x, kernel_size=(2, 2), stride=(2, 2)):
    """x (N,C,H,W) -> (y (N,C,P,Q), argmax (N,C,P,Q) int32 flat window offsets)."""
    x = _contig(x)
    P, Q = _out(x.shape, kernel_size, stride)
    y = np.empty(x.shape[:2] + (P, Q), x.dtype)
    argmax = np.empty(y.shape, np.int32)
    _maxpool_forward(x, *kernel_size, *stride, y, argmax)
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, kernel_size=(2, 2), stride=(2, 2)):
    """dy (N,C,P,Q), argmax from forward -> dx (N,C,H,W)."""
    dy = _contig(dy)
    dx = np.empty(tuple(x_shape), dy.dtype)
    _maxpool_backward(dy, np.ascontiguousarray(argmax, dtype=np.int32), *kernel_size, *stride, dx)
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
