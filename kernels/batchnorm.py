"""BatchNorm2D's training pass, Numba kernels: the formulas of :class:`fastcnn.layers.BatchNorm2D`
per channel, the channels split over the threads. Each channel's sums run in one fixed order (in
float64) whichever thread computes it, so results are bit-identical for any thread count; they
differ from NumPy's pairwise float32 sums in the last bits, within the agreement tolerances."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE, FASTMATH
from fastcnn.kernels._parallel import parallel_for


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _forward_channels(lo, hi, x, g, b, eps, y, x_hat, mean, var, inv_std):
    """Channels lo .. hi: batch mean and biased variance (two passes), x_hat, y = x_hat * g + b."""
    N, C, H, W = x.shape
    m = N * H * W
    for c in range(lo, hi):
        s = 0.0
        for n in range(N):
            xc = x[n, c].reshape(H * W)
            for i in range(H * W):
                s += xc[i]
        mu = s / m
        q = 0.0
        for n in range(N):
            xc = x[n, c].reshape(H * W)
            for i in range(H * W):
                d = xc[i] - mu
                q += d * d
        v = q / m
        mean[c], var[c] = mu, v
        inv = x.dtype.type(1.0 / np.sqrt(v + eps))
        inv_std[c] = inv
        mu_t, gc, bc = x.dtype.type(mu), g[c], b[c]
        for n in range(N):
            xc = x[n, c].reshape(H * W)
            hc = x_hat[n, c].reshape(H * W)
            yc = y[n, c].reshape(H * W)
            for i in range(H * W):
                h = (xc[i] - mu_t) * inv
                hc[i] = h
                yc[i] = h * gc + bc


@njit(nogil=True, fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _backward_channels(lo, hi, dy, x_hat, g, inv_std, dx, dg, db):
    """Channels lo .. hi: dg, db and dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) *
    inv_std with dx_hat = dy * g, means over (N, H, W)."""
    N, C, H, W = dy.shape
    m = N * H * W
    for c in range(lo, hi):
        sd, sdx = 0.0, 0.0
        for n in range(N):
            dc = dy[n, c].reshape(H * W)
            hc = x_hat[n, c].reshape(H * W)
            for i in range(H * W):
                sd += dc[i]
                sdx += dc[i] * hc[i]
        db[c], dg[c] = sd, sdx
        gc = g[c]
        mean_d = x_hat.dtype.type(gc * sd / m)
        mean_dx = x_hat.dtype.type(gc * sdx / m)
        inv = inv_std[c]
        for n in range(N):
            dc = dy[n, c].reshape(H * W)
            hc = x_hat[n, c].reshape(H * W)
            out = dx[n, c].reshape(H * W)
            for i in range(H * W):
                out[i] = (dc[i] * gc - mean_d - hc[i] * mean_dx) * inv


def batchnorm_train_forward(x, g, b, eps):
    """x (N, C, H, W), weight g and bias b (C,) -> (y, x_hat, mean, var, inv_std): mean and biased
    variance per channel (float64), inv_std = 1 / sqrt(var + eps) in x's dtype."""
    x, g, b = (np.ascontiguousarray(a) for a in check_float("batchnorm", x, g, b))
    C = x.shape[1]
    y, x_hat = np.empty_like(x), np.empty_like(x)
    mean, var, inv_std = np.empty(C), np.empty(C), np.empty(C, x.dtype)
    parallel_for(_forward_channels, C, x, g, b, float(eps), y, x_hat, mean, var, inv_std)
    return y, x_hat, mean, var, inv_std


def batchnorm_backward(dy, x_hat, g, inv_std):
    """dy, the forward's x_hat and inv_std, weight g -> (dx, dg, db)."""
    dy, x_hat, g, inv_std = (np.ascontiguousarray(a) for a in check_float("batchnorm", dy, x_hat, g, inv_std))
    C = dy.shape[1]
    dx = np.empty_like(dy)
    dg, db = np.empty(C, dy.dtype), np.empty(C, dy.dtype)
    parallel_for(_backward_channels, C, dy, x_hat, g, inv_std, dx, dg, db)
    return dx, dg, db
