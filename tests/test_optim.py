"""Optimizer tests: SGD (momentum, weight decay) and AdamW against their update rules written out
independently here, step by step; AdamW's bias correction and decoupled weight decay; the
state_dict / load_state_dict round trip; argument validation.

Every tolerance comes from :mod:`fastcnn.testing`; none is written here.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from fastcnn.layers import Flatten, Linear
from fastcnn.model import Sequential
from fastcnn.optim import SGD, AdamW
from fastcnn.testing import assert_formula_close

STEPS = 4


class FakeModel:
    """The optimizer's view of a model: named_parameters() -> (name, param, grad) triples. The
    gradients are replaced (not updated in place) each step, as the layers do."""

    def __init__(self, rng, dtype=np.float64):
        self.params = {"a.weight": rng.standard_normal((3, 4)).astype(dtype),
                       "a.bias": rng.standard_normal(3).astype(dtype),
                       "b.weight": rng.standard_normal((2, 1, 2, 2)).astype(dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def named_parameters(self):
        for k, w in self.params.items():
            yield k, w, self.grads[k]

    def set_grads(self, rng, scale=1.0):
        for k, w in self.params.items():
            self.grads[k] = (scale * rng.standard_normal(w.shape)).astype(w.dtype)

    def snapshot(self):
        return {k: v.copy() for k, v in self.params.items()}


def _grad_sequence(seed, model, steps=STEPS, scale=1.0):
    rng = np.random.default_rng(seed)
    seq = []
    for _ in range(steps):
        model.set_grads(rng, scale)
        seq.append({k: g.copy() for k, g in model.grads.items()})
    return seq


# -------------------------------------------------------------------- the formulas, written out

def sgd_reference(w0, grads, lr, momentum, wd):
    """v <- mu v + (g + wd W);  W <- W - lr_t v   (weight decay added to the gradient; the velocity
    holds gradients only, so a learning rate that changes between steps scales just the current
    step). ``lr``: one number, or one per step."""
    lrs = [lr] * len(grads) if np.isscalar(lr) else list(lr)
    w, v, out = w0.astype(np.float64), np.zeros(w0.shape), []
    for g, lr_t in zip(grads, lrs, strict=True):
        v = momentum * v + (g + wd * w)
        w = w - lr_t * v
        out.append(w)
    return out


def adamw_reference(w0, grads, lr, b1, b2, eps, wd):
    """Bias-corrected Adam moments; decay decoupled from the gradient, applied to the old W."""
    w, m, v, out = w0.astype(np.float64), np.zeros(w0.shape), np.zeros(w0.shape), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps) - lr * wd * w
        out.append(w)
    return out


# ----------------------------------------------------------------------------------------- SGD

@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_sgd_matches_formula(momentum, wd):
    model = FakeModel(np.random.default_rng(1))
    w0 = model.snapshot()
    opt = SGD(model, lr=0.1, momentum=momentum, weight_decay=wd)
    grads = _grad_sequence(2, FakeModel(np.random.default_rng(1)))
    expected = {k: sgd_reference(w0[k], [g[k] for g in grads], 0.1, momentum, wd) for k in w0}
    for t, g in enumerate(grads):
        model.grads = {k: v.copy() for k, v in g.items()}
        opt.step()
        assert opt.t == t + 1
        for k in w0:
            assert_formula_close(model.params[k], expected[k][t], f"SGD step {t + 1} {k}")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_formula_while_the_learning_rate_changes(momentum):
    """fastcnn-train sets ``opt.lr`` before every step (cosine schedule): the documented update
    W <- W - lr_t v must use the current step's rate on the whole velocity. The rates differ
    tenfold so that e.g. v <- mu v + lr g (rate folded into the velocity) cannot pass."""
    lrs = [0.5, 0.05, 0.3, 0.01, 0.2, 0.002]
    model = FakeModel(np.random.default_rng(7))
    w0 = model.snapshot()
    opt = SGD(model, lr=lrs[0], momentum=momentum, weight_decay=0.05)
    grads = _grad_sequence(8, FakeModel(np.random.default_rng(7)), steps=len(lrs))
    expected = {k: sgd_reference(w0[k], [g[k] for g in grads], lrs, momentum, 0.05) for k in w0}
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True)):
        opt.lr = lr
        model.grads = {k: v.copy() for k, v in g.items()}
        opt.step()
        for k in w0:
            assert_formula_close(model.params[k], expected[k][t], f"SGD step {t + 1} lr {lr} {k}")


def test_sgd_momentum_accumulates_and_decay_is_coupled():
    """Constant gradient g with mu: velocity after t steps is g (1 - mu^t) / (1 - mu); with g = 0
    and weight decay wd, W follows W <- W - lr (mu v + wd W) (decay goes through the momentum)."""
    model = FakeModel(np.random.default_rng(3))
    g = {k: np.ones_like(v) for k, v in model.params.items()}
    w0 = model.snapshot()
    opt = SGD(model, lr=0.01, momentum=0.5)
    total = 0.0
    for t in range(1, STEPS + 1):
        model.grads = g
        opt.step()
        total += (1 - 0.5 ** t) / (1 - 0.5)
        for k in w0:
            assert_formula_close(model.params[k], w0[k] - 0.01 * total, f"SGD const grad t={t} {k}")

    model = FakeModel(np.random.default_rng(4))
    w0 = model.snapshot()
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.2)
    zero = {k: np.zeros_like(v) for k, v in model.params.items()}
    expected = {k: sgd_reference(w0[k], [zero[k]] * STEPS, 0.1, 0.9, 0.2) for k in w0}
    for t in range(STEPS):
        model.grads = zero
        opt.step()
        for k in w0:
            assert_formula_close(model.params[k], expected[k][t], f"SGD decay only t={t + 1} {k}")
    assert_formula_close(model.params["a.bias"][0] / w0["a.bias"][0],
                         expected["a.bias"][-1][0] / w0["a.bias"][0], "decay factor")


def test_sgd_keeps_float32():
    model = FakeModel(np.random.default_rng(5), dtype=np.float32)
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.01)
    for g in _grad_sequence(6, FakeModel(np.random.default_rng(5), dtype=np.float32)):
        model.grads = g
        opt.step()
    assert all(w.dtype == np.float32 for w in model.params.values())
    assert all(v.dtype == np.float32 for v in opt.velocity.values())


# --------------------------------------------------------------------------------------- AdamW

@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adamw_matches_formula(wd, betas):
    lr, eps = 0.01, 1e-8
    model = FakeModel(np.random.default_rng(11))
    w0 = model.snapshot()
    opt = AdamW(model, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    grads = _grad_sequence(12, FakeModel(np.random.default_rng(11)), steps=5)
    expected = {k: adamw_reference(w0[k], [g[k] for g in grads], lr, *betas, eps, wd) for k in w0}
    for t, g in enumerate(grads):
        model.grads = {k: v.copy() for k, v in g.items()}
        opt.step()
        for k in w0:
            assert_formula_close(model.params[k], expected[k][t], f"AdamW step {t + 1} {k}")


def test_adamw_bias_correction_first_step():
    """t = 1, wd = 0: m_hat = g and v_hat = g^2, so each element moves by lr * g / (|g| + eps),
    i.e. by lr (sign opposite to g) for a large gradient; without bias correction it would move
    by lr (1 - b1) / sqrt(1 - b2) (~3.16 lr with the default betas)."""
    lr = 1e-3
    model = FakeModel(np.random.default_rng(21))
    w0 = model.snapshot()
    opt = AdamW(model, lr=lr, weight_decay=0.0)                      # default betas, eps 1e-8
    model.set_grads(np.random.default_rng(22), scale=1e6)            # eps / |g| far below FORMULA
    grads = {k: g.copy() for k, g in model.grads.items()}
    opt.step()
    for k in w0:
        assert_formula_close(w0[k] - model.params[k], lr * np.sign(grads[k]), f"first step {k}")
    assert not math.isclose(lr * (1 - 0.9) / math.sqrt(1 - 0.999), lr, rel_tol=0.5)


def test_adamw_decoupled_weight_decay_with_zero_gradient():
    """g = 0: m = v = 0, so the Adam part is 0 / (0 + eps) = 0 and W <- W - lr wd W exactly,
    i.e. W_t = W_0 (1 - lr wd)^t, independent of the moments."""
    lr, wd = 0.01, 0.1
    model = FakeModel(np.random.default_rng(31))
    w0 = model.snapshot()
    opt = AdamW(model, lr=lr, weight_decay=wd)
    for t in range(1, STEPS + 1):
        model.grads = {k: np.zeros_like(v) for k, v in model.params.items()}
        opt.step()
        for k in w0:
            assert_formula_close(model.params[k], w0[k] * (1 - lr * wd) ** t, f"decay t={t} {k}")
            assert not opt.m[k].any() and not opt.v[k].any()


def test_adamw_decay_is_not_scaled_by_the_gradient():
    """Decoupled: two params with equal W but gradients 1e3x apart shrink by the same lr*wd*W
    beyond their (equal, sign-only at t=1) Adam step; L2-in-gradient Adam would not."""
    lr, wd = 0.01, 0.5
    model = FakeModel(np.random.default_rng(41))
    for k in model.params:
        model.params[k][...] = 2.0
    opt = AdamW(model, lr=lr, weight_decay=wd)
    model.grads = {k: np.full_like(v, 1.0 if k == "a.bias" else 1e3) for k, v in model.params.items()}
    opt.step()
    for k, w in model.params.items():
        g = 1.0 if k == "a.bias" else 1e3
        assert_formula_close(w, 2.0 - lr * g / (g + 1e-8) - lr * wd * 2.0, f"decoupled {k}")


def test_adamw_keeps_float32():
    model = FakeModel(np.random.default_rng(7), dtype=np.float32)
    opt = AdamW(model, lr=1e-3)
    for g in _grad_sequence(8, FakeModel(np.random.default_rng(7), dtype=np.float32)):
        model.grads = g
        opt.step()
    assert all(w.dtype == np.float32 for w in model.params.values())
    assert all(a.dtype == np.float32 for a in (*opt.m.values(), *opt.v.values()))


# ------------------------------------------------------------------- with a real Sequential model

@pytest.mark.parametrize("make", [lambda m: SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01),
                                  lambda m: AdamW(m, lr=0.01, weight_decay=0.1)], ids=["sgd", "adamw"])
def test_optimizers_update_a_real_sequential(make):
    """Grads set by hand on a Linear inside a Sequential: the live parameter arrays are updated in
    place by the formula, and each step reads the layer's current (replaced) grads."""
    rng = np.random.default_rng(51)
    model = Sequential([Flatten(), Linear(6, 3, rng=rng, dtype=np.float64)], backend="numpy")
    linear = model.layers[1]
    ids = {k: id(v) for k, v in linear.params.items()}
    w0 = {k: v.copy() for k, v in linear.params.items()}
    opt = make(model)
    grads = [{k: rng.standard_normal(v.shape) for k, v in w0.items()} for _ in range(STEPS)]
    if isinstance(opt, SGD):
        expected = {k: sgd_reference(w0[k], [g[k] for g in grads], 0.05, 0.9, 0.01) for k in w0}
    else:
        expected = {k: adamw_reference(w0[k], [g[k] for g in grads], 0.01, 0.9, 0.999, 1e-8, 0.1)
                    for k in w0}
    for t, g in enumerate(grads):
        linear.grads = {k: v.copy() for k, v in g.items()}
        opt.step()
        for k in w0:
            assert id(linear.params[k]) == ids[k]
            assert_formula_close(linear.params[k], expected[k][t], f"step {t + 1} 1.{k}")


# ------------------------------------------------------------------------- state_dict round trip

@pytest.mark.parametrize("make", [lambda m: SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01),
                                  lambda m: AdamW(m, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)],
                         ids=["sgd", "adamw"])
def test_state_dict_round_trip_gives_identical_steps(make):
    """Step twice, save (a deep copy, as a checkpoint would), restore into a fresh optimizer over
    a copy of the model: the next steps are bit-identical. A fresh optimizer without the state
    diverges (so the state really matters)."""
    model = FakeModel(np.random.default_rng(61))
    opt = make(model)
    grads = _grad_sequence(62, FakeModel(np.random.default_rng(61)), steps=5)
    for g in grads[:2]:
        model.grads = {k: v.copy() for k, v in g.items()}
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    assert state["t"] == 2

    restored_model, fresh_model = copy.deepcopy(model), copy.deepcopy(model)
    restored, fresh = make(restored_model), make(fresh_model)
    restored.load_state_dict(state)
    assert restored.t == 2
    for g in grads[2:]:
        for m, o in ((model, opt), (restored_model, restored), (fresh_model, fresh)):
            m.grads = {k: v.copy() for k, v in g.items()}
            o.step()
    for k in model.params:
        np.testing.assert_array_equal(restored_model.params[k], model.params[k], err_msg=k)
    assert any(not np.array_equal(fresh_model.params[k], model.params[k]) for k in model.params)
    final = opt.state_dict()
    for key, value in restored.state_dict().items():
        np.testing.assert_array_equal(value, final[key], err_msg=key)


# -------------------------------------------------------------------------- argument validation

def _model():
    return FakeModel(np.random.default_rng(0))


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=-0.1), "lr"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(lr=float("inf")), "lr"), (dict(lr="0.1"), "lr"), (dict(lr=None), "lr"), (dict(lr=True), "lr"),
    (dict(momentum=1.0), "momentum"), (dict(momentum=1.5), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1e-4), "weight_decay"),
])
def test_sgd_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SGD(_model(), **kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(lr=-1e-3), "lr"), (dict(lr=0), "lr"), (dict(lr="1e-3"), "lr"),
    (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(-0.1, 0.999)), "betas"), (dict(betas=(0.9, -0.5)), "betas"),
    (dict(betas=(float("nan"), 0.999)), "betas"), (dict(betas=(0.9,)), "betas"),
    (dict(betas=(0.9, 0.99, 0.9)), "betas"), (dict(betas=0.9), "betas"),
    (dict(eps=0.0), "eps"), (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.01), "weight_decay"),
])
def test_adamw_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdamW(_model(), **kwargs)


def test_numpy_scalar_hyperparameters_are_accepted():
    """Hyperparameters read from numpy (e.g. a float32 schedule array) are ordinary numbers."""
    opt = AdamW(_model(), lr=np.float32(1e-3), betas=(np.float64(0.9), np.float32(0.999)),
                eps=np.float64(1e-8), weight_decay=np.float32(0.0))
    assert isinstance(opt.lr, float)
    sgd = SGD(_model(), lr=np.float32(0.1), momentum=np.float16(0.5), weight_decay=np.int64(0))
    assert isinstance(sgd.momentum, float)
