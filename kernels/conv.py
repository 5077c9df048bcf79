"""2-D convolution, Numba kernels. Same contract and results as :mod:`fastcnn.reference.conv`.

Dimension legend: N batch, C input channels, H, W input size, K output channels, R, S kernel size,
P, Q output size, sh, sw stride, ph, pw padding, Hp = H + 2ph, Wp = W + 2pw, L reduction length.

Layout of the work (each driver loops over a range of independent tasks, which parallel_for splits
over the threads; no two tasks ever write the same element, so there are no races and no atomics;
"prange over X" below: the tasks are X):

forward      C*R*S >= SMALL_L, any stride: no im2col. Each task splits its zero-padded image into
             sh*sw phase planes (space-to-depth: phase (a, b) holds x_pad[c, i*sh + a, j*sw + b],
             Hs x Ws each, _pack_phases), so x_pad[c, p*sh + r, q*sw + t] is phase (c, r % sh,
             t % sw) at (p + r // sh, q + t // sw): a stride-1 window again (stride 1: one phase,
             the padded image). prange over (image, group of UNIT-pixel blocks); the register tile
             of kernels/_tile.py takes MR output pixels as its rows, read in place from the phase
             planes (pixel (p, q) at p*Ws + q, reduction index (c, r, t) at phase_starts), and NR
             output channels of the packed weights as its columns (_forward_shifted,
             tiles_pixels). Only real output pixels are computed. When K is not a multiple of NR,
             forward_route may pick the narrow tile, MR_NARROW pixels x NR_NARROW channels
             (_forward_narrow; only where the last NR-wide panel would be half or more padding), or
             the tile turned around: MR output channels as rows, NR consecutive pixels of the phase
             grid as columns, Ws - Q junk columns per row (_forward_grid).
             Followed by a ReLU and a 2x2 / stride 2 max pool (a fused layer), _forward_shifted
             computes only the pixels under the windows, four per window, and pools each block
             of results instead of storing it (relu_maxpool_2x2_forward, _pool_out).
             For a tiny reduction (C*R*S < SMALL_L, the first layer) the im2col is kept
             channel-major (C*R*S, P*Q) and y[n] is built with rows_axpy, vectorised over pixels.
backward dx  stride 1 and padding <= kernel - 1: dx is the forward convolution of dy with the
             flipped, transposed weights (C, K, R, S) and padding (R-1-ph, S-1-pw); after a ReLU
             and a max pool (a fused layer), that forward builds each image's planes of dy from
             the pooled gradient and its argmax (unpooled_input_gradient). Otherwise:
             per image, dcol (P*Q, R*S*C) = dy[n]^T . W2 with the tile, then col2im adds each row
             back into the padded HWC image; prange over images.
backward dw  kernels/conv_weight.py (weight_gradient), shared with the fused first layer.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._common import (
    TABLES,
    _pack_phases,
    balanced_block,
    im2col_chw_t,
    pack_panels,
    pad_chw,
    pad_rows,
    phase_grid,
    phase_starts,
    pixel_offsets,
    prepare,
)
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._gemm import rows_axpy
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels._tile import MR, MR_NARROW, NR, NR_NARROW, tile, tile_narrow
from fastcnn.kernels.conv_weight import NO_OFFSETS, weight_gradient
from fastcnn.kernels.pool import max4, max4_exact, maxpool2d_backward

NO_POOL = np.empty((0, 0, 0, 0), np.int32)   # _forward_shifted: the plain convolution
SMALL_L = 16          # forward reductions shorter than this use rows_axpy (measured faster for 9, slower for 27)
TASKS_PER_CALL = 8    # a forward call on fewer images than this also splits each image's pixels
UNIT = MR * 4 // math.gcd(MR, 4)  # forward: pixels are split in units of whole tiles and whole 2x2 windows
BLOCK_PIXELS = (256 // UNIT) * UNIT   # forward: output pixels per result block (Ct), copied out at once
BLOCK_PIXELS_NARROW = (256 // MR_NARROW) * MR_NARROW
# The route cost model: each tile's speed as a fraction of the FMA peak in the forward, data in L1, per
# tile shape (MR, NR) (kernels/_tile.py). 3 x 32 and 5 x 16 are measured on an AVX2 CPU; 6 x 32 (AVX-512) was
# only compared end to end, so it is taken at 3 x 32's figure until measured on its own.
TILE_SPEED = {(3, 32): 0.94, (6, 32): 0.94, (5, 16): 0.83}
CT_PAD = 16           # Ct row padding: a stride of a multiple of 256 bytes maps a column to 1/4 of L1's sets


# ---------------------------------------------------------------- serial workers (one image)

@njit(boundscheck=False, cache=CACHE)
def tiles_pixels(xf, starts, offs, Bf, L, Ct):
    """Ct[i, k] = sum_l xf[starts[l] + offs[i]] * B[k // NR, l, k % NR] for the pixels i < len(offs)
    (a multiple of MR) and every k of the packed weights Bf (ceil(K/NR) panels of L x NR, flattened):
    the tile kernel with MR output pixels as its rows, read in place from the image buffer xf, and
    NR output channels as its columns. Loop order: NR-channel panel, reduction block (that block of
    the weight panel stays in L1), MR-pixel row block."""
    nkb = Bf.shape[0] // (L * NR)
    lstarts = np.arange(L) * NR
    kc = balanced_block(L)
    for kb in range(nkb):
        for k0 in range(0, L, kc):
            k1 = min(L, k0 + kc)
            for g in range(0, offs.shape[0], MR):
                tile(xf, starts[k0:k1], offs[g:g + MR], Bf, lstarts[k0:k1], kb * L * NR, Ct, g, kb * NR, k0 > 0)


@njit(boundscheck=False, cache=CACHE)
def tiles_pixels_narrow(xf, starts, offs, Bf, L, Ct):
    """tiles_pixels with the narrow tile: MR_NARROW pixels x NR_NARROW output channels per call,
    Bf ceil(K/NR_NARROW) panels of L x NR_NARROW, len(offs) a multiple of MR_NARROW."""
    nkb = Bf.shape[0] // (L * NR_NARROW)
    lstarts = np.arange(L) * NR_NARROW
    kc = balanced_block(L)
    for kb in range(nkb):
        for k0 in range(0, L, kc):
            k1 = min(L, k0 + kc)
            for g in range(0, offs.shape[0], MR_NARROW):
                tile_narrow(xf, starts[k0:k1], offs[g:g + MR_NARROW], Bf, lstarts[k0:k1], kb * L * NR_NARROW, Ct, g,
                            kb * NR_NARROW, k0 > 0)


@njit(boundscheck=False, cache=CACHE)
def _image_planes(x, n, sh, sw, ph, pw, Hs, Ws):
    """Image n of x (N, C, H, W) as the flat phase planes the forward's tiles read (_pack_phases);
    at stride 1 without padding the image itself is its only plane (a view)."""
    C = x.shape[1]
    if sh == 1 and sw == 1 and ph == 0 and pw == 0:
        return x[n].reshape(C * Hs * Ws)
    xf = np.zeros(C * sh * sw * Hs * Ws, x.dtype)
    _pack_phases(x[n], sh, sw, ph, pw, Hs, Ws, xf, np.int64(0))   # not a literal: one specialisation
    return xf


@njit(boundscheck=False, cache=CACHE)
def _unpooled_planes(g, ga, n, goffs, psh, psw, ph, pw, Hs, Ws):
    """Image n of a max pool's gradient g (N, C, P2, Q2), routed through its argmax ga into the
    zero-padded planes (C, Hs, Ws) of the dense gradient, flattened: stride 1's only phase plane, as
    _image_planes builds from the dense gradient. goffs[a] is window element a's place in a plane
    (rows Ws wide); same elements, same order as maxpool2d_backward."""
    C, P2, Q2 = g.shape[1], g.shape[2], g.shape[3]
    plane = Hs * Ws
    xf = np.zeros(C * plane, g.dtype)
    for c in range(C):
        gc, ac = g[n, c], ga[n, c]
        for p in range(P2):
            base = c * plane + (ph + p * psh) * Ws + pw
            for q in range(Q2):
                a = ac[p, q]
                if a >= 0:
                    xf[base + q * psw + goffs[a]] += gc[p, q]
    return xf


@njit(boundscheck=False, cache=CACHE)
def _copy_out(Ct, b, yv, n, v0, v1):
    """yv[n, k, v] = Ct[v - v0, k] + b[k] for the real pixels v0 <= v < v1 of a result block:
    transposed, four channels at a time: each row of Ct read four elements at once and each
    channel's plane written in order (one channel at a time, a column read, cost 0.36 ms of conv2's
    input gradient, 4.37 ms at one thread; several at a time about 0.24 ms)."""
    K = b.shape[0]
    v1 = min(yv.shape[2], v1)
    for k in range(0, K - 3, 4):
        b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
        for v in range(v0, v1):
            r = v - v0
            yv[n, k, v] = Ct[r, k] + b0
            yv[n, k + 1, v] = Ct[r, k + 1] + b1
            yv[n, k + 2, v] = Ct[r, k + 2] + b2
            yv[n, k + 3, v] = Ct[r, k + 3] + b3
    for k in range(K - K % 4, K):
        for v in range(v0, v1):
            yv[n, k, v] = Ct[v - v0, k] + b[k]


@njit(boundscheck=False, cache=CACHE)
def _rows_out(T, out, n, w0, w1):
    """out[n, k, w] = T[w - w0, k] for w0 <= w < w1: _copy_out's transposition without a bias."""
    K = T.shape[1]
    for k in range(0, K - 3, 4):
        for w in range(w0, w1):
            r = w - w0
            out[n, k, w] = T[r, k]
            out[n, k + 1, w] = T[r, k + 1]
            out[n, k + 2, w] = T[r, k + 2]
            out[n, k + 3, w] = T[r, k + 3]
    for k in range(K - K % 4, K):
        for w in range(w0, w1):
            out[n, k, w] = T[w - w0, k]


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _pool_out(Ct, b, yv, av, n, w0, w1, Pt, At):
    """ReLU and 2x2 max pool of a result block whose rows are pixels of whole pool windows, four
    per window in window order (window_pixels): yv[n, k, w], av[n, k, w] for the windows w0 <= w
    < w1 of the image (the real ones). The values compared are those _copy_out would store (Ct +
    b), with pool.max4's selects; a block holding a NaN or an infinity is redone with
    max pooling's NaN rule. Channels innermost, into the block's own window-major results Pt, At
    (Ct's rows read and Pt's written contiguously), then copied out as _copy_out does: storing
    straight into yv's channel planes, a scatter per vector, made pooling cost 0.73 ms of conv2's
    4.70 ms forward at one thread, against 0.34 ms (one channel at a time)."""
    K, M = b.shape[0], yv.shape[2]
    w1 = min(M, w1)
    zero = Ct.dtype.type(0)
    probe = zero
    for w in range(w0, w1):
        r, o = 4 * (w - w0), w - w0
        for k in range(K):
            bk = b[k]
            a0, a1, a2, a3 = Ct[r, k] + bk, Ct[r + 1, k] + bk, Ct[r + 2, k] + bk, Ct[r + 3, k] + bk
            probe += (a0 + a1 + a2 + a3) * zero
            best, at = max4(a0, a1, a2, a3)
            keep = best > zero
            Pt[o, k] = best if keep else zero
            At[o, k] = at if keep else -1
    if probe != probe:
        for w in range(w0, w1):
            r = 4 * (w - w0)
            for k in range(K):
                bk = b[k]
                best, at = max4_exact(Ct[r, k] + bk, Ct[r + 1, k] + bk, Ct[r + 2, k] + bk, Ct[r + 3, k] + bk)
                if best <= zero:
                    best, at = zero, -1
                Pt[w - w0, k] = best
                At[w - w0, k] = at
    _rows_out(Pt, yv, n, w0, w1)
    _rows_out(At, av, n, w0, w1)


@njit(boundscheck=False, cache=CACHE)
def tiles_grid(Af, L, xf, starts, j0, j1, Ct):
    """Ct[k, j - j0] = sum_l A[k // MR, l, k % MR] * xf[starts[l] + j] for every k of the packed
    weights Af (ceil(K/MR) panels of L x MR, flattened) and j0 <= j < j1 rounded up to NR: the tile
    kernel with MR output channels as its rows and NR consecutive pixels of the grid as its
    columns, read in place from xf. Loop order: NR-pixel panel, reduction block, MR-row block."""
    mb = Af.shape[0] // (L * MR)
    lstarts = np.arange(L) * MR
    aoffs = np.empty(mb * MR, np.int64)
    for i in range(mb * MR):
        aoffs[i] = (i // MR) * L * MR + i % MR
    kc = balanced_block(L)
    for jp in range(j0, j1, NR):
        for k0 in range(0, L, kc):
            k1 = min(L, k0 + kc)
            for ib in range(mb):
                tile(Af, lstarts[k0:k1], aoffs[ib * MR:ib * MR + MR], xf, starts[k0:k1], jp, Ct, ib * MR, jp - j0,
                     k0 > 0)


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_shifted(lo, hi, x, Bp, b, sh, sw, ph, pw, Hs, Ws, y, starts, offs, ngroups, argmax, xa, xoffs, psh, psw):
    """Any stride: x (N,C,H,W), Bp (ceil(K/NR), C*R*S, NR) the packed weights -> y (N,K,P,Q).
    With the padded image split into its phase planes (_pack_phases, flattened per channel and
    phase), output pixel (p, q) needs x_pad[c, p*sh + r, q*sw + t] = xf[starts[(c, r, t)] +
    offs[(p, q)]] with starts from phase_starts and offs[(p, q)] = p*Ws + q: the tile reads its MR
    pixel rows straight from the image (no im2col), and only real output pixels are computed (offs
    is padded to a multiple of UNIT by repeating the last pixel, whose extra results are dropped).
    prange over (image, group of UNIT-pixel blocks); each task writes only its own pixels of its own
    image. With a non-empty argmax, the convolution is followed by a ReLU and a 2x2 / stride 2 max
    pool: y and argmax are the pooled (N, K, P2, Q2), offs lists only the pixels under the windows,
    four per window (window_pixels), and each result block is pooled (_pool_out) instead of copied
    out; the convolution output is never stored. With a non-empty xa (stride 1 only), x is a max
    pool's gradient and xa its argmax: each image's planes are the dense gradient, unpooled
    (_unpooled_planes; xoffs, psh, psw: the pool's window offsets and stride), which is then never
    stored either."""
    N, K, M = x.shape[0], y.shape[1], y.shape[2] * y.shape[3]     # M: pixels, or pooled windows
    L = starts.shape[0]
    nkb = Bp.shape[0]
    Bf = Bp.reshape(nkb * L * NR)
    nunits = offs.shape[0] // UNIT
    yv = y.reshape(N, K, M)
    av = argmax.reshape(argmax.shape[0], argmax.shape[1], argmax.shape[2] * argmax.shape[3])
    for t in range(lo, hi):
        n = t // ngroups
        g = t - n * ngroups
        u0 = g * nunits // ngroups
        u1 = (g + 1) * nunits // ngroups
        if u1 <= u0:
            continue
        if xa.shape[0] > 0:
            xf = _unpooled_planes(x, xa, n, xoffs, psh, psw, ph, pw, Hs, Ws)
        else:
            xf = _image_planes(x, n, sh, sw, ph, pw, Hs, Ws)
        Ct = np.empty((min((u1 - u0) * UNIT, BLOCK_PIXELS), nkb * NR + CT_PAD), x.dtype)
        Pt = np.empty((Ct.shape[0] // 4 if av.shape[0] > 0 else 0, K), x.dtype)
        At = np.empty(Pt.shape, np.int32)
        for v0 in range(u0 * UNIT, u1 * UNIT, BLOCK_PIXELS):
            v1 = min(u1 * UNIT, v0 + BLOCK_PIXELS)
            tiles_pixels(xf, starts, offs[v0:v1], Bf, L, Ct)
            if av.shape[0] > 0:
                _pool_out(Ct, b, yv, av, n, v0 // 4, v1 // 4, Pt, At)
            else:
                _copy_out(Ct, b, yv, n, v0, v1)


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_narrow(lo, hi, x, Bp, b, sh, sw, ph, pw, Hs, Ws, y, starts, offs, ngroups):
    """_forward_shifted with the narrow tile, where the last NR-wide panel would be half or more
    padding (K <= 16, 33..48, 65..80, ...; forward_route decides): MR_NARROW output pixels x
    NR_NARROW output channels per tile, Bp (ceil(K/NR_NARROW), C*R*S, NR_NARROW), offs padded to a
    multiple of MR_NARROW. A separate driver, so that networks without such layers never compile
    the narrow tile. forward_route picks it only for an odd number of NR_NARROW-wide panels (an
    even number fills NR-wide panels exactly, where the faster tile wins), so a Ct row is never a
    multiple of 256 bytes and needs no CT_PAD."""
    N, K, PQ = x.shape[0], y.shape[1], y.shape[2] * y.shape[3]
    L = starts.shape[0]
    nkb = Bp.shape[0]
    Bf = Bp.reshape(nkb * L * NR_NARROW)
    nblk = offs.shape[0] // MR_NARROW
    yv = y.reshape(N, K, PQ)
    for t in range(lo, hi):
        n = t // ngroups
        g = t - n * ngroups
        g0 = g * nblk // ngroups
        g1 = (g + 1) * nblk // ngroups
        if g1 <= g0:
            continue
        xf = _image_planes(x, n, sh, sw, ph, pw, Hs, Ws)
        Ct = np.empty((min((g1 - g0) * MR_NARROW, BLOCK_PIXELS_NARROW), nkb * NR_NARROW), x.dtype)
        for v0 in range(g0 * MR_NARROW, g1 * MR_NARROW, BLOCK_PIXELS_NARROW):
            v1 = min(g1 * MR_NARROW, v0 + BLOCK_PIXELS_NARROW)
            tiles_pixels_narrow(xf, starts, offs[v0:v1], Bf, L, Ct)
            _copy_out(Ct, b, yv, n, v0, v1)


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_grid(lo, hi, x, Ap, b, sh, sw, ph, pw, Hs, Ws, y, starts, slack, ngroups):
    """As _forward_shifted with the tile turned around, for few output channels (K well below NR,
    where most of an NR-channel column panel would be padding): rows are MR output channels of the
    packed weights Ap (ceil(K/MR), C*R*S, MR), columns NR consecutive pixels of the phase-plane
    grid (output pixel j = p*Ws + q; the Ws - Q extra columns per row are computed and dropped, and
    the last panels read up to ``slack`` elements past the planes). prange over (image, group of
    NR-pixel panels)."""
    C = x.shape[1]
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    L = starts.shape[0]
    mb = Ap.shape[0]
    Af = Ap.reshape(mb * L * MR)
    J = P * Ws
    npan = (J + NR - 1) // NR
    for t in range(lo, hi):
        n = t // ngroups
        g = t - n * ngroups
        j0 = (g * npan // ngroups) * NR
        j1 = min(J, ((g + 1) * npan // ngroups) * NR)
        if j1 <= j0:
            continue
        xf = np.zeros(C * sh * sw * Hs * Ws + slack, x.dtype)
        _pack_phases(x[n], sh, sw, ph, pw, Hs, Ws, xf, np.int64(0))
        Ct = np.empty((mb * MR, j1 - j0 + NR), x.dtype)
        tiles_grid(Af, L, xf, starts, j0, j1, Ct)
        for p in range(j0 // Ws, (j1 - 1) // Ws + 1):
            q0 = max(0, j0 - p * Ws)
            q1 = min(Q, j1 - p * Ws)
            c0 = p * Ws - j0
            for k in range(K):
                bk = b[k]
                for q in range(q0, q1):
                    y[n, k, p, q] = Ct[k, c0 + q] + bk


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_small(lo, hi, x, w2, b, R, S, sh, sw, ph, pw, y):
    """Tiny C*R*S, any stride: per image a channel-major im2col and rows_axpy; w2 (K, C*R*S) in
    (c, r, s) order."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    for n in range(lo, hi):
        xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
        pad_chw(x[n], ph, pw, xp)
        colT = np.empty((C * R * S, P * Q), x.dtype)
        im2col_chw_t(xp, R, S, sh, sw, P, Q, colT)
        rows_axpy(w2, colT, b, y[n].reshape(K, P * Q))


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_input_col2im(lo, hi, dy, Bp, R, S, sh, sw, ph, pw, dx, starts, offs):
    """Any stride. dy (N,K,P,Q), Bp (ceil(R*S*C/NR), K, NR) the weights packed as columns (r, s, c)
    -> dx (N,C,H,W). Per image, dcol (P*Q, R*S*C) = dy[n]^T . W2 with the tile (tiles_pixels, dy
    read in place: starts[k] = k*P*Q, offs the pixels), then col2im adds each row back into the
    padded HWC image."""
    N, C, H, W = dx.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    run = S * C
    nkb = Bp.shape[0]
    Bf = Bp.reshape(nkb * K * NR)
    for n in range(lo, hi):
        dcol = np.empty((offs.shape[0], nkb * NR), dx.dtype)
        tiles_pixels(dy[n].reshape(K * P * Q), starts, offs, Bf, K, dcol)
        dxt = np.zeros((Hp, Wp, C), dx.dtype)
        flat = dxt.reshape(Hp * Wp * C)
        for p in range(P):
            for q in range(Q):
                row = dcol[p * Q + q]
                for r in range(R):
                    dst = ((p * sh + r) * Wp + q * sw) * C
                    for t in range(run):
                        flat[dst + t] += row[r * run + t]
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    dx[n, c, h, w] = dxt[h + ph, w + pw, c]


# ---------------------------------------------------------------- wrappers (validate, allocate)

def forward_route(K, Q, Ws):
    """Which tile forward runs a layer with K output channels, Q output columns and phase planes Ws
    wide: the one with the least time per useful multiply-add, its multiply-adds (padding included)
    over its tile's speed. "shifted": NR-wide channel panels; "narrow": NR_NARROW-wide panels of the
    slower narrow tile; "grid": MR-row channel panels over Ws/Q of the grid's columns."""
    tile, narrow = TILE_SPEED[(MR, NR)], TILE_SPEED[(MR_NARROW, NR_NARROW)]
    cost = {"shifted": -(-K // NR) * NR / tile,
            "narrow": -(-K // NR_NARROW) * NR_NARROW / narrow,
            "grid": -(-K // MR) * MR * Ws / Q / tile}
    return min(cost, key=cost.get)


def groups_per_image(N, pieces):
    """How many tasks each image's ``pieces`` are split into: one below TASKS_PER_CALL images, so that
    a call on few images still has work for every thread."""
    return 1 if N >= TASKS_PER_CALL else min(pieces, -(-TASKS_PER_CALL // N))


def _run_shifted(x, w2, b, stride, padding, Hs, Ws, y, starts, offs, argmax, x_argmax=NO_POOL, x_offsets=NO_OFFSETS,
                 pool_stride=(1, 1)):
    """_forward_shifted over x's images, w2 (K, C*R*S) packed into NR-wide panels; NO_POOL or an argmax
    array selects its output's mode, NO_POOL or x_argmax its input's."""
    ngroups = groups_per_image(x.shape[0], len(offs) // UNIT)
    parallel_for(_forward_shifted, x.shape[0] * ngroups, x, pack_panels(w2, NR), b, *stride, *padding, Hs, Ws, y,
                 starts, offs, ngroups, argmax, x_argmax, x_offsets, *pool_stride)


def _forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    y = np.empty((N, K, P, Q), x.dtype)
    if N == 0 or P <= 0 or Q <= 0:
        return y
    if C * R * S < SMALL_L:
        parallel_for(_forward_small, N, x, w.reshape(K, C * R * S), b, R, S, *stride, *padding, y)
    else:
        Hs, Ws = phase_grid(H, W, stride, padding)
        starts = phase_starts(C, R, S, stride, Hs, Ws)
        w2 = w.reshape(K, C * R * S)
        route = forward_route(K, Q, Ws)
        if route == "grid":
            ngroups = groups_per_image(N, -(-(P * Ws) // NR))
            parallel_for(_forward_grid, N * ngroups, x, pack_panels(w2, MR), b, *stride, *padding, Hs, Ws, y,
                         starts, (S - 1) // stride[1] + NR, ngroups)
        elif route == "shifted":
            _run_shifted(x, w2, b, stride, padding, Hs, Ws, y, starts, pixel_offsets(P, Q, Ws, UNIT), NO_POOL)
        else:
            offs = pixel_offsets(P, Q, Ws, MR_NARROW)
            ngroups = groups_per_image(N, len(offs) // MR_NARROW)
            parallel_for(_forward_narrow, N * ngroups, x, pack_panels(w2, NR_NARROW), b, *stride, *padding, Hs, Ws,
                         y, starts, offs, ngroups)
    return y


@TABLES
def window_offsets(pool_size, row):
    """Where element a = r*kw + s of a pool window lies in a dense block with rows ``row`` wide,
    from the window's corner: a table, since an integer division per scattered element cost more
    than the rest of the scatter."""
    kh, kw = pool_size
    a = np.arange(kh * kw)
    return ((a // kw) * row + a % kw).astype(np.int64)


@TABLES
def window_pixels(P2, Q2, Ws):
    """offs[4*(p2*Q2 + q2) + a] = (2*p2 + a // 2)*Ws + 2*q2 + a % 2: the output pixels under the 2x2 /
    stride 2 pool windows, four per window in window order (as pixel_offsets), padded to a multiple
    of UNIT."""
    a = np.arange(4)
    p = 2 * np.arange(P2)[:, None, None] + a // 2
    q = 2 * np.arange(Q2)[None, :, None] + a % 2
    return pad_rows((p * Ws + q).reshape(-1), UNIT)


def relu_maxpool_2x2_forward(x, w, b, stride, padding):
    """Convolution, ReLU and 2x2 / stride 2 max pool in one pass, prepared arrays -> (y, argmax)
    (N, K, P2, Q2), as maxpool2d_forward(conv2d_forward(...), relu=True) computes them; None where
    the layer does not take the register tile's NR-channel route (forward_route "shifted") with a
    reduction of at least SMALL_L, or its output is smaller than one window."""
    plan = _pooled_plan(x.shape, w.shape, stride, padding)
    if plan is None:
        return None
    shape, Hs, Ws, starts, offs = plan
    y = np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int32)
    if shape[0] > 0:
        _run_shifted(x, w.reshape(shape[1], -1), b, stride, padding, Hs, Ws, y, starts, offs, argmax)
    return y, argmax


@TABLES
def _pooled_plan(x_shape, w_shape, stride, padding):
    """(y's shape, Hs, Ws, phase starts, window pixels) of relu_maxpool_2x2_forward for these
    shapes, or None where it does not take the fused route: worked out once per shape, since the
    Python between a step's kernels runs on one thread."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    Hs, Ws = phase_grid(H, W, stride, padding)
    if C * R * S < SMALL_L or P < 2 or Q < 2 or forward_route(K, Q, Ws) != "shifted":
        return None
    return (N, K, P // 2, Q // 2), Hs, Ws, phase_starts(C, R, S, stride, Hs, Ws), window_pixels(P // 2, Q // 2, Ws)


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> y (N,K,P,Q)."""
    x, w, b = prepare(x, w, b)
    return _forward(x, w, b, tuple(stride), tuple(padding))


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """dy (N,K,P,Q), x (N,C,H,W), w (K,C,R,S) -> (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,))."""
    dy, x, w = prepare(dy, x, w)
    stride, padding = tuple(stride), tuple(padding)
    dw, db = weight_gradient(x, dy, w, stride, padding)
    return (_input_gradient(dy, w, x.shape, stride, padding) if need_dx else None), dw, db


def _dx_as_forward(R, S, stride, padding):
    """Whether dx is the stride-1 forward convolution of dy with the flipped kernel, and with which
    padding (None if not)."""
    (sh, sw), (ph, pw) = stride, padding
    return (R - 1 - ph, S - 1 - pw) if (sh, sw) == (1, 1) and ph <= R - 1 and pw <= S - 1 else None


def _flipped(w):
    """w (K, C, R, S) -> (C, K*R*S): the flipped, transposed kernel of dx's forward convolution."""
    K, C, R, S = w.shape
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(C, K * R * S)


def _input_gradient(dy, w, x_shape, stride, padding):
    """dx (N,C,H,W) of a convolution from its gradient dy (N,K,P,Q), prepared arrays."""
    N, C, H, W = x_shape
    K, _, R, S = w.shape
    if dy.size == 0:                       # no images, no output channels or no output pixels
        return np.zeros((N, C, H, W), w.dtype)
    pad = _dx_as_forward(R, S, stride, padding)
    if pad is not None:
        # dx = correlation of dy (padded by R-1-ph, S-1-pw) with the flipped, transposed kernel
        return _forward(dy, _flipped(w).reshape(C, K, R, S), np.zeros(C, w.dtype), (1, 1), pad)
    (sh, sw), (ph, pw) = stride, padding
    dx = np.empty((N, C, H, W), w.dtype)
    w2t = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(R * S * C, K)  # (r, s, c) x K
    P, Q = dy.shape[2], dy.shape[3]
    parallel_for(_backward_input_col2im, N, dy, pack_panels(w2t, NR), R, S, sh, sw, ph, pw, dx,
                 np.arange(K, dtype=np.int64) * (P * Q), pixel_offsets(P, Q, Q))
    return dx


def unpooled_input_gradient(dy, argmax, w, x_shape, conv_shape, stride, padding, pool_size, pool_stride):
    """dx (N,C,H,W) of a convolution followed by a ReLU and a max pool, from the pool's gradient dy
    (N,K,P2,Q2) and argmax (prepared arrays; conv_shape (N,K,P,Q) the convolution's output). Where
    dx is a forward convolution on the register tile's NR-channel route, each image's dense
    gradient is built inside it (_unpooled_planes) and never stored; otherwise maxpool2d_backward
    first. The same results either way."""
    N, C, H, W = x_shape
    K, _, R, S = w.shape
    P, Q = conv_shape[2], conv_shape[3]
    pad = _dx_as_forward(R, S, stride, padding)
    if pad is not None and N > 0 and dy.size > 0 and K * R * S >= SMALL_L:
        Hs, Ws = phase_grid(P, Q, (1, 1), pad)
        if forward_route(C, W, Ws) == "shifted":
            dx = np.empty((N, C, H, W), w.dtype)
            _run_shifted(dy, _flipped(w), np.zeros(C, w.dtype), (1, 1), pad, Hs, Ws, dx,
                         phase_starts(K, R, S, (1, 1), Hs, Ws), pixel_offsets(H, W, Ws, UNIT), NO_POOL, argmax,
                         window_offsets(tuple(pool_size), Ws), tuple(pool_stride))
            return dx
    dense = maxpool2d_backward(dy, argmax, conv_shape, pool_size, pool_stride)
    return _input_gradient(dense, w, x_shape, stride, padding)
