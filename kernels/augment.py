"""Data augmentation, Numba kernel: every output pixel of a batch of (N, C, H, W) images is one
source pixel (a translated and optionally mirrored position) or the channel's fill value. Pure per
pixel, so the result does not depend on the thread count, nor on whether the parallel or the serial
driver ran (large batches in parallel over images and channels; small ones on one thread)."""
import numpy as np
from numba import njit, prange

from fastcnn.kernels._config import CACHE

#: Below this many pixels a batch is done on one thread: the work (about a nanosecond a pixel) is
#: then smaller than waking the thread pool (MNIST's batch of 128 is 100,352 pixels).
PARALLEL_MIN_PIXELS = 1 << 21


@njit(boundscheck=False, cache=CACHE)
def _plane(x, i_n, i_c, oy, ox, f, v, out):
    h, w = x.shape[2], x.shape[3]
    for i in range(h):
        si = i + oy
        if si < 0 or si >= h:
            for j in range(w):
                out[i_n, i_c, i, j] = v
            continue
        for j in range(w):
            sj = (w - 1 - j if f else j) + ox
            out[i_n, i_c, i, j] = x[i_n, i_c, si, sj] if 0 <= sj < w else v


@njit(parallel=True, boundscheck=False, cache=CACHE)
def _shift_flip(x, dy, dx, flip, fill, out):
    n, c = x.shape[0], x.shape[1]
    for k in prange(n * c):
        i_n, i_c = k // c, k % c
        _plane(x, i_n, i_c, dy[i_n], dx[i_n], flip[i_n], fill[i_c], out)


@njit(boundscheck=False, cache=CACHE)
def _shift_flip_serial(x, dy, dx, flip, fill, out):
    n, c = x.shape[0], x.shape[1]
    for k in range(n * c):
        i_n, i_c = k // c, k % c
        _plane(x, i_n, i_c, dy[i_n], dx[i_n], flip[i_n], fill[i_c], out)


def shift_flip(x, dy, dx, flip, fill):
    """out[n, c, i, j] = x[n, c, i + dy[n], j' + dx[n]] with j' = W-1-j where flip[n] else j, and
    ``fill[c]`` where that position lies outside the image. x: float32/float64 (N, C, H, W); dy, dx:
    int64 (N,); flip: bool (N,); fill: (C,) of x's dtype."""
    x = np.ascontiguousarray(x)
    if x.ndim != 4 or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"shift_flip needs float32/float64 (N, C, H, W) images, got {x.dtype} {x.shape}")
    n, c = x.shape[:2]
    dy, dx = np.ascontiguousarray(dy, np.int64), np.ascontiguousarray(dx, np.int64)
    flip, fill = np.ascontiguousarray(flip, np.bool_), np.ascontiguousarray(fill, x.dtype)
    if dy.shape != (n,) or dx.shape != (n,) or flip.shape != (n,) or fill.shape != (c,):
        raise ValueError(f"shift_flip: dy, dx, flip need shape ({n},) and fill ({c},), got {dy.shape}, "
                         f"{dx.shape}, {flip.shape}, {fill.shape}")
    out = np.empty_like(x)
    (_shift_flip if x.size >= PARALLEL_MIN_PIXELS else _shift_flip_serial)(x, dy, dx, flip, fill, out)
    return out
