"""The weight gradient of a 2-D convolution, Numba kernels: dw and db for conv.conv2d_backward and,
from a pooled gradient and its argmax, for fused.conv2d_relu_maxpool_backward. Same results as
:mod:`fastcnn.reference.conv`.

Dimension legend: as in kernels/conv.py (N batch, C input channels, H, W input size, K output
channels, R, S kernel size, P, Q output size, sh, sw stride, ph, pw padding).

backward dw  prange over fixed chunks of images (their bounds depend on N only): each chunk writes
             its own partial dw and db (in the tile's layout, dw transposed), summed afterwards in
             chunk order, so results are bit-identical for any thread count. The forward's tile
             transposed (partials_shifted): rows (c, r, t) read in place from the chunk's phase
             planes, columns NR output channels of dy packed pixel-major, the reduction over the
             chunk's output pixels; an extra plane of ones per image gives db as one more row.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._common import TABLES, _pack_phases, balanced_block, pad_rows, phase_grid, phase_starts
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels._tile import MR, NR, tile

IMAGES_PER_CHUNK = 4  # dw partials: images packed per chunk
ROWS_PER_SUM = 64     # the partials' sum: fewer rows of dw^T than this per thread are summed on one
NO_ARGMAX = np.empty((0, 0, 0, 0), np.int32)   # _backward_weight_partials: dy is not pooled
NO_OFFSETS = np.empty(0, np.int64)


# ---------------------------------------------------------------- serial workers (one chunk of images)

@njit(boundscheck=False, cache=CACHE)
def _pack_dyt(d3, i0, nb, dyt):
    """Images i0 .. i0+nb of the gradient d3 (N, K, P*Q) -> dyt (ceil(K/NR), nb*P*Q, NR), the tile's
    B panels: dyt[k // NR, i*P*Q + v, k % NR] = d3[i0 + i, k, v], zero for k >= K."""
    K, PQ = d3.shape[1], d3.shape[2]
    for kb in range(dyt.shape[0]):
        for i in range(nb):
            for j0 in range(0, NR, 8):   # 8 source rows at a time: 8 ways of L1 even when P*Q*4 is 4 KiB
                if kb * NR + j0 + 8 <= K:    # no test per element: measured 15 % faster
                    for v in range(PQ):
                        for j in range(j0, j0 + 8):
                            dyt[kb, i * PQ + v, j] = d3[i0 + i, kb * NR + j, v]
                else:
                    for v in range(PQ):
                        for j in range(j0, j0 + 8):
                            k = kb * NR + j
                            dyt[kb, i * PQ + v, j] = d3[i0 + i, k, v] if k < K else 0


@njit(boundscheck=False, cache=CACHE)
def _scatter_pooled(dyn, an, offsets, psh, psw, Q, dyt, pix0):
    """Route one image's pooled gradient dyn (K, P2, Q2) through its argmax into the zeroed packed
    gradient dyt (_pack_dyt's layout): the dense gradient of pixel v (rows Q wide) of channel k
    is dyt[k // NR, pix0 + v, k % NR]; offsets[a] is window element a's place in a block with rows
    Q wide (conv.window_offsets). Same elements, same order as maxpool2d_backward."""
    K, P2, Q2 = dyn.shape
    for k in range(K):
        kb, j = k // NR, k % NR
        for p in range(P2):
            base = pix0 + p * psh * Q
            for q in range(Q2):
                a = an[k, p, q]
                if a >= 0:
                    dyt[kb, base + q * psw + offsets[a], j] += dyn[k, p, q]


@njit(boundscheck=False, cache=CACHE)
def partials_shifted(x, n0, nb, sh, sw, ph, pw, Hs, Ws, P, Q, starts, dyt, part):
    """part (len(starts), ceil(K/NR)*NR) = the partial dw^T (C*R*S rows) and db (row C*R*S) of
    images n0 .. n0+nb of x (N, C, H, W) against their gradient packed by _pack_dyt, written by the
    tile kernel in its own layout (transposed once, after the sum, by _sum_partials). As the
    forward's transpose: rows are reduction indices (c, r, t), columns NR output channels, and the
    reduction runs over the chunk's output pixels. Each image goes into its phase planes
    (_pack_phases) followed by one more plane holding 1 at every output pixel, the images one after
    the other (xf), so A[pixel (i, p, q), (c, r, t)] = xf[i*img + p*Ws + q + starts[(c, r, t)]] is
    read in place, and the row whose start is that plane's (the last real entry of starts, see
    dw_starts) sums dy: db, in the same order as dw. starts is padded to a multiple of MR (the
    padding rows are dropped later)."""
    C = x.shape[1]
    plane = Hs * Ws
    img = (C * sh * sw + 1) * plane
    npix = nb * P * Q
    xf = np.zeros(nb * img, x.dtype)
    for i in range(nb):
        _pack_phases(x[n0 + i], sh, sw, ph, pw, Hs, Ws, xf, i * img)
        for p in range(P):
            base = i * img + C * sh * sw * plane + p * Ws
            for q in range(Q):
                xf[base + q] = 1
    astarts = np.empty(npix, np.int64)
    for i in range(nb):
        for p in range(P):
            for q in range(Q):
                astarts[(i * P + p) * Q + q] = i * img + p * Ws + q
    lstarts = np.arange(npix) * NR
    nkb = dyt.shape[0]
    dytf = dyt.reshape(nkb * npix * NR)
    kc = balanced_block(npix)
    for kb in range(nkb):
        for k0 in range(0, npix, kc):
            k1 = min(npix, k0 + kc)
            for g in range(0, starts.shape[0], MR):
                tile(xf, astarts[k0:k1], starts[g:g + MR], dytf, lstarts[k0:k1], kb * npix * NR, part, g, kb * NR,
                     k0 > 0)


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _sum_partials(lo, hi, parts, dw, db):
    """Rows lo .. hi of dw^T (K, L) and db (K,) (row L) from the chunks' partials parts (nchunks,
    >= L+1, >= K) in the tile's layout (partials_shifted: row l < L is dw[:, l], row L is db),
    summed in chunk order (chunk 0, 1, ...) whichever thread sums the row, so every element is
    summed in the same order whatever the thread count. In parallel: run on one thread, summing
    32 chunks of the MNIST network's second layer took a quarter of its backward's serial time."""
    K, L = dw.shape
    acc = np.empty(K, dw.dtype)
    for l in range(lo, hi):                  # element loops, not slice assignments: these compile faster
        for k in range(K):
            acc[k] = parts[0, l, k]
        for ch in range(1, parts.shape[0]):
            for k in range(K):
                acc[k] += parts[ch, l, k]
        for k in range(K):
            if l < L:
                dw[k, l] = acc[k]
            else:
                db[k] = acc[k]


# ---------------------------------------------------------------- parallel driver

@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_weight_partials(lo, hi, x, dy, argmax, offsets, psh, psw, sh, sw, ph, pw, Hs, Ws, P, Q, starts, parts):
    """Per chunk of images (bounds depend on N only): the chunk's convolution gradient in the tile's
    packed layout, then partials_shifted writes the chunk's own partial dw^T and db, parts[ch].
    With an empty argmax, dy is the convolution's gradient (N, K, P, Q), packed by _pack_dyt;
    otherwise dy is the pooled gradient of a fused convolution + ReLU + max pool, routed through
    argmax straight into the packed layout (_scatter_pooled). One driver for both: a training run
    compiles it once."""
    N, K = x.shape[0], dy.shape[1]
    PQ = P * Q
    nchunks = parts.shape[0]
    for ch in range(lo, hi):
        n0 = ch * N // nchunks
        nb = (ch + 1) * N // nchunks - n0
        if argmax.shape[0] > 0:
            dyt = np.zeros(((K + NR - 1) // NR, nb * PQ, NR), x.dtype)
            for i in range(nb):
                _scatter_pooled(dy[n0 + i], argmax[n0 + i], offsets, psh, psw, Q, dyt, i * PQ)
        else:
            dyt = np.empty(((K + NR - 1) // NR, nb * PQ, NR), x.dtype)
            _pack_dyt(dy.reshape(N, K, PQ), n0, nb, dyt)
        partials_shifted(x, n0, nb, sh, sw, ph, pw, Hs, Ws, P, Q, starts, dyt, parts[ch])


# ---------------------------------------------------------------- wrappers (validate, allocate)

@TABLES
def dw_starts(C, R, S, stride, Hs, Ws):
    """partials_shifted's row starts: phase_starts, then the ones plane's (the db row), padded to a
    multiple of MR."""
    return pad_rows(np.append(phase_starts(C, R, S, stride, Hs, Ws), C * stride[0] * stride[1] * Hs * Ws))


def weight_gradient(x, dy, w, stride, padding, argmax=NO_ARGMAX, offsets=NO_OFFSETS, pool_stride=(1, 1)):
    """dw (K,C,R,S), db (K,) of a convolution of x (N,C,H,W) with w (K,C,R,S), prepared arrays:
    the chunks' partials (_backward_weight_partials) summed in chunk order. dy is the convolution's
    gradient (N,K,P,Q), or, given argmax and the pool's window offsets (conv.window_offsets) and
    stride, the pooled gradient of a fused convolution + ReLU + max pool."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    dw = np.zeros((K, C * R * S), x.dtype)
    db = np.zeros(K, x.dtype)
    if dy.size > 0:                        # else no images, no output channels or no output pixels
        P, Q = conv_output_size(H, W, R, S, stride, padding)
        nchunks = max(1, min(N, -(-N // IMAGES_PER_CHUNK)))
        Hs, Ws = phase_grid(H, W, stride, padding)
        starts = dw_starts(C, R, S, stride, Hs, Ws)
        parts = np.empty((nchunks, len(starts), -(-K // NR) * NR), x.dtype)
        parallel_for(_backward_weight_partials, nchunks, x, dy, argmax, offsets, *pool_stride, *stride, *padding,
                     Hs, Ws, P, Q, starts, parts)
        parallel_for(_sum_partials, C * R * S + 1, parts, dw, db, grain=ROWS_PER_SUM)
    return dw.reshape(K, C, R, S), db
