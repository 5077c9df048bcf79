"""2-D convolution, Numba kernels. Same contract and results as :mod:`fastcnn.reference.conv`.

Dimension legend: N batch, C input channels, H, W input size, K output channels, R, S kernel size,
P, Q output size, sh, sw stride, ph, pw padding, Hp = H + 2ph, Wp = W + 2pw, L reduction length.

Layout of the work (each parallel driver loops with prange over independent pieces; no two
iterations ever write the same element, so there are no races and no atomics):

forward      stride 1 (C*R*S >= SMALL_L): no im2col. prange over (image, group of MR-pixel
             blocks); the register tile of kernels/_tile.py takes MR output pixels as its rows,
             read in place from the zero-padded image flattened per channel (pixel (p, q) at
             offset p*Wp + q, reduction index (c, r, s) at c*Hp*Wp + r*Wp + s), and NR output
             channels of the packed weights as its columns (_forward_shifted, tiles_pixels).
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
             count. At stride 1 there is no im2col: the forward's tile transposed (partials_s1),
             rows (c, r, s) read in place from the chunk's padded images, columns NR output
             channels of dy packed pixel-major, the reduction over the chunk's output pixels; an
             extra plane of ones per image gives db as one more row.
SLP: the drivers that reach the register tile are called inside slp_compilation() (see
kernels/_config.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastcnn.convmath import conv_output_size
from fastcnn.kernels._config import CACHE, FASTMATH, TILE_FASTMATH, slp_compilation
from fastcnn.kernels._gemm import gemm_nt, rows_axpy
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
def _backward_weight_partials_s1(x, dy, ph, pw, S, nchunks, starts, dw_part, db_part):
    """Stride 1: as _backward_weight_partials, without im2col: per chunk of images, dy packed
    pixel-major (_pack_dyt) and partials_s1, which reads x's windows in place."""
    N = x.shape[0]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    PQ = P * Q
    d3 = dy.reshape(N, K, PQ)
    for ch in prange(nchunks):
        n0 = ch * N // nchunks
        nb = (ch + 1) * N // nchunks - n0
        dyt = np.empty(((K + NR - 1) // NR, nb * PQ, NR), x.dtype)
        _pack_dyt(d3, n0, nb, dyt)
        partials_s1(x, n0, nb, ph, pw, S, starts, dyt, dw_part[ch], db_part[ch])


@njit(boundscheck=False, cache=CACHE)
def _pack_dyt(d3, i0, nb, dyt):
    """Images i0 .. i0+nb of the gradient d3 (N, K, P*Q) -> dyt (ceil(K/NR), nb*P*Q, NR), the tile's
    B panels: dyt[k // NR, i*P*Q + v, k % NR] = d3[i0 + i, k, v], zero for k >= K."""
    K, PQ = d3.shape[1], d3.shape[2]
    for kb in range(dyt.shape[0]):
        for i in range(nb):
            for v in range(PQ):
                for j in range(NR):
                    k = kb * NR + j
                    dyt[kb, i * PQ + v, j] = d3[i0 + i, k, v] if k < K else 0


@njit(fastmath=TILE_FASTMATH, boundscheck=False, cache=CACHE)
def partials_s1(x, n0, nb, ph, pw, S, starts, dyt, dw_part, db_part):
    """Stride-1 partial dw (K, C*R*S) and db (K,) of images n0 .. n0+nb of x (N, C, H, W) against
    their gradient packed by _pack_dyt, with the tile kernel, as the forward's transpose: rows are
    reduction indices (c, r, s), columns NR output channels, and the reduction runs over the
    chunk's output pixels. The images are padded and flattened per channel one after the other,
    each with one more plane holding 1 at every output pixel (xf), so A[pixel (i, p, q), (c, r, s)]
    = xf[i*(C+1)*Hp*Wp + p*Wp + q + starts[(c, r, s)]] is read in place, and the row whose start is
    that plane's (the last real entry of starts, see dw_starts) sums dy: db, in the same order as
    dw. starts is padded to a multiple of MR (the padding rows are dropped)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    plane = Hp * Wp
    K, L = dw_part.shape
    R = L // (C * S)
    P, Q = Hp - R + 1, Wp - S + 1
    npix = nb * P * Q
    xf = np.zeros(nb * (C + 1) * plane, x.dtype)
    for i in range(nb):
        for c in range(C):
            for h in range(H):
                base = (i * (C + 1) + c) * plane + (h + ph) * Wp + pw
                for w in range(W):
                    xf[base + w] = x[n0 + i, c, h, w]
        for p in range(P):
            base = (i * (C + 1) + C) * plane + p * Wp
            for q in range(Q):
                xf[base + q] = 1
    astarts = np.empty(npix, np.int64)
    for i in range(nb):
        for p in range(P):
            for q in range(Q):
                astarts[(i * P + p) * Q + q] = i * (C + 1) * plane + p * Wp + q
    lstarts = np.arange(npix) * NR
    nkb = dyt.shape[0]
    dytf = dyt.reshape(nkb * npix * NR)
    Ct = np.empty((starts.shape[0], nkb * NR), x.dtype)
    kc = balanced_block(npix)
    for kb in range(nkb):
        for k0 in range(0, npix, kc):
            k1 = min(npix, k0 + kc)
            for g in range(0, starts.shape[0], MR):
                tile(xf, astarts[k0:k1], starts[g:g + MR], dytf, lstarts[k0:k1], kb * npix * NR, Ct, g, kb * NR,
                     k0 > 0)
    for k in range(K):
        for l in range(L):
            dw_part[k, l] = Ct[l, k]
        db_part[k] = Ct[L, k]


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


def pad_rows(offsets):
    """A table of the tile's row offsets padded to a multiple of MR by repeating its last entry (a
    valid address; the results of those rows are dropped)."""
    return np.concatenate([offsets, np.repeat(offsets[-1:], -len(offsets) % MR)]).astype(np.int64)


def dw_starts(C, R, S, Hp, Wp):
    """partials_s1's row starts: chw_window_starts, then the ones plane's (C*Hp*Wp, the db row),
    padded to a multiple of MR."""
    return pad_rows(np.append(chw_window_starts(C, R, S, Hp * Wp, Wp), C * Hp * Wp))


def pixel_offsets(P, Q, Wp):
    """offs[p*Q + q] = p*Wp + q, where output pixel (p, q)'s window starts in a padded plane Wp
    wide, padded to a multiple of MR."""
    return pad_rows((np.arange(P)[:, None] * Wp + np.arange(Q)).reshape(-1))


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
            starts = dw_starts(C, R, S, H + 2 * padding[0], W + 2 * padding[1])
            with slp_compilation():
                _backward_weight_partials_s1(x, dy, *padding, S, nchunks, starts, dw_part, db_part)
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
