"""2-D convolution, Numba kernels. Same contract and results as :mod:`fastcnn.reference.conv`.

Dimension legend: N batch, C input channels, H, W input size, K output channels, R, S kernel size,
P, Q output size, sh, sw stride, ph, pw padding, Hp = H + 2ph, Wp = W + 2pw, L reduction length.

Layout of the work (each parallel driver loops with prange over independent pieces; no two
iterations ever write the same element, so there are no races and no atomics):

forward      stride 1 (C*R*S >= SMALL_L): no im2col. prange over (image, group of pixel panels);
             the register tile of kernels/_tile.py (MR output channels x NR pixels, the weights
             packed in MR-row panels) reads its B panels straight from the zero-padded image
             flattened per channel, on the padded-width grid (_forward_shifted).
             Other strides: prange over images n. The image is copied to a zero-padded HWC
             buffer, so each row of its pixel-major im2col matrix col (P*Q, R*S*C) is R
             contiguous copies of S*C values; then y[n] (K, P*Q) = W2 (K, R*S*C) . col^T with
             the gemm_nt micro-kernel (+ bias).
             For a tiny reduction (C*R*S < SMALL_L, the first layer) the im2col is kept
             channel-major (C*R*S, P*Q) and y[n] is built with rows_axpy, vectorised over pixels.
backward dx  stride 1: dx is the forward convolution of dy with the flipped, transposed weights
             (C, K, R, S) and padding (R-1-ph, S-1-pw), the same fast kernel. Any other stride:
             per image, dcol (P*Q, R*S*C) = dy[n]^T . W2 with gemm_nt, then col2im adds each row
             back into the padded HWC image; prange over images.
backward dw  prange over fixed chunks of images (their bounds depend on N only): each chunk packs
             its images' channel-major im2col side by side (C*R*S, nb*P*Q) with the matching dy
             rows (K, nb*P*Q) and writes its own partial dw = dy_chunk . col_chunk^T and db. The
             partials are then summed in chunk order, so results are bit-identical for any thread
             count. At stride 1 there is no im2col: on the padded width Wp (dy rows widened by
             zeros) the reduction runs over the padded grid's pixels; with C a multiple of NR the
             register tile reads NR-channel runs of the padded HWC images in place
             (_partials_s1_tiles), otherwise gemm_nt_shifted reads each im2col row as a window
             of the flattened padded image.
SLP: the drivers that reach the register tile are called inside slp_compilation() (see
kernels/_config.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._config import CACHE, FASTMATH, TILE_FASTMATH, slp_compilation
from fastcnn.kernels._gemm import gemm_nt, gemm_nt_shifted, rows_axpy
from fastcnn.kernels._tile import MR, NR, tile

SMALL_L = 32          # reductions shorter than this use rows_axpy instead of gemm_nt
IMAGES_PER_CHUNK = 4  # dw partials: images packed per chunk
KC = 256              # reduction block of the tile kernels: a B panel of KC x NR stays in L1
TASKS_PER_CALL = 8    # a forward call on fewer images than this also splits each image's pixels


# ---------------------------------------------------------------- serial workers (one image)

@njit(boundscheck=False, cache=CACHE)
def _pad_hwc(x, ph, pw, xt):
    """x (C, H, W) -> xt (Hp, Wp, C), zero border."""
    C, H, W = x.shape
    xt[:] = 0
    for c in range(C):
        for h in range(H):
            for w in range(W):
                xt[h + ph, w + pw, c] = x[c, h, w]


@njit(boundscheck=False, cache=CACHE)
def _pad_chw(x, ph, pw, xp):
    """x (C, H, W) -> xp (C, Hp, Wp), zero border."""
    C, H, W = x.shape
    Hp, Wp = xp.shape[1], xp.shape[2]
    for c in range(C):                    # element loops, not slice assignments: these compile faster
        for h in range(Hp):
            for w in range(Wp):
                xp[c, h, w] = 0
        for h in range(H):
            for w in range(W):
                xp[c, h + ph, pw + w] = x[c, h, w]


@njit(boundscheck=False, cache=CACHE)
def _im2col_hwc(xt, R, S, sh, sw, P, Q, col):
    """xt (Hp, Wp, C) -> col (P*Q, R*S*C): row p*Q+q is the receptive field of output (p, q)."""
    Hp, Wp, C = xt.shape
    flat = xt.reshape(Hp * Wp * C)
    run = S * C
    for p in range(P):
        for q in range(Q):
            row = col[p * Q + q]
            for r in range(R):
                src = ((p * sh + r) * Wp + q * sw) * C
                row[r * run:(r + 1) * run] = flat[src:src + run]


@njit(boundscheck=False, cache=CACHE)
def _im2col_chw_t(xp, R, S, sh, sw, P, Q, colT, offset):
    """xp (C, Hp, Wp) -> colT[(c, r, s), offset + p*Q + q] = xp[c, p*sh + r, q*sw + s].
    (Plain multi-dimensional indexing: measured faster in Numba than per-row views.)"""
    C = xp.shape[0]
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                for p in range(P):
                    base = offset + p * Q
                    h = p * sh + r
                    for q in range(Q):
                        colT[row, base + q] = xp[c, h, q * sw + s]


# ---------------------------------------------------------------- parallel drivers

@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_gemm(x, w2, b, R, S, sh, sw, ph, pw, y, zero):
    """x (N,C,H,W), w2 (K, R*S*C) in (r, s, c) order, b (K,) -> y (N,K,P,Q)."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    for n in prange(N):
        xt = np.empty((H + 2 * ph, W + 2 * pw, C), x.dtype)
        _pad_hwc(x[n], ph, pw, xt)
        col = np.empty((P * Q, R * S * C), x.dtype)
        _im2col_hwc(xt, R, S, sh, sw, P, Q, col)
        yn = y[n].reshape(K, P * Q)
        gemm_nt(w2, col, yn, zero)
        for k in range(K):
            yn[k] += b[k]


@njit(cache=CACHE)
def balanced_block(L):
    """The tile kernels' reduction block: at most KC, and equal blocks (L = 288 runs as 2 x 144, not
    256 + 32: a short last block pays the tile's load and store of C for few multiply-adds)."""
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


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_shifted(x, Bp, b, R, S, ph, pw, y, starts, offs, ngroups):
    """Stride 1: x (N,C,H,W), Bp (ceil(K/NR), C*R*S, NR) the packed weights -> y (N,K,P,Q).
    With the padded image flattened per channel (CHW), output pixel (p, q) needs x_pad[c, p + r,
    q + s] = xf[starts[(c, r, s)] + offs[(p, q)]] with starts[(c, r, s)] = c*Hp*Wp + r*Wp + s and
    offs[(p, q)] = p*Wp + q: the tile reads its MR pixel rows straight from the image (no im2col),
    and only real output pixels are computed (offs is padded to a multiple of MR by repeating the
    last pixel, whose extra results are dropped). prange over (image, group of MR-pixel blocks);
    each task writes only its own pixels of its own image."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    plane = Hp * Wp
    L = starts.shape[0]
    nkb = Bp.shape[0]
    Bf = Bp.reshape(nkb * L * NR)
    PQ = P * Q
    nblk = offs.shape[0] // MR
    yv = y.reshape(N, K, PQ)
    for t in prange(N * ngroups):
        n = t // ngroups
        g = t - n * ngroups
        g0 = g * nblk // ngroups
        g1 = (g + 1) * nblk // ngroups
        if g1 <= g0:
            continue
        xf = np.zeros(C * plane, x.dtype)
        for c in range(C):
            for h in range(H):
                base = c * plane + (h + ph) * Wp + pw
                for w in range(W):
                    xf[base + w] = x[n, c, h, w]
        Ct = np.empty(((g1 - g0) * MR, nkb * NR), x.dtype)
        tiles_pixels(xf, starts, offs[g0 * MR:g1 * MR], Bf, L, Ct)
        v0, v1 = g0 * MR, min(PQ, g1 * MR)
        for k in range(K):
            bk = b[k]
            for v in range(v0, v1):
                yv[n, k, v] = Ct[v - v0, k] + bk


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_small(x, w2, b, R, S, sh, sw, ph, pw, y):
    """As _forward_gemm for tiny C*R*S; w2 (K, C*R*S) in (c, r, s) order."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    for n in prange(N):
        xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
        _pad_chw(x[n], ph, pw, xp)
        colT = np.empty((C * R * S, P * Q), x.dtype)
        _im2col_chw_t(xp, R, S, sh, sw, P, Q, colT, 0)
        rows_axpy(w2, colT, b, y[n].reshape(K, P * Q))


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_input_col2im(dy, w2t, R, S, sh, sw, ph, pw, dx, zero):
    """Any stride. dy (N,K,P,Q), w2t (R*S*C, K) -> dx (N,C,H,W)."""
    N, C, H, W = dx.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    run = S * C
    for n in prange(N):
        dyt = np.ascontiguousarray(dy[n].reshape(K, P * Q).T)       # (P*Q, K)
        dcol = np.empty((P * Q, R * S * C), dx.dtype)
        gemm_nt(dyt, w2t, dcol, zero)                               # (P*Q, R*S*C)
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


@njit(boundscheck=False, cache=CACHE)
def _pad_flat(x, ph, pw, xf):
    """x (C, H, W) -> xf (C, Hp*Wp + slack): each zero-padded plane flattened, zeros after it."""
    C, H, W = x.shape
    Wp = W + 2 * pw
    for c in range(C):
        for v in range(xf.shape[1]):
            xf[c, v] = 0
        for h in range(H):
            base = (h + ph) * Wp + pw
            for w in range(W):
                xf[c, base + w] = x[c, h, w]


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def partials_from_packed(dyc, colT, dw_part, db_part, zero):
    """dw_part (K, C*R*S) = dyc (K, V) . colT (C*R*S, V)^T and db_part (K,) = row sums of dyc."""
    gemm_nt(dyc, colT, dw_part, zero)
    for k in range(dyc.shape[0]):
        t = zero
        for v in range(dyc.shape[1]):
            t += dyc[k, v]
        db_part[k] = t


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_weight_partials_s1(x, dy, ph, pw, S, nchunks, starts, dw_part, db_part, zero):
    """Stride 1: as _backward_weight_partials, without im2col. With C a multiple of NR, dy goes
    straight into the tile's packed panels (_pack_dy) and the tile reads x's windows in place
    (_partials_s1_tiles). Otherwise dy's rows are widened to the padded width Wp by zeros (dyw),
    dw[k, (c, r, s)] = sum_l dyw[k, l] * xf[c, r*Wp + s + l] over l < P*Wp: each im2col row is a
    window of the flattened padded image, read in place (partials_s1), at the price of
    multiply-adds on the zeros."""
    N, C, W = x.shape[0], x.shape[1], x.shape[3]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    Wp = W + 2 * pw
    for ch in prange(nchunks):
        n0 = ch * N // nchunks
        nb = (ch + 1) * N // nchunks - n0
        if C % NR == 0:
            PQ = P * Q
            astarts = np.empty(nb * PQ, np.int64)              # pixel (i, v) of the chunk in dy
            for i in range(nb):
                for v in range(PQ):
                    astarts[i * PQ + v] = (n0 + i) * K * PQ + v
            _partials_s1_tiles(x, n0, dy.reshape(N * K * PQ), astarts, _row_offsets(K, PQ), ph, pw, S, dw_part[ch])
            _db_partial(dy.reshape(N, K, PQ), n0, nb, db_part[ch], zero)
            continue
        dyw = np.zeros((nb, K, P * Wp), x.dtype)
        for i in range(nb):
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        dyw[i, k, p * Wp + q] = dy[n0 + i, k, p, q]
        partials_s1(x, n0, dyw, ph, pw, S, starts, dw_part[ch], db_part[ch], zero)


@njit(cache=CACHE)
def flat_plane(Hp, Wp, S):
    """Length of one flattened padded plane in the stride-1 weight gradient: Hp*Wp, plus the S
    elements its last windows overrun."""
    return Hp * Wp + S


@njit(boundscheck=False, cache=CACHE)
def _row_offsets(K, stride):
    """aoffs[k] = k*stride for the tile's rows k < K, rounded up to MR rows; the padding rows read
    row 0 and their results are dropped."""
    aoffs = np.zeros((K + MR - 1) // MR * MR, np.int64)
    for k in range(K):
        aoffs[k] = k * stride
    return aoffs


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _db_partial(d3, i0, nb, db_part, zero):
    """db_part[k] = sum of d3[i0:i0 + nb, k, :]; d3 (N, K, P*Q). The one db sum of the tile paths,
    so that the fused and unfused kernels give the same bits."""
    for k in range(d3.shape[1]):
        t = zero
        for i in range(nb):
            for v in range(d3.shape[2]):
                t += d3[i0 + i, k, v]
        db_part[k] = t


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _partials_s1_tiles(x, n0, fa, astarts, aoffs, ph, pw, S, dw_part):
    """partials_s1 for C a multiple of NR, with the tile kernel: rows k, A[pixel l, k] =
    fa[astarts[l] + aoffs[k]] (dy or its widened copy, read in place), columns (r, s, c), reduction
    over the chunk's output pixels. With the images padded in HWC order, flattened and laid one
    after the other, B[(i, p, q), (r, s, c)] = xh[i*img + ((p + r)*Wp + q + s)*C + c]: NR consecutive
    channels of one (r, s) are contiguous, so each B panel is read in place, and bstarts lists
    where each pixel's rows start. Only real output pixels are reduced over. dw_part (K, C*R*S) in
    (c, r, s) order."""
    n = astarts.shape[0]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    K, L = dw_part.shape
    R = L // (C * S)
    P, Q = Hp - R + 1, Wp - S + 1
    nb = n // (P * Q)
    img = (Hp * Wp + S) * C                                     # S pixels of slack per image
    xh = np.zeros(nb * img, x.dtype)
    for i in range(nb):
        for c in range(C):
            for h in range(H):
                base = i * img + ((h + ph) * Wp + pw) * C + c
                for w in range(W):
                    xh[base + w * C] = x[n0 + i, c, h, w]
    mb = aoffs.shape[0] // MR
    bstarts = np.empty(n, np.int64)
    for i in range(nb):
        for p in range(P):
            for q in range(Q):
                bstarts[(i * P + p) * Q + q] = i * img + (p * Wp + q) * C
    Ct = np.empty((mb * MR, L), x.dtype)
    kc = balanced_block(n)
    for k0 in range(0, n, kc):
        k1 = min(n, k0 + kc)
        for col in range(0, L, NR):
            rs = col // C
            boff = ((rs // S) * Wp + rs % S) * C + col - rs * C
            for ib in range(mb):
                tile(fa, astarts[k0:k1], aoffs[ib * MR:ib * MR + MR], xh, bstarts[k0:k1], boff, Ct, ib * MR, col,
                     k0 > 0)
    for k in range(K):
        for c in range(C):
            for r in range(R):
                for s in range(S):
                    dw_part[k, (c * R + r) * S + s] = Ct[k, (r * S + s) * C + c]


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def partials_s1(x, n0, dyw, ph, pw, S, starts, dw_part, db_part, zero):
    """Stride-1 partial dw (K, C*R*S) and db (K,) of images n0 .. n0+nb of x (N, C, H, W) against
    their widened gradient dyw (nb, K, P*Wp): the images padded and flattened one after the other,
    then gemm_nt_shifted with the images as its windows (starts[(c, r, s)] = c*plane + r*Wp + s,
    see window_starts), so the accumulators run over all the chunk's images."""
    nb = dyw.shape[0]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    if C % NR == 0:
        Wp = W + 2 * pw
        J = dyw.shape[2]
        P, Q = J // Wp, Wp - S + 1
        K = dyw.shape[1]
        astarts = np.empty(nb * P * Q, np.int64)               # real pixels (i, p, q) of dyw
        for i in range(nb):
            for p in range(P):
                for q in range(Q):
                    astarts[(i * P + p) * Q + q] = i * K * J + p * Wp + q
        _partials_s1_tiles(x, n0, dyw.reshape(nb * K * J), astarts, _row_offsets(K, J), ph, pw, S, dw_part)
        dense = np.empty((nb, K, P * Q), x.dtype)              # dy's own layout, for _db_partial
        for i in range(nb):
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        dense[i, k, p * Q + q] = dyw[i, k, p * Wp + q]
        _db_partial(dense, 0, nb, db_part, zero)
        return
    plane = flat_plane(H + 2 * ph, W + 2 * pw, S)
    xfs = np.empty((nb, C, plane), x.dtype)
    for i in range(nb):
        _pad_flat(x[n0 + i], ph, pw, xfs[i])
    gemm_nt_shifted(dyw, xfs.reshape(nb * C * plane), starts, C * plane, dw_part, zero)
    for k in range(dyw.shape[1]):
        t = zero
        for r in range(nb):
            for v in range(dyw.shape[2]):
                t += dyw[r, k, v]
        db_part[k] = t


def window_starts(C, R, S, Hp, Wp):
    """starts[(c, r, s)] = c*plane + r*Wp + s for the stride-1 weight gradient (see flat_plane)."""
    plane = flat_plane(Hp, Wp, S)
    c, r, s = np.meshgrid(np.arange(C), np.arange(R), np.arange(S), indexing="ij")
    return (c * plane + r * Wp + s).reshape(-1).astype(np.int64)


@njit(parallel=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_weight_partials(x, dy, R, S, sh, sw, ph, pw, nchunks, dw_part, db_part, zero):
    """Per chunk of images: dw_part[ch] (K, C*R*S) and db_part[ch] (K,)."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    PQ = P * Q
    for ch in prange(nchunks):
        n0 = ch * N // nchunks
        nb = (ch + 1) * N // nchunks - n0
        colT = np.empty((C * R * S, nb * PQ), x.dtype)
        dyc = np.empty((K, nb * PQ), x.dtype)
        xp = np.empty((C, H + 2 * ph, W + 2 * pw), x.dtype)
        for i in range(nb):
            _pad_chw(x[n0 + i], ph, pw, xp)
            _im2col_chw_t(xp, R, S, sh, sw, P, Q, colT, i * PQ)
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        dyc[k, i * PQ + p * Q + q] = dy[n0 + i, k, p, q]
        partials_from_packed(dyc, colT, dw_part[ch], db_part[ch], zero)


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _sum_partials(dw_part, db_part, dw, db):
    """dw (K, L) = sum over chunks in chunk order; prange over rows k. Each element is summed in
    the same order (chunk 0, 1, ...) whatever the thread count; rows are read contiguously."""
    nchunks, K, L = dw_part.shape
    for k in prange(K):
        for l in range(L):
            dw[k, l] = dw_part[0, k, l]
        for ch in range(1, nchunks):
            for l in range(L):
                dw[k, l] += dw_part[ch, k, l]
        s = db_part[0, k]
        for ch in range(1, nchunks):
            s += db_part[ch, k]
        db[k] = s


# ---------------------------------------------------------------- wrappers (validate, allocate)

def pack_cols(a):
    """a (K, L) -> (ceil(K/NR), L, NR): the tile kernel's B panels (NR output channels side by side
    for each reduction index), columns past K zero."""
    K, L = a.shape
    kb = -(-K // NR)
    bp = np.zeros((kb * NR, L), a.dtype)
    bp[:K] = a
    return np.ascontiguousarray(bp.reshape(kb, NR, L).transpose(0, 2, 1))


def pixel_offsets(P, Q, Wp):
    """offs[p*Q + q] = p*Wp + q, where output pixel (p, q)'s window starts in a padded plane Wp wide,
    padded to a multiple of MR by repeating the last pixel."""
    offs = (np.arange(P)[:, None] * Wp + np.arange(Q)).reshape(-1)
    return np.concatenate([offs, np.repeat(offs[-1:], -len(offs) % MR)]).astype(np.int64)


def chw_window_starts(C, R, S, plane, Wp):
    """starts[(c, r, s)] = c*plane + r*Wp + s: where reduction index (c, r, s) starts in a padded
    image flattened per channel (planes ``plane`` long, rows Wp wide)."""
    c, r, s = np.meshgrid(np.arange(C), np.arange(R), np.arange(S), indexing="ij")
    return (c * plane + r * Wp + s).reshape(-1).astype(np.int64)


def _prepare(*arrays):
    dtype = arrays[0].dtype
    if dtype not in (np.float32, np.float64) or any(a.dtype != dtype for a in arrays):
        raise TypeError("conv2d kernels need float32 or float64 arrays of one dtype, got "
                        + ", ".join(str(a.dtype) for a in arrays))
    return [np.ascontiguousarray(a) for a in arrays]


def _forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    y = np.empty((N, K, P, Q), x.dtype)
    if N == 0 or P <= 0 or Q <= 0:
        return y
    if C * R * S < SMALL_L:
        _forward_small(x, w.reshape(K, C * R * S), b, R, S, *stride, *padding, y)
    elif stride == (1, 1):
        Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
        offs = pixel_offsets(P, Q, Wp)
        nblk = len(offs) // MR
        ngroups = 1 if N >= TASKS_PER_CALL else min(nblk, -(-TASKS_PER_CALL // N))
        with slp_compilation():
            _forward_shifted(x, pack_cols(w.reshape(K, C * R * S)), b, R, S, *padding, y,
                             chw_window_starts(C, R, S, Hp * Wp, Wp), offs, ngroups)
    else:
        w2 = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(K, R * S * C)  # (r, s, c) order
        _forward_gemm(x, w2, b, R, S, *stride, *padding, y, x.dtype.type(0))
    return y


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> y (N,K,P,Q)."""
    x, w, b = _prepare(x, w, b)
    return _forward(x, w, b, tuple(stride), tuple(padding))


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """dy (N,K,P,Q), x (N,C,H,W), w (K,C,R,S) -> (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,))."""
    dy, x, w = _prepare(dy, x, w)
    stride, padding = tuple(stride), tuple(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    zero = x.dtype.type(0)

    nchunks = max(1, min(N, -(-N // IMAGES_PER_CHUNK)))
    dw_part = np.empty((nchunks, K, C * R * S), x.dtype)
    db_part = np.empty((nchunks, K), x.dtype)
    dw = np.empty((K, C * R * S), x.dtype)
    db = np.empty(K, x.dtype)
    if N == 0:
        dw[:] = 0
        db[:] = 0
    else:
        if stride == (1, 1):
            starts = window_starts(C, R, S, H + 2 * padding[0], W + 2 * padding[1])
            with slp_compilation():
                _backward_weight_partials_s1(x, dy, *padding, S, nchunks, starts, dw_part, db_part, zero)
        else:
            _backward_weight_partials(x, dy, R, S, *stride, *padding, nchunks, dw_part, db_part, zero)
        _sum_partials(dw_part, db_part, dw, db)
    dw = dw.reshape(K, C, R, S)
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
        _backward_input_col2im(dy, w2t, R, S, sh, sw, ph, pw, dx, zero)
    return dx, dw, db
