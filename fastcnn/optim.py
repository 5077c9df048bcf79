"""Optimizers. Both update the model's parameter arrays in place and keep their state in plain
arrays (``state_dict`` / ``load_state_dict``) so it can be checkpointed.

SGD with momentum (PyTorch's form: lr scales the velocity; weight decay, if any, is added to the
gradient):
    v <- mu * v + (g + wd * W)
    W <- W - lr * v
On the Numba backend one parallel kernel call (fastcnn.kernels.optim) updates every parameter with
these same float operations per element: the same bits, for any thread count.

AdamW (Loshchilov & Hutter; bias-corrected moments, decoupled weight decay):
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g^2
    m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
    W <- W - lr * m_hat / (sqrt(v_hat) + eps) - lr * wd * W
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:                     # the model imports the optimizers' base class for its hints
    from fastcnn.model import Sequential


def _is_number(value: object) -> bool:
    """A real int/float, Python or NumPy (a float32 from a schedule array counts), not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    # Type first: comparing a str/None with 0 would raise a TypeError that does not name the argument.
    ok = _is_number(value) and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return float(value)


def _weights_and_grads(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(parameter, gradient) of each parameter, in named_parameters' order (without the names, which
    only a new set of parameters needs)."""
    pairs = getattr(model, "weights_and_grads", None)
    return pairs() if pairs is not None else [(w, g) for _, w, g in model.named_parameters()]


class Optimizer:
    """Holds the (param, grad-owner) pairs of a model; ``step()`` reads each layer's current grads."""

    def __init__(self, model: Sequential, lr: float) -> None:
        self.model = model
        self.lr = _check_positive("lr", lr)
        self.t = 0

    def _pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        return list(self.model.named_parameters())

    def __getstate__(self) -> dict:
        # The kernels' groups hold views of the parameters and state; a copy's views would be of
        # other arrays than the copy's own. A copy builds its groups again on its first step.
        state = dict(self.__dict__)
        state.pop("_groups", None)
        return state

    def step(self) -> None:
        self.t += 1
        if not self._kernel_step():
            for name, w, g in self._pairs():
                self._update(name, w, g)

    def _kernel_step(self) -> bool:
        """Update every parameter in one parallel kernel call per SLOTS parameters
        (:mod:`fastcnn.kernels.optim`) where the model runs on Numba and the kernels can take them:
        one float dtype for all parameters, gradients and state, C-contiguous parameters and state
        (updated in place); else False, and the NumPy formulas below (the same bits, for any
        thread count) update each parameter. The kernels' groups of parameters and state are built
        once and kept while the same arrays are in place: the step before the first kernel call is
        Python on one thread, the part of a step that cannot use more cores, so it only checks
        identities and flattens the gradients."""
        if getattr(self.model, "backend_name", None) != "numba":
            return False
        pairs = _weights_and_grads(self.model)
        ws, state = [w for w, _ in pairs], self._state_values()
        cached = self.__dict__.get("_groups")
        if (cached is None or len(ws) != len(cached[0]) or len(state) != len(cached[1])
                or not all(map(operator.is_, ws, cached[0])) or not all(map(operator.is_, state, cached[1]))):
            groups = self._build_groups()
            if groups is None:
                return False
            cached = self._groups = (ws, state, groups)
        groups = cached[2]
        grads = groups.flat_grads([g for _, g in pairs])
        if grads is None:
            return False
        self._update_all(groups, grads)
        return True

    def _build_groups(self) -> Any:
        pairs = self._pairs()
        if not pairs:
            return None
        ws, state = [w for _, w, _ in pairs], self._state_lists([n for n, _, _ in pairs])
        dtype = ws[0].dtype
        if not (dtype in (np.float32, np.float64) and all(w.dtype == dtype and w.flags.c_contiguous for w in ws)
                and all(a.dtype == dtype and a.flags.c_contiguous for k in state for a in k)):
            return None
        from fastcnn.kernels.optim import Groups
        return Groups(ws, *state)

    def _state_values(self) -> list[np.ndarray]:
        """Every state array, in a fixed order (to see that none was replaced)."""
        raise NotImplementedError

    def _state_lists(self, names: list[str]) -> list[list[np.ndarray]]:
        """Each kind of state array, in the order of the parameter ``names``."""
        raise NotImplementedError

    def _update_all(self, groups: Any, grads: list) -> None:
        raise NotImplementedError

    def _update(self, name: str, w: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with (heavy-ball) momentum and optional L2 weight decay."""

    def __init__(self, model: Sequential, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(model, lr)
        self.momentum = _check_positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {momentum!r}")
        self.weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)
        self.velocity = {name: np.zeros_like(w) for name, w, _ in self._pairs()}

    def _state_values(self) -> list[np.ndarray]:
        return list(self.velocity.values())

    def _state_lists(self, names: list[str]) -> list[list[np.ndarray]]:
        return [[self.velocity[n] for n in names]]

    def _update_all(self, groups: Any, grads: list) -> None:
        groups.sgd(grads, self.lr, self.momentum, self.weight_decay)

    def _update(self, name: str, w: np.ndarray, g: np.ndarray) -> None:
        v = self.velocity[name]
        if self.weight_decay:
            g = g + w.dtype.type(self.weight_decay) * w
        v *= w.dtype.type(self.momentum)
        v += g
        w -= w.dtype.type(self.lr) * v

    def state_dict(self) -> dict:
        return {"t": self.t, **{f"velocity/{k}": v for k, v in self.velocity.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        for k in self.velocity:
            self.velocity[k][...] = state[f"velocity/{k}"]


class AdamW(Optimizer):
    """Adam with bias correction and decoupled weight decay."""

    def __init__(self, model: Sequential, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(model, lr)
        pair = tuple(betas) if isinstance(betas, (tuple, list, np.ndarray)) else ()
        if len(pair) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in pair):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        b1, b2 = pair
        self.betas = (float(b1), float(b2))
        self.eps = _check_positive("eps", eps)
        self.weight_decay = _check_positive("weight_decay", weight_decay, allow_zero=True)
        self.m = {name: np.zeros_like(w) for name, w, _ in self._pairs()}
        self.v = {name: np.zeros_like(w) for name, w, _ in self._pairs()}

    def _corrections(self) -> tuple[float, float]:
        """(step_size, v_corr): lr * m_hat = step_size * m and v_hat = v_corr * v at step t."""
        b1, b2 = self.betas
        return self.lr / (1 - b1 ** self.t), 1.0 / (1 - b2 ** self.t)

    def _state_values(self) -> list[np.ndarray]:
        return [*self.m.values(), *self.v.values()]

    def _state_lists(self, names: list[str]) -> list[list[np.ndarray]]:
        return [[self.m[n] for n in names], [self.v[n] for n in names]]

    def _update_all(self, groups: Any, grads: list) -> None:
        step_size, v_corr = self._corrections()
        groups.adamw(grads, self.betas, step_size, v_corr, self.eps, self.lr * self.weight_decay, self.weight_decay)

    def _update(self, name: str, w: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        m, v = self.m[name], self.v[name]
        step_size, v_corr = self._corrections()
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        update = m * w.dtype.type(step_size) / (np.sqrt(v * w.dtype.type(v_corr)) + w.dtype.type(self.eps))
        if self.weight_decay:
            update += w.dtype.type(self.lr * self.weight_decay) * w
        w -= update

    def state_dict(self) -> dict:
        state: dict[str, int | np.ndarray] = {"t": self.t}
        state.update({f"m/{k}": a for k, a in self.m.items()})
        state.update({f"v/{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        for k in self.m:
            self.m[k][...] = state[f"m/{k}"]
            self.v[k][...] = state[f"v/{k}"]
