"""The gradients of a convolution followed by a ReLU and a max pool, from the pooled gradient as the
sparse matrix it is, Numba kernels: dw, db and dx for fused.conv2d_relu_maxpool_backward. Same
results as :mod:`fastcnn.reference.fused` up to the order of the sums (fastcnn.testing's
tolerance), for finite inputs and weights: an infinite one meets zero gradients in the reference
(0 * inf = NaN) that this route never multiplies, so fewer gradients turn NaN here.

Dimension legend: as in kernels/conv.py, and P2, Q2 the pooled size, kh, kw the pool window, psh,
psw its stride.

Why: the convolution's dense gradient (N, K, P, Q) has at most one nonzero per pool window (the
maximum's place; none where the ReLU cut), three quarters zeros or more under a 2x2 pool. The dense
kernels (conv_weight, conv.unpooled_input_gradient) multiply those zeros on the register tile;
here each nonzero g at output pixel (p, q) of channel k costs its R*S*C multiply-adds only:

    dw[k, c, r, s] += g * x_pad[c, p*sh + r, q*sw + s]      dx_pad[c, p*sh + r, q*sw + s] += g * w[k, c, r, s]

With the image and its gradient channels-innermost (HWC) and the weights as (K, R, S, C), the S*C
values of kernel row r are contiguous in all three, so dw[k] is a sum of scaled rows of the image
(kernels/_tile.py's row_tile: ROW_MR kernel rows of accumulators in registers, one nonzero per
step) and dx a scaled copy of w[k] added at each nonzero's pixel (scatter_tile: w[k] in registers).

backward  fixed chunks of images (bounds depend on N only), as conv_weight: per image its padded
          HWC copy (_hwc_padded); per channel k the list of its nonzeros in window order (their
          pixels' starts in that copy, their values: _nonzeros); row_tile calls (per group of
          ROW_MR kernel rows and row-tile width of S*C) add them into the chunk's partial dw (K*Rp,
          SCp: R and S*C padded to whole tiles), scatter_tile calls into the image's padded HWC dx,
          cropped into dx at the end. The partials are summed in chunk order (_sum_chunks), dx is
          per image: bit-identical for any thread count. dx takes this route only where the tiles
          fit the kernel exactly (Rp == R, SCp == S*C: a padded column would add 0 * w to a
          neighbour, NaN if the gradient is infinite); elsewhere conv.unpooled_input_gradient.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcnn.kernels._common import TABLES
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels._tile import ROW_MR, ROW_VECTORS, row_tile, row_tile_width, scatter_tile
from fastcnn.kernels.conv_weight import IMAGES_PER_CHUNK

# The route's cost model: each path's speed as a fraction of the FMA peak, per pool window counted
# as the FLOPs it would cost at full size (the dense path: every pixel the window owns; the sparse
# one: one pixel, padded to whole tiles, lists and copies included), measured on the MNIST
# network's second layer at one thread on the 2-core Zen 5 (dw + dx: 9.2 against 4.7 ms per batch
# of 128; its windows 87 % alive).
DENSE_SPEED = 0.75
SPARSE_SPEED = 0.37
NO_INPUT_GRADIENT = {4: np.empty((0, 0, 0, 0), np.float32), 8: np.empty((0, 0, 0, 0), np.float64)}  # without dx


# ---------------------------------------------------------------- serial workers (one image)

@njit(boundscheck=False, cache=CACHE)
def _hwc_padded(x, n, ph, pw, Wp, xp):
    """Image n of x (N, C, H, W) into the flat buffer xp, zero-padded and channels innermost:
    x_pad[c, h, w] at xp[(h*Wp + w)*C + c]; the rest of xp (rows past the padding, slack) zero."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for i in range(xp.shape[0]):
        xp[i] = 0
    uC = np.uint64(C)
    for c in range(C):
        for h in range(H):
            d = np.uint64(((h + ph) * Wp + pw) * C + c)       # unsigned: no wrap-around checks
            for w in range(np.uint64(W)):
                xp[d + w * uC] = x[n, c, h, w]


@njit(boundscheck=False, cache=CACHE)
def _nonzeros(g, a, n, k, psh, psw, sh, sw, WpC, C, offs, starts, vals):
    """Channel k of image n: the pooled gradient's entries that reach the convolution (argmax >= 0),
    in window order, as the start of their pixel's receptive field in the padded HWC image (offs[e]:
    place e of a pool window, from the window's corner) and their values. Returns how many."""
    P2, Q2 = g.shape[2], g.shape[3]
    m = 0
    for p in range(P2):
        for q in range(Q2):       # no branch (a cut window is a coin toss): written, then kept or not
            e = a[n, k, p, q]
            starts[m] = p * psh * sh * WpC + q * psw * sw * C + offs[max(e, 0)]
            vals[m] = g[n, k, p, q]
            m += 1 if e >= 0 else 0
    return m


@njit(boundscheck=False, cache=CACHE)
def _crop_chw(dxp, n, ph, pw, Wp, dx):
    """dx[n] (C, H, W) from the padded HWC gradient dxp (_hwc_padded's layout)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    uC = np.uint64(C)
    for c in range(C):
        for h in range(H):
            s0 = np.uint64(((h + ph) * Wp + pw) * C + c)
            for w in range(np.uint64(W)):
                dx[n, c, h, w] = dxp[s0 + w * uC]


# ---------------------------------------------------------------- parallel drivers

@njit(nogil=True, boundscheck=False, cache=CACHE)
def _backward_chunks(lo, hi, x, g, a, offs, psh, psw, sh, sw, ph, pw, Hp, Wp, Rp, SCp, width, xrows, parts,
                     dbparts, wt, wrows, dx):
    """Chunks lo .. hi: parts[ch] (K*Rp, SCp), the chunk's partial dw (row k*Rp + r, column s*C + c;
    padding rows and columns hold sums of other values, dropped by _sum_chunks), dbparts[ch] (K,)
    its partial db, and, given the weights wt (K*Rp*SCp: w[k, c, r, s] at (k*Rp + r)*SCp + s*C + c)
    and dx (N, C, H, W), the chunk's images of dx. Per image, dw's pass over every channel, then
    dx's: each keeps its own image buffer in L1."""
    N, C = x.shape[0], x.shape[1]
    K = g.shape[1]
    nchunks = parts.shape[0]
    WpC = Wp * C
    size = (Hp + Rp) * WpC + SCp                   # slack: padding rows and columns read past the image
    xp = np.empty(size, x.dtype)
    dxp = np.empty(size if wt.shape[0] > 0 else 0, x.dtype)
    starts = np.empty((K, g.shape[2] * g.shape[3]), np.int64)
    vals = np.empty((K, g.shape[2] * g.shape[3]), x.dtype)
    count = np.empty(K, np.int64)
    for ch in range(lo, hi):
        n0 = ch * N // nchunks
        n1 = (ch + 1) * N // nchunks
        acc, db = parts[ch], dbparts[ch]
        for n in range(n0, n1):
            _hwc_padded(x, n, ph, pw, Wp, xp)
            first = n == n0
            for k in range(K):
                m = _nonzeros(g, a, n, k, psh, psw, sh, sw, WpC, C, offs, starts[k], vals[k])
                count[k] = m
                s = x.dtype.type(0) if first else db[k]
                for j in range(m):
                    s += vals[k, j]
                db[k] = s
                for r0 in range(0, Rp, ROW_MR):
                    for j0 in range(0, SCp, width):
                        row_tile(vals[k], xp, starts[k, :m], xrows, r0 * WpC + j0, acc, k * Rp + r0, j0, not first)
            if dxp.shape[0] == 0:
                continue
            for i in range(dxp.shape[0]):
                dxp[i] = 0
            for k in range(K):
                for r0 in range(0, Rp, ROW_MR):
                    for j0 in range(0, SCp, width):
                        scatter_tile(vals[k], starts[k, :count[k]], r0 * WpC + j0, xrows, dxp, wt,
                                     (k * Rp + r0) * SCp + j0, wrows)
            _crop_chw(dxp, n, ph, pw, Wp, dx)


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _sum_chunks(lo, hi, parts, dbparts, R, S, dw, db):
    """Channels lo .. hi of dw (K, C, R, S) and db (K,): the chunks' partials summed in chunk order
    (whichever thread sums them), then moved from the rows' (r, s*C + c) layout."""
    nchunks = parts.shape[0]
    C = dw.shape[1]
    Rp = parts.shape[1] // dw.shape[0]
    SC = S * C
    row = np.empty(SC, dw.dtype)
    for k in range(lo, hi):
        for r in range(R):
            for t in range(SC):
                row[t] = parts[0, k * Rp + r, t]
            for ch in range(1, nchunks):
                for t in range(SC):
                    row[t] += parts[ch, k * Rp + r, t]
            for s in range(S):
                for c in range(C):
                    dw[k, c, r, s] = row[s * C + c]
        acc = dbparts[0, k]
        for ch in range(1, nchunks):
            acc += dbparts[ch, k]
        db[k] = acc


# ---------------------------------------------------------------- wrappers (route, allocate)

def padded_sizes(R, S, C, itemsize):
    """Rp, SCp: the kernel's rows and S*C padded to whole row tiles."""
    width = row_tile_width(ROW_VECTORS, itemsize)
    return -(-R // ROW_MR) * ROW_MR, -(-(S * C) // width) * width


@TABLES
def sparse_route(C, R, S, pool_size, pool_stride, itemsize):
    """Whether the sparse kernels are expected to beat the dense ones for this layer's dw: per pool
    window, the dense path multiplies the pixels it owns, the sparse one at most one pixel (its
    padded row tiles), each at its measured speed (DENSE_SPEED, SPARSE_SPEED)."""
    (kh, kw), (psh, psw) = pool_size, pool_stride
    Rp, SCp = padded_sizes(R, S, C, itemsize)
    return Rp * SCp / SPARSE_SPEED < min(kh, psh) * min(kw, psw) * R * S * C / DENSE_SPEED


def sparse_input_gradient(C, R, S, itemsize):
    """Whether dx takes the sparse route too: only where the tiles fit the kernel exactly."""
    return padded_sizes(R, S, C, itemsize) == (R, S * C)


@TABLES
def _tables(kh, kw, sh, sw, C, Wp, SCp):
    """offs[e] (place e = i*kw + j of a pool window: its pixel's start in the padded HWC image, from
    the window's corner pixel) and the row tiles' row offsets in that image and in the weights."""
    e = np.arange(kh * kw)
    rows = np.arange(ROW_MR, dtype=np.int64)
    return ((e // kw) * sh * Wp * C + (e % kw) * sw * C).astype(np.int64), rows * Wp * C, rows * SCp


def pooled_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx):
    """(dx (N,C,H,W) or None, dw (K,C,R,S), db (K,)) of a convolution of x with w followed by a ReLU
    and a max pool, from the pool's gradient dy (N,K,P2,Q2) and argmax (prepared, C-contiguous
    arrays; int32 argmax); dx only where sparse_input_gradient (else None: the caller's)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (psh, psw) = stride, padding, pool_stride
    Hp, Wp, Rp, SCp, fits, width, (offs, xrows, wrows) = _plan(x.shape, w.shape, x.itemsize, stride, padding,
                                                                tuple(pool_size))
    with_dx = need_dx and fits
    if N == 0 or dy.size == 0:
        return (np.zeros(x.shape, x.dtype) if with_dx else None), np.zeros((K, C, R, S), x.dtype), np.zeros(K, x.dtype)
    dw, db = np.empty((K, C, R, S), x.dtype), np.empty(K, x.dtype)      # every element written by _sum_chunks
    wt, dx = np.empty(0, x.dtype), NO_INPUT_GRADIENT[x.itemsize]
    if with_dx:
        wt = np.zeros((K, Rp, SCp), x.dtype)
        wt[:, :R, :S * C] = w.transpose(0, 2, 3, 1).reshape(K, R, S * C)
        wt = wt.reshape(-1)
        dx = np.empty(x.shape, x.dtype)                # every element written by _crop_chw
    nchunks = max(1, min(N, -(-N // IMAGES_PER_CHUNK)))
    parts = np.empty((nchunks, K * Rp, SCp), x.dtype)
    dbparts = np.empty((nchunks, K), x.dtype)
    parallel_for(_backward_chunks, nchunks, x, dy, argmax, offs, psh, psw, sh, sw, ph, pw, Hp, Wp, Rp, SCp,
                 width, xrows, parts, dbparts, wt, wrows, dx)
    parallel_for(_sum_chunks, K, parts, dbparts, R, S, dw, db)
    return (dx if with_dx else None), dw, db


@TABLES
def _plan(x_shape, w_shape, itemsize, stride, padding, pool_size):
    """The padded image and kernel sizes, whether dx's tiles fit, the row tile's width and the
    tables of pooled_backward for these shapes: worked out once per shape, since the Python
    between a step's kernels runs on one thread."""
    _, C, H, W = x_shape
    _, _, R, S = w_shape
    (sh, sw), (ph, pw), (kh, kw) = stride, padding, pool_size
    Rp, SCp = padded_sizes(R, S, C, itemsize)
    Wp = W + 2 * pw
    return (H + 2 * ph, Wp, Rp, SCp, sparse_input_gradient(C, R, S, itemsize), row_tile_width(ROW_VECTORS, itemsize),
            _tables(kh, kw, sh, sw, C, Wp, SCp))
