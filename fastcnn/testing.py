"""Tolerances and comparison helpers shared by the tests and the benchmarks (the one place they live).

AGREEMENT: how closely the Numba kernels must match the NumPy reference, per dtype. Both compute the
same sums in a different order, so the bound is relative to the size of the result.
GRADCHECK: how closely an analytic gradient must match central finite differences (float64 only).
FORMULA: how closely a float64 result must match its formula written out independently in a test.
STAT_SIGMAS: how many standard deviations a seeded statistical check (dropout rate) allows.
TRAINING: how closely the per-step losses of the same model, trained from the same seed on the same
batches, must agree between the two backends (relative).
LONG_FLOAT32: how closely a float32 result of a long chain of operations must match its exact value.
EXPORT: how closely an exported model's outputs in another runtime (ONNX Runtime) must match fastcnn's.
RESIZE: how closely fastcnn.images.resize (Pillow's bilinear filter on float32 pixels) must match the
separable triangle filter written out in float64.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

AGREEMENT = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
}
GRADCHECK = dict(eps=1e-6, rtol=1e-5, atol=1e-7)

# FORMULA: how closely a float64 result must match the same closed-form formula written out
# independently in a test (optimizer steps, BatchNorm running statistics, dropout scaling). Only
# the order of a handful of float64 operations differs, so a few ulps of the result's scale (~1).
FORMULA = dict(rtol=1e-12, atol=1e-14)

# STAT_SIGMAS: statistical checks (e.g. the fraction of elements dropout zeroes) accept this many
# binomial standard deviations. The tests are seeded, so this only guards against choosing an
# unlucky seed: a two-sided 6-sigma miss has probability ~2e-9.
STAT_SIGMAS = 6.0

# Training agreement (tests/test_kernels.py: mnist_cnn, AdamW lr=1e-3, 3 real MNIST batches of 64).
# The op-level rounding differences pass through AdamW, whose first steps are ~lr * g / (|g| + eps):
# a gradient entry near zero moves by a relative amount far above its own error, so the losses of
# later steps differ by more than one op's rounding. The bounds sit well above the differences
# observed over several batch windows in each dtype, and far below a real disagreement.
TRAINING = {
    np.dtype(np.float64): dict(rtol=1e-10),
    np.dtype(np.float32): dict(rtol=1e-5),
}


# LONG_FLOAT32: a float32 result of thousands to millions of dependent operations (a 2048-term
# matmul row, the FMA peak kernel's recurrence towards its fixed point) against its exact value
# in float64: rounding accumulates far beyond one op's, yet a skipped or altered step is off by
# orders of magnitude more. The benchmarks check their own kernels with it before timing them.
LONG_FLOAT32 = dict(rtol=1e-4)

# RESIZE: Pillow resamples 32-bit float images: pixels in [0, 1] carry float32's rounding (6e-8
# relative) through a weighted sum of a few to a few hundred terms, with weights computed in double.
# Measured: within 1e-7 of the float64 triangle filter; a wrong filter width or centre is off by
# more than 1e-2.
RESIZE = dict(rtol=0, atol=1e-6)


# EXPORT: an exported network run by ONNX Runtime against fastcnn's evaluation forward, both in float32.
# Two independent implementations (their own convolution algorithms and summation orders) through a
# chain of up to a dozen layers: the differences observed are ~1e-6 of the largest logit, and the
# bound, relative to that largest logit, sits 100x above them. A wrong layout, padding, stride or
# BatchNorm statistic moves logits by a sizeable fraction of their scale.
EXPORT = dict(rtol=1e-4)


def assert_export_agree(actual: np.ndarray, expected: np.ndarray, what: str = "exported output") -> None:
    """Assert an exported model's output matches fastcnn's: same shape, and |actual - expected| <=
    EXPORT rtol * max|expected| everywhere."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != fastcnn's {expected.shape}")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    worst = float(np.max(np.abs(actual.astype(np.float64) - expected))) if expected.size else 0.0
    bound = EXPORT["rtol"] * scale
    if not worst <= bound:
        raise AssertionError(f"{what}: max abs error {worst:.3e} exceeds {bound:.3e} (rtol={EXPORT['rtol']}, "
                             f"scale={scale:.3e})")


def agreement_tolerance(dtype: npt.DTypeLike) -> tuple[float, float]:
    """(rtol, atol) for comparing a Numba result with the reference in ``dtype``."""
    tol = AGREEMENT[np.dtype(dtype)]
    return tol["rtol"], tol["atol"]


def training_tolerance(dtype: npt.DTypeLike) -> float:
    """Relative tolerance for comparing the two backends' training losses in ``dtype``."""
    return TRAINING[np.dtype(dtype)]["rtol"]


def assert_agree(actual: np.ndarray, expected: np.ndarray, what: str = "result") -> None:
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


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = GRADCHECK["eps"]) -> np.ndarray:
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


def assert_formula_close(actual: np.ndarray | float, expected: np.ndarray | float, what: str = "result") -> None:
    """Assert a float64 result matches an independent evaluation of its formula (FORMULA)."""
    np.testing.assert_allclose(actual, expected, rtol=FORMULA["rtol"], atol=FORMULA["atol"],
                               err_msg=what)


def assert_gradient_close(analytic: np.ndarray, numeric: np.ndarray, what: str = "gradient") -> None:
    """Assert an analytic gradient matches finite differences within GRADCHECK tolerances."""
    np.testing.assert_allclose(analytic, numeric, rtol=GRADCHECK["rtol"], atol=GRADCHECK["atol"],
                               err_msg=what)


def real_mnist_dir(repo_root: str | os.PathLike) -> Path:
    """The folder of real MNIST IDX files for the test and benchmark suites: ``$FASTCNN_DATA_DIR``
    when it names an existing folder, else fastcnn's cache when it holds MNIST (a download, or files
    once given with ``--data-dir``), else ``<repo_root>/../shared/data/mnist``. Skips the calling
    test (``pytest.skip``, with the fix in one line) when none of them exists."""
    env = os.environ.get("FASTCNN_DATA_DIR")
    if env and Path(env).expanduser().is_dir():
        return Path(env).expanduser()
    from fastcnn.data import default_cache_dir, find_data_dir
    cache = default_cache_dir("mnist")
    if find_data_dir("mnist", cache) is not None:
        return cache
    shared = Path(repo_root).resolve().parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    import pytest  # lazy: pytest is a test dependency, never needed by the package at run time
    pytest.skip(f"real MNIST not available: run fastcnn-train once (it downloads MNIST into {cache}) or set "
                f"FASTCNN_DATA_DIR to a folder with the IDX files ({shared} does not exist either)")
