"""Helpers shared by the kernels (as stumpy's core.py): the dtype check with its one message, the
register tile's panel packing, row padding and reduction block, the phase grid of a strided
convolution and the packing of an image into its phase planes, zero padding and the
channel-major im2col of a tiny reduction."""
from __future__ import annotations

import functools

import numpy as np
from numba import njit

from fastcnn.kernels._config import CACHE
from fastcnn.kernels._tile import MR

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
KC = 128              # reduction block of the tile kernels: a B panel of KC x NR (16 KiB) stays in L1


def check_float(what: str, *arrays: np.ndarray) -> list[np.ndarray]:
    """``arrays`` as given if they share one dtype, float32 or float64; else TypeError naming ``what``."""
    dtype = arrays[0].dtype
    if dtype not in FLOATS or any(a.dtype != dtype for a in arrays):
        raise TypeError(f"{what} kernels need float32 or float64 arrays of one dtype, got "
                        + ", ".join(str(a.dtype) for a in arrays))
    return list(arrays)


def prepare(*arrays):
    """The arrays of one convolution call, C-contiguous, after check_float."""
    return [np.ascontiguousarray(a) for a in check_float("conv2d", *arrays)]


def pack_panels(a, width):
    """a (K, L) -> (ceil(K/width), L, width): the tile kernel's packed panels, ``width`` output
    channels side by side for each reduction index (MR for its rows, NR for its columns); channels
    past K zero."""
    K, L = a.shape
    nb = -(-K // width)
    ap = np.zeros((nb * width, L), a.dtype)
    ap[:K] = a
    return np.ascontiguousarray(ap.reshape(nb, width, L).transpose(0, 2, 1))


def pad_rows(offsets, rows=MR):
    """A table of the tile's row offsets padded to a multiple of ``rows`` (the tile's MR) by
    repeating its last entry (a valid address; the results of those rows are dropped)."""
    return np.concatenate([offsets, np.repeat(offsets[-1:], -len(offsets) % rows)]).astype(np.int64)


def phase_grid(H, W, stride, padding):
    """Hs, Ws: the size of each phase plane of the zero-padded image (see _pack_phases)."""
    (sh, sw), (ph, pw) = stride, padding
    return -(-(H + 2 * ph) // sh), -(-(W + 2 * pw) // sw)


# The index tables depend on shapes only: built once per shape and shared by every call (about
# 20 us of NumPy each, several per training step). Callers never write them.
TABLES = functools.lru_cache(maxsize=256)


@TABLES
def phase_starts(C, R, S, stride, Hs, Ws):
    """starts[(c, r, t)] = ((c*sh + r % sh)*sw + t % sw)*Hs*Ws + (r // sh)*Ws + t // sw: where the
    window of reduction index (c, r, t) starts in an image's phase planes (at stride 1: c*Hp*Wp +
    r*Wp + t, the padded image flattened per channel)."""
    sh, sw = stride
    c, r, t = np.meshgrid(np.arange(C), np.arange(R), np.arange(S), indexing="ij")
    starts = ((c * sh + r % sh) * sw + t % sw) * (Hs * Ws) + (r // sh) * Ws + t // sw
    return starts.reshape(-1).astype(np.int64)


@TABLES
def pixel_offsets(P, Q, Ws, rows=MR):
    """offs[p*Q + q] = p*Ws + q, where output pixel (p, q)'s windows start in a phase plane Ws wide,
    padded to a multiple of ``rows``."""
    return pad_rows((np.arange(P)[:, None] * Ws + np.arange(Q)).reshape(-1), rows)


@njit(boundscheck=False, cache=CACHE)
def pad_chw(x, ph, pw, xp):
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
def im2col_chw_t(xp, R, S, sh, sw, P, Q, colT):
    """xp (C, Hp, Wp) -> colT[(c, r, s), p*Q + q] = xp[c, p*sh + r, q*sw + s].
    (Plain multi-dimensional indexing: measured faster in Numba than per-row views.)"""
    C = xp.shape[0]
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                for p in range(P):
                    base = p * Q
                    h = p * sh + r
                    for q in range(Q):
                        colT[row, base + q] = xp[c, h, q * sw + s]


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
