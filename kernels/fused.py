"""Convolution + ReLU + max pooling in one pass per image, Numba kernels. Same contract and results
as :mod:`fastcnn.reference.fused` (the composition of the three reference ops).

Dimension legend: N batch, C input channels, H, W input size, K output channels, R, S kernel size,
P, Q convolution output size, P2, Q2 pooled size, kh, kw pool window, psh, psw pool stride.

Why fuse: in the MNIST network's first layer the convolution output (N, 32, 28, 28) is the largest
activation of the network (12.8 MB at batch 128) and, unfused, it is written to memory by the
convolution, read by the pool, and in backward written again as a dense gradient that is three
quarters zeros and read once more by the weight gradient. Fused, each image's convolution planes
(K, P, Q) live only in a per-image buffer that stays in the core's cache:

forward   per image n (parallel_for over images): the convolution of image n into a (K, P*Q) buffer (the same
          workers as :mod:`fastcnn.kernels.conv` for a tiny reduction: im2col + rows_axpy), then
          :func:`~fastcnn.kernels.pool.maxpool_plane` with the ReLU into y[n] and argmax[n]. (A
          first layer with C*R*S >= SMALL_L runs the convolution kernels, then the pool.)
backward  conv_weight.weight_gradient, as for every convolution (its _backward_weight_partials: prange over
          fixed chunks of images, the register tile on the images' phase planes, read in place),
          given the pooled gradient and argmax: each chunk scatters its pooled gradients through
          argmax into a zeroed, cache-resident block in the tile's packed layout and writes its
          own partial dw and db; the partials are summed in chunk order (bit-identical for any
          thread count).
The buffers hold exactly what the unfused kernels would have stored, and are reduced in the same
order, so the fused results equal the unfused Numba results bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._common import im2col_chw_t, pad_chw, prepare
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._gemm import rows_axpy
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.conv import SMALL_L
from fastcnn.kernels.conv import _forward as _conv_forward
from fastcnn.kernels.conv_weight import weight_gradient
from fastcnn.kernels.pool import maxpool2d_forward, maxpool_plane


@njit(boundscheck=False, cache=CACHE)
def _pool_planes(conv, P, Q, kh, kw, psh, psw, relu, zero, yn, an):
    """conv (K, P*Q) of one image -> yn, an (K, P2, Q2): max pool with the ReLU (``relu``, always True: an
    argument, not a literal, so maxpool_plane's compiled version is the pooling layers' own)."""
    planes = conv.reshape(conv.shape[0], P, Q)
    for k in range(conv.shape[0]):
        maxpool_plane(planes[k], kh, kw, psh, psw, relu, zero, yn[k], an[k])


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_small(lo, hi, x, w2, b, R, S, sh, sw, ph, pw, P, Q, kh, kw, psh, psw, relu, zero, y, argmax):
    """Tiny C*R*S (the first layer): w2 (K, C*R*S) in (c, r, s) order -> y, argmax (N, K, P2, Q2)."""
    N, C, H, W = x.shape
    K = y.shape[1]
    for n in range(lo, hi):
        xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
        pad_chw(x[n], ph, pw, xp)
        colT = np.empty((C * R * S, P * Q), x.dtype)
        im2col_chw_t(xp, R, S, sh, sw, P, Q, colT)
        conv = np.empty((K, P * Q), x.dtype)                       # this image's conv planes
        rows_axpy(w2, colT, b, conv)
        _pool_planes(conv, P, Q, kh, kw, psh, psw, relu, zero, y[n], argmax[n])


def window_offsets(pool_size, row):
    """Where element a = r*kw + s of a pool window lies in a dense block with rows ``row`` wide,
    from the window's corner: a table, since an integer division per scattered element cost more
    than the rest of the scatter."""
    kh, kw = pool_size
    a = np.arange(kh * kw)
    return ((a // kw) * row + a % kw).astype(np.int64)


def _sizes(x, w, stride, padding, pool_size, pool_stride):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    (kh, kw), (psh, psw) = pool_size, pool_stride
    return P, Q, (P - kh) // psh + 1 if P >= kh else 0, (Q - kw) // psw + 1 if Q >= kw else 0


def conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool_size, pool_stride):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> (y (N,K,P2,Q2), argmax (N,K,P2,Q2) int32)."""
    x, w, b = prepare(x, w, b)
    stride, padding, pool_size, pool_stride = map(tuple, (stride, padding, pool_size, pool_stride))
    N, C = x.shape[:2]
    K, _, R, S = w.shape
    P, Q, P2, Q2 = _sizes(x, w, stride, padding, pool_size, pool_stride)
    y = np.empty((N, K, P2, Q2), x.dtype)
    argmax = np.empty((N, K, P2, Q2), np.int32)
    if N == 0 or P2 == 0 or Q2 == 0:
        return y, argmax
    if C * R * S < SMALL_L:
        parallel_for(_forward_small, N, x, w.reshape(K, C * R * S), b, R, S, *stride, *padding, P, Q, *pool_size,
                     *pool_stride, True, x.dtype.type(0), y, argmax)
        return y, argmax
    # A first layer with a long reduction (not the MNIST network's): the convolution kernels as they
    # are, then the pool; same results, without the cache benefit.
    return maxpool2d_forward(_conv_forward(x, w, b, stride, padding), pool_size, pool_stride, relu=True)


def conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride):
    """dy (N,K,P2,Q2), argmax from forward, x (N,C,H,W), w (K,C,R,S) -> (dw (K,C,R,S), db (K,))."""
    dy, x, w = prepare(dy, x, w)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    stride, padding, pool_size, pool_stride = map(tuple, (stride, padding, pool_size, pool_stride))
    _, Q, _, _ = _sizes(x, w, stride, padding, pool_size, pool_stride)
    return weight_gradient(x, dy, w, stride, padding, argmax, window_offsets(pool_size, Q), pool_stride)
