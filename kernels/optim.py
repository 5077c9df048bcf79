"""Optimizer steps, Numba kernels: the update formulas of :mod:`fastcnn.optim` element by element,
in parallel, for all of a model's parameters in one call. Each element's update is the NumPy
formula's sequence of float operations (no fused multiply-adds: these kernels are compiled without
fastmath), so the results equal the NumPy optimizer's bit for bit, for any thread count.

One call covers every parameter because a model's parameters are small (the MNIST network's six
hold 50,000 numbers, most below a thread's worthwhile share) and each call from Python costs more
than the update of a small one: the elements of up to SLOTS parameters are numbered one after the
other and that range is split over the threads. Tuples of exactly SLOTS arrays (the last group
padded with empty ones) keep it to one compiled driver per optimizer and dtype, whatever the model.
"""
import numpy as np
from numba import njit

from fastcnn.kernels._common import check_float
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for

SLOTS = 8                    # parameters per driver call
# Fewer elements than this per thread: the split costs more than it saves. In the training step,
# where the update reads its arrays from memory, the MNIST network's 50,000 took as long in two
# parts as in one (0.079-0.095 ms against 0.081-0.096, four alternated pairs on the 2-core Zen 5),
# so it runs on both cores; with the arrays hot in cache one thread is faster below about 256K
# (64K: 23 against 48 us).
ELEMENTS_PER_PART = 1 << 14


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


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _sgd_params(lo, hi, ws, gs, vels, starts, lr, momentum, weight_decay, decay):
    """Elements lo .. hi of the parameters numbered one after the other (parameter p holds
    starts[p] .. starts[p + 1])."""
    for p in range(SLOTS):
        a, b = max(lo, starts[p]) - starts[p], min(hi, starts[p + 1]) - starts[p]
        if a < b:
            _sgd_step(a, b, ws[p], gs[p], vels[p], lr, momentum, weight_decay, decay)


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _adamw_params(lo, hi, ws, gs, ms, vs, starts, b1, one_minus_b1, b2, one_minus_b2, step_size, v_corr, eps,
                  lr_wd, decay):
    """As _sgd_params, with AdamW's update."""
    for p in range(SLOTS):
        a, b = max(lo, starts[p]) - starts[p], min(hi, starts[p + 1]) - starts[p]
        if a < b:
            _adamw_step(a, b, ws[p], gs[p], ms[p], vs[p], b1, one_minus_b1, b2, one_minus_b2, step_size, v_corr,
                        eps, lr_wd, decay)


def _groups(*kinds):
    """The parameters (``kinds``: the weights, then each same-shaped companion: gradients, state)
    as groups of SLOTS flat arrays per kind, with their element offsets; TypeError for mixed or
    non-float dtypes, ValueError for a shape mismatch or a non-contiguous array to update."""
    ws = kinds[0]
    if not all(len(k) == len(ws) for k in kinds):
        raise ValueError("optimizer kernels need one gradient and one of each state array per parameter")
    if not ws:
        return
    dtype = check_float("optimizer", *(a for k in kinds for a in k))[0].dtype
    for arrays in zip(*kinds):
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"optimizer kernels need gradients and state shaped like their parameter, got shapes "
                             f"{[a.shape for a in arrays]}")
    if not all(a.flags.c_contiguous for k in (kinds[0], *kinds[2:]) for a in k):
        raise ValueError("optimizer kernels update C-contiguous parameter and state arrays in place")
    empty = np.empty(0, dtype)
    for g0 in range(0, len(ws), SLOTS):
        part = [[a.ravel() for a in k[g0:g0 + SLOTS]] for k in kinds]   # views; a gradient may be copied
        ends = [0]
        for a in part[0]:
            ends.append(ends[-1] + a.size)
        starts = np.array(ends + [ends[-1]] * (SLOTS + 1 - len(ends)), np.int64)
        yield [tuple(k + [empty] * (SLOTS - len(k))) for k in part], starts


def sgd_step(ws, gs, velocities, lr, momentum, weight_decay):
    """In place, for each parameter w of ``ws`` (gradients ``gs``, ``velocities``, same shapes):
    velocity <- momentum * velocity + (g + weight_decay * w); w <- w - lr * velocity."""
    for (w8, g8, v8), starts in _groups(ws, gs, velocities):
        t = w8[0].dtype.type
        parallel_for(_sgd_params, int(starts[-1]), w8, g8, v8, starts, t(lr), t(momentum), t(weight_decay),
                     bool(weight_decay), grain=ELEMENTS_PER_PART)


def adamw_step(ws, gs, ms, vs, betas, step_size, v_corr, eps, lr_wd, decay):
    """In place, AdamW's update of each parameter of ``ws`` (gradients ``gs``, moments ``ms`` and
    ``vs``, same shapes), the bias corrections folded into ``step_size`` (lr / (1 - b1^t)) and
    ``v_corr`` (1 / (1 - b2^t)); ``lr_wd`` = lr * weight_decay, added only if ``decay``."""
    b1, b2 = betas
    for (w8, g8, m8, v8), starts in _groups(ws, gs, ms, vs):
        t = w8[0].dtype.type
        parallel_for(_adamw_params, int(starts[-1]), w8, g8, m8, v8, starts, t(b1), t(1 - b1), t(b2), t(1 - b2),
                     t(step_size), t(v_corr), t(eps), t(lr_wd), bool(decay), grain=ELEMENTS_PER_PART)
