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
import operator

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
# The calling thread passes its tuples of arrays to the compiled driver (about 10 us in a training
# step) before the worker may take the GIL; with parallel_for's usual linger the worker found it
# taken and slept: the AdamW call took 85-88 us (median), with twice the linger 41-58 us (two
# alternated runs of 1,500 steps on the 2-core Zen 5; four times: 60-82 us).
UNBOX_LINGER = 2


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


class Groups:
    """A model's parameters ``ws`` and an optimizer's state arrays (``state``: lists shaped like
    ``ws``) as groups of SLOTS flat arrays with their element offsets, checked once so that a step
    only flattens its gradients (:meth:`flat_grads`); TypeError for mixed or non-float dtypes,
    ValueError for a shape mismatch or a non-contiguous array to update."""

    def __init__(self, ws, *state):
        kinds = (ws, *state)
        if not all(len(k) == len(ws) for k in kinds):
            raise ValueError("optimizer kernels need one gradient and one of each state array per parameter")
        arrays = [a for k in kinds for a in k]
        self.dtype = check_float("optimizer", *arrays)[0].dtype if ws else np.dtype(np.float32)
        self.shapes = [w.shape for w in ws]
        for same in zip(*kinds):
            _check_shapes(same)
        if not all(a.flags.c_contiguous for a in arrays):
            raise ValueError("optimizer kernels update C-contiguous parameter and state arrays in place")
        self.groups = []
        for g0 in range(0, len(ws), SLOTS):
            part = [[a.ravel() for a in k[g0:g0 + SLOTS]] for k in kinds]      # views: updated in place
            ends = [0]
            for a in part[0]:
                ends.append(ends[-1] + a.size)
            starts = np.array(ends + [ends[-1]] * (SLOTS + 1 - len(ends)), np.int64)
            self.groups.append(([_slots(k, self.dtype) for k in part], starts, ends[-1]))
        self._scalars: tuple = ((), ())
        self._padding = _slots((), self.dtype)

    def scalars(self, *values) -> tuple:
        """``values`` as scalars of the groups' dtype (the kernels compute in it), converted once
        while they stay the same."""
        if self._scalars[0] != values:
            t = self.dtype.type
            self._scalars = (values, tuple(t(v) for v in values))
        return self._scalars[1]

    def flat_grads(self, gs) -> list | None:
        """The gradients ``gs`` (one per parameter, shaped like it) as each group's flat SLOTS-tuple;
        None if one has another dtype than the groups. (A training step's serial part: the checks
        run as C-level maps, not a Python loop per gradient.)"""
        if list(map(_shape, gs)) != self.shapes:
            if len(gs) != len(self.shapes):
                raise ValueError("optimizer kernels need one gradient and one of each state array per parameter")
            for g, shape in zip(gs, self.shapes):
                _check_shapes((np.empty(shape, self.dtype), g))
        if not all(map(self.dtype.__eq__, map(_dtype, gs))):
            return None
        flat = list(map(_ravel, gs))                             # a copy only if one is not contiguous
        parts = [tuple(flat[i:i + SLOTS]) for i in range(0, len(flat), SLOTS)]
        return [part + self._padding[len(part):] for part in parts]

    def sgd(self, grads, lr, momentum, weight_decay):
        """sgd_step on these groups with ``grads`` (from :meth:`flat_grads`)."""
        scalars = self.scalars(lr, momentum, weight_decay)
        for (kinds, starts, total), g8 in zip(self.groups, grads):
            parallel_for(_sgd_params, total, kinds[0], g8, kinds[1], starts, *scalars, bool(weight_decay),
                         grain=ELEMENTS_PER_PART, linger=UNBOX_LINGER)

    def adamw(self, grads, betas, step_size, v_corr, eps, lr_wd, decay):
        """adamw_step on these groups (of the weights, ms and vs) with ``grads`` (from :meth:`flat_grads`)."""
        b1, b2 = betas
        b1, one_minus_b1, b2, one_minus_b2, eps, lr_wd = self.scalars(b1, 1 - b1, b2, 1 - b2, eps, lr_wd)
        t = self.dtype.type
        step_size, v_corr, decay = t(step_size), t(v_corr), bool(decay)
        for (kinds, starts, total), g8 in zip(self.groups, grads):
            parallel_for(_adamw_params, total, kinds[0], g8, kinds[1], kinds[2], starts, b1, one_minus_b1, b2,
                         one_minus_b2, step_size, v_corr, eps, lr_wd, decay, grain=ELEMENTS_PER_PART,
                         linger=UNBOX_LINGER)


_shape, _dtype, _ravel = operator.attrgetter("shape"), operator.attrgetter("dtype"), operator.methodcaller("ravel")


def _check_shapes(arrays) -> None:
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"optimizer kernels need gradients and state shaped like their parameter, got shapes "
                         f"{[a.shape for a in arrays]}")


def _slots(arrays, dtype) -> tuple:
    """``arrays`` padded with empty ones to exactly SLOTS: one compiled driver for any model."""
    return tuple(arrays) + (np.empty(0, dtype),) * (SLOTS - len(arrays))


def _checked_grads(groups, gs) -> list:
    grads = groups.flat_grads(gs)
    if grads is None:
        check_float("optimizer", np.empty(0, groups.dtype), *gs)           # raises: another dtype
    return grads


def sgd_step(ws, gs, velocities, lr, momentum, weight_decay):
    """In place, for each parameter w of ``ws`` (gradients ``gs``, ``velocities``, same shapes):
    velocity <- momentum * velocity + (g + weight_decay * w); w <- w - lr * velocity."""
    groups = Groups(ws, velocities)
    groups.sgd(_checked_grads(groups, gs), lr, momentum, weight_decay)


def adamw_step(ws, gs, ms, vs, betas, step_size, v_corr, eps, lr_wd, decay):
    """In place, AdamW's update of each parameter of ``ws`` (gradients ``gs``, moments ``ms`` and
    ``vs``, same shapes), the bias corrections folded into ``step_size`` (lr / (1 - b1^t)) and
    ``v_corr`` (1 / (1 - b2^t)); ``lr_wd`` = lr * weight_decay, added only if ``decay``."""
    groups = Groups(ws, ms, vs)
    groups.adamw(_checked_grads(groups, gs), betas, step_size, v_corr, eps, lr_wd, decay)
