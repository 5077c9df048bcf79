"""Tolerances and comparison helpers shared by the tests and the benchmarks (the one place they live).

AGREEMENT: how closely the Numba kernels must match the NumPy reference, per dtype. Both compute the
same sums in a different order, so the bound is relative to the size of the result.
GRADCHECK: how closely an analytic gradient must match central finite differences (float64 only).
"""
from __future__ import annotations

import numpy as np

AGREEMENT = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
}
GRADCHECK = dict(eps=1e-6, rtol=1e-5, atol=1e-7)


def agreement_tolerance(dtype):
    """(rtol, atol) for comparing a Numba result with the reference in ``dtype``."""
    tol = AGREEMENT[np.dtype(dtype)]
    return tol["rtol"], tol["atol"]


def assert_agree(actual, expected, what="result"):
    """Assert a kernel result matches the reference: same shape and dtype, and
    |actual - expected| <= atol + rtol * max|expected| elementwise (scale-aware, since summation
    order differs)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != reference {expected.shape}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != reference {expected.dtype}")
    rtol, atol = agreement_tolerance(expected.dtype)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = atol + rtol * max(scale, 1.0)
    worst = float(err.max()) if err.size else 0.0
    if not worst <= bound:
        idx = np.unravel_index(int(err.argmax()), err.shape)
        raise AssertionError(f"{what}: max abs error {worst:.3e} at {idx} exceeds {bound:.3e} "
                             f"(rtol={rtol}, atol={atol}, scale={scale:.3e})")


def numerical_gradient(f, x, eps=GRADCHECK["eps"]):
    """Central finite differences of the scalar function f() with respect to array x (in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def assert_gradient_close(analytic, numeric, what="gradient"):
    """Assert an analytic gradient matches finite differences within GRADCHECK tolerances."""
    np.testing.assert_allclose(analytic, numeric, rtol=GRADCHECK["rtol"], atol=GRADCHECK["atol"],
                               err_msg=what)
