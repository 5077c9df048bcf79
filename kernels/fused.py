"""Convolution + ReLU + max pooling as one op (ConvReLUMaxPool2D), Numba kernels. Same contract and
results as :mod:`fastcnn.reference.fused` (the composition of the three reference ops).

Dimension legend: N batch, C input channels, H, W input size, K output channels, R, S kernel size,
P, Q convolution output size, P2, Q2 pooled size, kh, kw pool window, psh, psw pool stride.

Why fuse: in the MNIST network's first layer the convolution output (N, 32, 28, 28) is the largest
activation of the network (12.8 MB at batch 128) and, unfused, it is written to memory by the
convolution, read by the pool, and in backward written again as a dense gradient that is three
quarters zeros and read once more by the weight gradient. Fused, each image's convolution lives
only in a per-image buffer that stays in the core's cache:

forward   2x2 / stride 2 pool, tiny reduction (C*R*S < SMALL_L): per image n (parallel_for over
          images), the convolution of the pixels under the pool windows into a (K, 4*P2*Q2)
          buffer ordered by place in the window (im2col_windows, then rows_axpy as in
          :mod:`fastcnn.kernels.conv`), pooled with the ReLU into y[n] and argmax[n] by comparing
          its four blocks (_relu_max4). A longer reduction with that pool runs the convolution
          kernels in their pooling mode (conv.relu_maxpool_2x2_forward: each block of results
          pooled as it is computed); any other layer the convolution kernels, then the pool.
backward  tiny reduction, 2x2 / stride 2 pool (the first layer): fixed chunks of images, per image
          _forward_small's columns and, per output channel, the pooled gradient routed to its
          window places; each dw element is a dot product LLVM vectorises (_backward_small),
          the chunks' partials summed in order. dx, if asked for, as below.
          Where the pool's windows own several pixels each and the layer is wide enough
          (conv_pooled.sparse_route: the MNIST network's second layer), the pooled gradient is
          used as the sparse matrix it is: conv_pooled.pooled_backward multiplies only the
          nonzeros (at most one per window), for dw, db and, where its tiles fit the kernel, dx.
          Otherwise dw, db: conv_weight.weight_gradient, as for every convolution (its
          _backward_weight_partials over fixed chunks of images, the register tile on the images'
          phase planes, read in place), given the pooled gradient and argmax: each chunk scatters
          its pooled gradients through argmax into a zeroed, cache-resident block in the tile's
          packed layout and writes its own partial dw and db; the partials are summed in chunk
          order (bit-identical for any thread count). dx (not for a first layer):
          conv.unpooled_input_gradient, where dx is a stride-1 forward convolution on the NR-channel
          route, builds each image's dense gradient inside that convolution; elsewhere
          maxpool2d_backward, then the convolution's input gradient.
The forward, and the backward off the tiny and sparse routes, compute every value with the same
operations in the same order as the unfused kernels (only the pixels' order in the buffers
differs), so those results equal the unfused Numba results bit for bit; those two routes sum in
another order (the same for any thread count).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._common import TABLES, pad_chw, prepare
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._gemm import rows_axpy
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.conv import SMALL_L, relu_maxpool_2x2_forward, unpooled_input_gradient, window_offsets
from fastcnn.kernels.conv import _forward as _conv_forward
from fastcnn.kernels.conv_pooled import pooled_backward, sparse_route
from fastcnn.kernels.conv_weight import IMAGES_PER_CHUNK, weight_gradient
from fastcnn.kernels.pool import max4, max4_exact, maxpool2d_forward


@njit(boundscheck=False, inline="always", cache=CACHE)
def im2col_windows(xp, R, S, sh, sw, P2, Q2, colT):
    """xp (C, Hp, Wp) -> colT (C*R*S, 4*P2*Q2): the im2col columns of the convolution pixels under
    the 2x2 / stride 2 pool windows, grouped by their place a = dr*2 + dc in the window: column
    a*P2*Q2 + p2*Q2 + q2 is pixel (2*p2 + dr, 2*q2 + dc). Pooling then compares four contiguous
    blocks element by element, a loop as long as the pooled image that LLVM vectorises, where a
    28-wide plane's rows are shorter than one 16-lane vector step."""
    C = xp.shape[0]
    M = P2 * Q2
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                for a in range(4):
                    dr, dc = a // 2, a % 2
                    for p2 in range(P2):
                        base = a * M + p2 * Q2
                        h = (2 * p2 + dr) * sh + r
                        for q2 in range(Q2):
                            colT[row, base + q2] = xp[c, h, (2 * q2 + dc) * sw + s]


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _relu_max4(w, M, zero, y, arg):
    """y[o], arg[o] for o < M: ReLU and max over the window w[o], w[M + o], w[2M + o], w[3M + o]
    (row-major window order), with pool.max4's selects: the first maximum keeps a tie, -1 where
    the ReLU clamps. Returns NaN if the window holds a NaN or an infinity (then
    _relu_max4_exact redoes it)."""
    probe = zero
    for o in range(M):
        a0, a1, a2, a3 = w[o], w[M + o], w[2 * M + o], w[3 * M + o]
        probe += (a0 + a1 + a2 + a3) * zero
        best, at = max4(a0, a1, a2, a3)
        keep = best > zero
        y[o] = best if keep else zero
        arg[o] = at if keep else -1
    return probe


@njit(boundscheck=False, cache=CACHE)
def _relu_max4_exact(w, M, zero, y, arg):
    """_relu_max4 with max pooling's NaN rule (pool.max4_exact: the first NaN wins)."""
    for o in range(M):
        best, at = max4_exact(w[o], w[M + o], w[2 * M + o], w[3 * M + o])
        if best <= zero:
            best, at = zero, -1
        y[o] = best
        arg[o] = at


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_small(lo, hi, x, w2, b, R, S, sh, sw, ph, pw, zero, y, argmax):
    """Tiny C*R*S (the first layer), 2x2 / stride 2 pool: w2 (K, C*R*S) in (c, r, s) order -> y,
    argmax (N, K, P2, Q2). Per image: only the pixels under pool windows are convolved, in
    im2col_windows' order, then pooled with the ReLU."""
    N, C, H, W = x.shape
    K, P2, Q2 = y.shape[1], y.shape[2], y.shape[3]
    M = P2 * Q2
    for n in range(lo, hi):
        xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
        pad_chw(x[n], ph, pw, xp)
        colT = np.empty((C * R * S, 4 * M), x.dtype)
        if sh == 1 and sw == 1:         # inlined with constant strides: 2.3x faster than with runtime ones
            im2col_windows(xp, R, S, 1, 1, P2, Q2, colT)
        else:
            im2col_windows(xp, R, S, sh, sw, P2, Q2, colT)
        conv = np.empty((K, 4 * M), x.dtype)                       # this image's convolution, by window place
        rows_axpy(w2, colT, b, conv)
        yn = y[n].reshape(K, M)
        an = argmax[n].reshape(K, M)
        for k in range(K):
            probe = _relu_max4(conv[k], M, zero, yn[k], an[k])
            if probe != probe:
                _relu_max4_exact(conv[k], M, zero, yn[k], an[k])


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_small(lo, hi, x, dy, argmax, R, S, sh, sw, ph, pw, parts):
    """Tiny C*R*S, 2x2 / stride 2 pool, chunks lo .. hi of the images (bounds depend on N only): parts[ch]
    (C*R*S + 1, K), the chunk's partial dw^T and, as its last row, db. Per image, _forward_small's
    columns (im2col_windows), and per channel k the pooled gradient routed to its window places (gk:
    zero where the place lost or the ReLU cut); then each dw[k, l] is one dot product of gk with column
    row l, a loop over the image's 4*P2*Q2 window pixels that LLVM vectorises, three rows per pass (the
    MNIST network's first layer, batch 128, one thread: 1.48 ms where the dense route scattered into
    zeroed panels for the register tile, 1.07 ms)."""
    N, C, H, W = x.shape
    K, P2, Q2 = dy.shape[1], dy.shape[2], dy.shape[3]
    M = P2 * Q2
    L = C * R * S
    nchunks = parts.shape[0]
    zero = x.dtype.type(0)
    xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
    colT = np.empty((L, 4 * M), x.dtype)
    gk = np.empty(4 * M, x.dtype)
    for ch in range(lo, hi):
        n0 = ch * N // nchunks
        n1 = (ch + 1) * N // nchunks
        part = parts[ch]
        for i in range(L + 1):
            for k in range(K):
                part[i, k] = zero
        for n in range(n0, n1):
            pad_chw(x[n], ph, pw, xp)
            if sh == 1 and sw == 1:
                im2col_windows(xp, R, S, 1, 1, P2, Q2, colT)
            else:
                im2col_windows(xp, R, S, sh, sw, P2, Q2, colT)
            gn = dy[n].reshape(K, M)
            an = argmax[n].reshape(K, M)
            for k in range(K):
                g, a = gn[k], an[k]
                total = zero
                for o in range(M):
                    v = g[o]
                    e = a[o]
                    gk[o] = v if e == 0 else zero
                    gk[M + o] = v if e == 1 else zero
                    gk[2 * M + o] = v if e == 2 else zero
                    gk[3 * M + o] = v if e == 3 else zero
                    total += v if e >= 0 else zero
                part[L, k] += total
                l = 0
                while l + 3 <= L:         # three rows per pass: gk loaded once for three products
                    c0, c1, c2 = colT[l], colT[l + 1], colT[l + 2]
                    a0 = a1 = a2 = zero
                    for j in range(4 * M):
                        gj = gk[j]
                        a0 += gj * c0[j]
                        a1 += gj * c1[j]
                        a2 += gj * c2[j]
                    part[l, k] += a0
                    part[l + 1, k] += a1
                    part[l + 2, k] += a2
                    l += 3
                while l < L:
                    col = colT[l]
                    acc = zero
                    for j in range(4 * M):
                        acc += gk[j] * col[j]
                    part[l, k] += acc
                    l += 1


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _sum_small(parts, dw, db):
    """dw (K, L) and db (K,) from _backward_small's chunk partials parts (nchunks, L + 1, K), summed
    in chunk order (whatever the thread count; a few KB: one thread). The sum of
    conv_weight._sum_partials, on one thread: that driver compiles with the register tile's half of
    the warm-up and this one with the helper's, and one function in both halves would give its
    cache entries two writers (kernels/_warmup.py)."""
    nchunks, L1, K = parts.shape
    for k in range(K):
        for l in range(L1):
            acc = parts[0, l, k]
            for ch in range(1, nchunks):
                acc += parts[ch, l, k]
            if l < L1 - 1:
                dw[k, l] = acc
            else:
                db[k] = acc


@TABLES
def _sizes(x_shape, w_shape, stride, padding, pool_size, pool_stride):
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    (kh, kw), (psh, psw) = pool_size, pool_stride
    return P, Q, (P - kh) // psh + 1 if P >= kh else 0, (Q - kw) // psw + 1 if Q >= kw else 0


def conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool_size, pool_stride):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> (y (N,K,P2,Q2), argmax (N,K,P2,Q2) int32)."""
    x, w, b = prepare(x, w, b)
    stride, padding, pool_size, pool_stride = map(tuple, (stride, padding, pool_size, pool_stride))
    N, C = x.shape[:2]
    K, _, R, S = w.shape
    P, Q, P2, Q2 = _sizes(x.shape, w.shape, stride, padding, pool_size, pool_stride)
    if N == 0 or P2 == 0 or Q2 == 0:
        return np.empty((N, K, P2, Q2), x.dtype), np.empty((N, K, P2, Q2), np.int32)
    if C * R * S < SMALL_L and pool_size == pool_stride == (2, 2):
        y, argmax = np.empty((N, K, P2, Q2), x.dtype), np.empty((N, K, P2, Q2), np.int32)
        parallel_for(_forward_small, N, x, w.reshape(K, C * R * S), b, R, S, *stride, *padding, x.dtype.type(0), y,
                     argmax)
        return y, argmax
    # A long reduction (a layer after the first, or a first layer on many channels): with a 2x2 /
    # stride 2 pool the convolution kernels pool each result block as they go; otherwise the
    # convolution kernels, then the pool. The same results either way.
    if pool_size == pool_stride == (2, 2):
        pooled = relu_maxpool_2x2_forward(x, w, b, stride, padding)
        if pooled is not None:
            return pooled
    return maxpool2d_forward(_conv_forward(x, w, b, stride, padding), pool_size, pool_stride, relu=True)


def conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx=True):
    """dy (N,K,P2,Q2), argmax from forward, x (N,C,H,W), w (K,C,R,S) -> (dx (N,C,H,W) or None, dw
    (K,C,R,S), db (K,)), from the pooled gradient: for a tiny reduction under a 2x2 / stride 2 pool by
    _backward_small; on the sparse route (conv_pooled) from its nonzeros only; otherwise dw's dense
    gradient is built per chunk of images inside its kernel (_scatter_pooled), dx's per image inside the
    convolution where it takes the NR-channel route at stride 1 (unpooled_input_gradient), else by
    maxpool2d_backward."""
    dy, x, w = prepare(dy, x, w)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    stride, padding, pool_size, pool_stride = map(tuple, (stride, padding, pool_size, pool_stride))
    P, Q, _, _ = _sizes(x.shape, w.shape, stride, padding, pool_size, pool_stride)
    N, C = x.shape[:2]
    K, _, R, S = w.shape
    if C * R * S < SMALL_L and pool_size == pool_stride == (2, 2) and N > 0 and dy.size > 0:
        nchunks = max(1, min(N, -(-N // IMAGES_PER_CHUNK)))
        parts = np.empty((nchunks, C * R * S + 1, K), x.dtype)
        parallel_for(_backward_small, nchunks, x, dy, argmax, R, S, *stride, *padding, parts)
        dx, dw, db = None, np.empty((K, C, R, S), x.dtype), np.empty(K, x.dtype)
        _sum_small(parts, dw.reshape(K, C * R * S), db)
    elif sparse_route(C, R, S, pool_size, pool_stride, x.itemsize):
        dx, dw, db = pooled_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx)
    else:
        dx, (dw, db) = None, weight_gradient(x, dy, w, stride, padding, argmax, window_offsets(pool_size, Q),
                                             pool_stride)
    if not need_dx or dx is not None:
        return dx, dw, db
    conv_shape = (x.shape[0], w.shape[0], P, Q)
    return unpooled_input_gradient(dy, argmax, w, x.shape, conv_shape, stride, padding, pool_size, pool_stride), dw, db
