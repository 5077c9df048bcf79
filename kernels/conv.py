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
             the padded image). prange over (image, group of MR-pixel blocks); the register tile
             of kernels/_tile.py takes MR output pixels as its rows, read in place from the phase
             planes (pixel (p, q) at p*Ws + q, reduction index (c, r, t) at phase_starts), and NR
             output channels of the packed weights as its columns (_forward_shifted,
             tiles_pixels). Only real output pixels are computed. When K is not a multiple of NR,
             forward_route may pick the narrow tile, MR_NARROW pixels x NR_NARROW channels
             (_forward_narrow; only where the last NR-wide panel would be half or more padding), or
             the tile turned around: MR output channels as rows, NR consecutive pixels of the phase
             grid as columns, Ws - Q junk columns per row (_forward_grid).
             For a tiny reduction (C*R*S < SMALL_L, the first layer) the im2col is kept
             channel-major (C*R*S, P*Q) and y[n] is built with rows_axpy, vectorised over pixels.
backward dx  stride 1 and padding <= kernel - 1: dx is the forward convolution of dy with the
             flipped, transposed weights (C, K, R, S) and padding (R-1-ph, S-1-pw). Otherwise:
             per image, dcol (P*Q, R*S*C) = dy[n]^T . W2 with the tile, then col2im adds each row
             back into the padded HWC image; prange over images.
backward dw  prange over fixed chunks of images (their bounds depend on N only): each chunk writes
             its own partial dw and db (in the tile's layout, dw transposed), summed afterwards in
             chunk order, so results are bit-identical for any thread count. The forward's tile
             transposed (partials_shifted): rows (c, r, t) read in place from the chunk's phase
             planes, columns NR output channels of dy packed pixel-major, the reduction over the
             chunk's output pixels; an extra plane of ones per image gives db as one more row.
SLP: the drivers that reach the register tile compile inside slp_compilation() (compiles_with_slp,
kernels/_config.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._common import (
    im2col_chw_t,
    pack_panels,
    pad_chw,
    pad_rows,
    phase_grid,
    phase_starts,
    pixel_offsets,
    prepare,
)
from fastcnn.kernels._config import CACHE, FASTMATH, TILE_FASTMATH, compiles_with_slp
from fastcnn.kernels._gemm import rows_axpy
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels._tile import MR, MR_NARROW, NR, NR_NARROW, tile, tile_narrow

SMALL_L = 16          # forward reductions shorter than this use rows_axpy (measured faster for 9, slower for 27)
IMAGES_PER_CHUNK = 4  # dw partials: images packed per chunk
KC = 128              # reduction block of the tile kernels: a B panel of KC x NR (16 KiB) stays in L1
TASKS_PER_CALL = 8    # a forward call on fewer images than this also splits each image's pixels
BLOCK_PIXELS = (256 // MR) * MR   # forward: output pixels per result block (Ct), copied out at once
BLOCK_PIXELS_NARROW = (256 // MR_NARROW) * MR_NARROW
# The route cost model: each tile's speed as a fraction of the FMA peak in the forward, data in L1, per
# tile shape (MR, NR) (dev/gen_tile.py). 3 x 32 and 5 x 16 are measured on an AVX2 CPU; 6 x 32 (AVX-512) was
# only compared end to end, so it is taken at 3 x 32's figure until measured on its own.
TILE_SPEED = {(3, 32): 0.94, (6, 32): 0.94, (5, 16): 0.83}
CT_PAD = 16           # Ct row padding: a stride of a multiple of 256 bytes maps a column to 1/4 of L1's sets
NO_ARGMAX = np.empty((0, 0, 0, 0), np.int32)   # _backward_weight_partials: dy is not pooled
NO_OFFSETS = np.empty(0, np.int64)


# ---------------------------------------------------------------- serial workers (one image or one chunk of images)

@njit(boundscheck=False, cache=CACHE)
def _pack_phases(x, sh, sw, ph, pw, Hs, Ws, xf, base):
    """x (C, H, W), zero-padded by (ph, pw), into its sh*sw phase planes (each Hs x Ws) in the zeroed
    flat buffer xf: x_pad[c, i*sh + a, j*sw + b] goes to xf[base + ((c*sh + a)*sw + b)*Hs*Ws + i*Ws
    + j]. Then x_pad[c, p*sh + r, q*sw + t] is phase (c, r % sh, t % sw) at (p + r // sh, q + t // sw):
    a stride-1 window again. Stride 1 is plain zero padding."""
    C, H, W = x.shape
    plane = Hs * Ws
    xr = x.reshape(C * H * W)
    if sh == 1 and sw == 1:                                     # one plane: rows copied into the padding
        for c in range(C):
            for h in range(H):
                d, src = np.uint64(base + c * plane + (h + ph) * Ws + pw), np.uint64((c * H + h) * W)
                for w in range(np.uint64(W)):
                    xf[d + w] = xr[src + w]
        return
    us = np.uint64(sw)
    for b in range(sw):                                         # no division inside the loops
        w0 = (b - pw % sw + sw) % sw                            # the first w with (w + pw) % sw == b
        col = base + b * plane + (w0 + pw) // sw
        n = (W - w0 + sw - 1) // sw if W > w0 else 0
        for c in range(C):
            a, i = ph % sh, ph // sh                            # the phase row of h = 0
            for h in range(H):
                dst = col + (c * sh + a) * sw * plane + i * Ws
                d, src = np.uint64(dst), np.uint64((c * H + h) * W + w0)   # unsigned: no wrap-around checks
                if sw == 1:
                    for w in range(np.uint64(W)):
                        xf[d + w] = xr[src + w]
                else:
                    for k in range(n):
                        uk = np.uint64(k)
                        xf[d + uk] = xr[src + uk * us]
                a += 1
                if a == sh:
                    a, i = 0, i + 1


@njit(cache=CACHE)
def balanced_block(L):
    """The tile kernels' reduction block: at most KC, and equal blocks (L = 288 runs as 3 x 96, not
    128 + 128 + 32: a short last block pays the tile's load and store of C for few multiply-adds)."""
    return -(-L // -(-L // KC))


@njit(fastmath=TILE_FASTMATH, boundscheck=False, cache=CACHE)
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


@njit(fastmath=TILE_FASTMATH, boundscheck=False, cache=CACHE)
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
def _copy_out(Ct, b, yv, n, v0, v1):
    """yv[n, k, v] = Ct[v - v0, k] + b[k] for the real pixels v0 <= v < v1 of a result block:
    transposed, one channel at a time, so a column of Ct stays in L1."""
    for k in range(b.shape[0]):
        bk = b[k]
        for v in range(v0, min(yv.shape[2], v1)):
            yv[n, k, v] = Ct[v - v0, k] + bk


@njit(fastmath=TILE_FASTMATH, boundscheck=False, cache=CACHE)
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
    Q wide (fused.window_offsets). Same elements, same order as maxpool2d_backward."""
    K, P2, Q2 = dyn.shape
    for k in range(K):
        kb, j = k // NR, k % NR
        for p in range(P2):
            base = pix0 + p * psh * Q
            for q in range(Q2):
                a = an[k, p, q]
                if a >= 0:
                    dyt[kb, base + q * psw + offsets[a], j] += dyn[k, p, q]


@njit(fastmath=TILE_FASTMATH, boundscheck=False, cache=CACHE)
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


@njit(boundscheck=False, cache=CACHE)
def _sum_partials(parts, dw, db):
    """dw (K, L), db (K,) from the chunks' partials parts (nchunks, >= L+1, >= K) in the tile's
    layout (partials_shifted: row l < L is dw[:, l], row L is db): summed in chunk order (chunk 0,
    1, ...), so every element is summed in the same order whatever the thread count, then
    transposed once. Serial: a fraction of a millisecond even for the largest layer, and a prange
    driver would add about a second to the first run's compilation."""
    K, L = dw.shape
    acc = parts[0, :L + 1, :K].copy()
    for ch in range(1, parts.shape[0]):
        for l in range(L + 1):
            for k in range(K):
                acc[l, k] += parts[ch, l, k]
    for k in range(K):
        for l in range(L):
            dw[k, l] = acc[l, k]
        db[k] = acc[L, k]


# ---------------------------------------------------------------- parallel drivers

@compiles_with_slp
@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_shifted(lo, hi, x, Bp, b, sh, sw, ph, pw, Hs, Ws, y, starts, offs, ngroups):
    """Any stride: x (N,C,H,W), Bp (ceil(K/NR), C*R*S, NR) the packed weights -> y (N,K,P,Q).
    With the padded image split into its phase planes (_pack_phases, flattened per channel and
    phase), output pixel (p, q) needs x_pad[c, p*sh + r, q*sw + t] = xf[starts[(c, r, t)] +
    offs[(p, q)]] with starts from phase_starts and offs[(p, q)] = p*Ws + q: the tile reads its MR
    pixel rows straight from the image (no im2col), and only real output pixels are computed (offs
    is padded to a multiple of MR by repeating the last pixel, whose extra results are dropped).
    prange over (image, group of MR-pixel blocks); each task writes only its own pixels of its own
    image."""
    N, K, PQ = x.shape[0], y.shape[1], y.shape[2] * y.shape[3]
    L = starts.shape[0]
    nkb = Bp.shape[0]
    Bf = Bp.reshape(nkb * L * NR)
    nblk = offs.shape[0] // MR
    yv = y.reshape(N, K, PQ)
    for t in range(lo, hi):
        n = t // ngroups
        g = t - n * ngroups
        g0 = g * nblk // ngroups
        g1 = (g + 1) * nblk // ngroups
        if g1 <= g0:
            continue
        xf = _image_planes(x, n, sh, sw, ph, pw, Hs, Ws)
        Ct = np.empty((min((g1 - g0) * MR, BLOCK_PIXELS), nkb * NR + CT_PAD), x.dtype)
        for v0 in range(g0 * MR, g1 * MR, BLOCK_PIXELS):
            v1 = min(g1 * MR, v0 + BLOCK_PIXELS)
            tiles_pixels(xf, starts, offs[v0:v1], Bf, L, Ct)
            _copy_out(Ct, b, yv, n, v0, v1)


@compiles_with_slp
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


@compiles_with_slp
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


@compiles_with_slp
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


@compiles_with_slp
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


def dw_starts(C, R, S, stride, Hs, Ws):
    """partials_shifted's row starts: phase_starts, then the ones plane's (the db row), padded to a
    multiple of MR."""
    return pad_rows(np.append(phase_starts(C, R, S, stride, Hs, Ws), C * stride[0] * stride[1] * Hs * Ws))


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
            npan = -(-(P * Ws) // NR)
            ngroups = 1 if N >= TASKS_PER_CALL else min(npan, -(-TASKS_PER_CALL // N))
            parallel_for(_forward_grid, N * ngroups, x, pack_panels(w2, MR), b, *stride, *padding, Hs, Ws, y,
                         starts, (S - 1) // stride[1] + NR, ngroups)
        else:
            rows, cols = (MR, NR) if route == "shifted" else (MR_NARROW, NR_NARROW)
            offs = pixel_offsets(P, Q, Ws, rows)
            nblk = len(offs) // rows
            ngroups = 1 if N >= TASKS_PER_CALL else min(nblk, -(-TASKS_PER_CALL // N))
            driver = _forward_shifted if route == "shifted" else _forward_narrow
            parallel_for(driver, N * ngroups, x, pack_panels(w2, cols), b, *stride, *padding, Hs, Ws, y, starts,
                         offs, ngroups)
    return y


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> y (N,K,P,Q)."""
    x, w, b = prepare(x, w, b)
    return _forward(x, w, b, tuple(stride), tuple(padding))


def weight_gradient(x, dy, w, stride, padding, argmax=NO_ARGMAX, offsets=NO_OFFSETS, pool_stride=(1, 1)):
    """dw (K,C,R,S), db (K,) of a convolution of x (N,C,H,W) with w (K,C,R,S), prepared arrays:
    the chunks' partials (_backward_weight_partials) summed in chunk order. dy is the convolution's
    gradient (N,K,P,Q), or, given argmax and the pool's window offsets (fused.window_offsets) and
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
        _sum_partials(parts, dw, db)
    return dw.reshape(K, C, R, S), db


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """dy (N,K,P,Q), x (N,C,H,W), w (K,C,R,S) -> (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,))."""
    dy, x, w = prepare(dy, x, w)
    stride, padding = tuple(stride), tuple(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    dw, db = weight_gradient(x, dy, w, stride, padding)
    if dy.size == 0:                       # no images, no output channels or no output pixels
        return (np.zeros((N, C, H, W), x.dtype) if need_dx else None), dw, db
    if not need_dx:
        return None, dw, db

    (sh, sw), (ph, pw) = stride, padding
    if (sh, sw) == (1, 1) and ph <= R - 1 and pw <= S - 1:
        # dx = correlation of dy (padded by R-1-ph, S-1-pw) with the flipped, transposed kernel
        w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C, K, R, S)
        dx = _forward(dy, w_flip, np.zeros(C, x.dtype), (1, 1), (R - 1 - ph, S - 1 - pw))
    else:
        dx = np.empty((N, C, H, W), x.dtype)
        w2t = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(R * S * C, K)  # (r, s, c) x K
        P, Q = dy.shape[2], dy.shape[3]
        parallel_for(_backward_input_col2im, N, dy, pack_panels(w2t, NR), R, S, sh, sw, ph, pw, dx,
                               np.arange(K, dtype=np.int64) * (P * Q), pixel_offsets(P, Q, Q))
    return dx, dw, db
