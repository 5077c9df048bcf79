"""Optimizer steps, Numba kernels: the update formulas of :mod:`fastcnn.optim` element by element,
in parallel. Each element's update is the NumPy formula's sequence of float operations (no fused
multiply-adds: these kernels are compiled without fastmath), so the results equal the NumPy
optimizer's bit for bit, for any thread count."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.activation import ELEMENTS_PER_PART


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _sgd_step(lo, hi, w, g, vel, lr, momentum, weight_decay, decay):
    w, g, vel = w[lo:hi], g[lo:hi], vel[lo:hi]           # indexed from 0: no negative-index checks
    for i in range(w.shape[0]):
        gi = g[i] + weight_decay * w[i] if decay else g[i]
        vi = vel[i] * momentum
        vi = vi + gi
        vel[i] = vi
        w[i] = w[i] - lr * vi


# error_model="numpy": x / 0 gives inf as in the NumPy formulas, instead of a ZeroDivisionError
# check per element, which kept LLVM from vectorising the loop (measured 56 against 4.6 us for
# 31,360 elements; the same bits: IEEE division and square root are exact either way).
@njit(nogil=True, boundscheck=False, error_model="numpy", cache=CACHE)
def _adamw_step(lo, hi, w, g, m, v, b1, one_minus_b1, b2, one_minus_b2, step_size, v_corr, eps, lr_wd, decay):
    w, g, m, v = w[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]   # indexed from 0: no negative-index checks
    for i in range(w.shape[0]):
        gi = g[i]
        mi = m[i] * b1
        mi = mi + one_minus_b1 * gi
        vi = v[i] * b2
        vi = vi + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        u = mi * step_size / (np.sqrt(vi * v_corr) + eps)
        if decay:
            u = u + lr_wd * w[i]
        w[i] = w[i] - u


def _flat(*arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("optimizer kernels update C-contiguous parameter and state arrays in place")
    return [a.reshape(-1) for a in check_float("optimizer", *arrays)]


def sgd_step(w, g, velocity, lr, momentum, weight_decay):
    """In place: velocity <- momentum * velocity + (g + weight_decay * w); w <- w - lr * velocity."""
    t = w.dtype.type
    parallel_for(_sgd_step, w.size, *_flat(w, np.ascontiguousarray(g), velocity), t(lr), t(momentum), t(weight_decay),
                 bool(weight_decay), grain=ELEMENTS_PER_PART)


def adamw_step(w, g, m, v, betas, step_size, v_corr, eps, lr_wd, decay):
    """In place, AdamW's update with the bias corrections folded into ``step_size`` (lr / (1 -
    b1^t)) and ``v_corr`` (1 / (1 - b2^t)); ``lr_wd`` = lr * weight_decay, added only if ``decay``."""
    t = w.dtype.type
    b1, b2 = betas
    parallel_for(_adamw_step, w.size, *_flat(w, np.ascontiguousarray(g), m, v), t(b1), t(1 - b1), t(b2), t(1 - b2),
                 t(step_size), t(v_corr), t(eps), t(lr_wd), bool(decay), grain=ELEMENTS_PER_PART)
