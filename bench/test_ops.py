"""Per-op benchmarks, float32: every op of the MNIST network at its training shapes (batch 128;
conv1, pool1, conv2, pool2, and conv1+pool1, the fused first layer as the model runs it) and the
general shape set (LeNet-5 5x5, 3->64 at 32x32, 64->128 at 16x16, stride-2 3x3, 1x1, 7x7 stride-2
stem; forward, backward-weight, backward-input+weight each).

One benchmark per op and backend, in a group named after the op, so NumPy and Numba sit side by
side in pytest-benchmark's table. Each benchmark first checks its result against the NumPy
reference (``fastcnn.testing`` tolerances), so a wrong fast kernel fails instead of posting a time;
kernels are compiled once per session before any timing. ``extra_info`` records ``gflops``,
``fraction_of_peak`` (of the measured FMA peak) and ``fraction_of_matmul`` for convolutions, or
``gbytes_per_s`` for pooling, from the median round.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn.backend import blas_guard, get_backend
from fastcnn.benchmarks import measurement as fm
from fastcnn.benchmarks import workload as fw
from fastcnn.benchmarks.run import BACKEND_ORDER
from fastcnn.testing import LONG_FLOAT32

CASES = fw.network_cases(fw.BATCH_SIZE) + fw.general_cases()


@pytest.mark.parametrize("backend", BACKEND_ORDER)
@pytest.mark.parametrize("name", [c.name for c in CASES], ids=[c.id for c in CASES])
def test_op(benchmark, name, backend, op_data, peak_gflops, matmul_gflops, numba_ready):
    case, inputs, expected = op_data(name)
    ops = get_backend(backend)
    shape = f"batch {case.shape.N}, float32" if case.group == "network" else case.note.split("; ")[-1]
    benchmark.group = f"{case.name} ({shape})"
    with blas_guard(backend):
        case.check(case.run(ops, inputs), expected)      # a wrong kernel fails here, before any timing
        benchmark(case.run, ops, inputs)
    fm.record_rate(benchmark, case.work, case.unit, peak_gflops, matmul_gflops, op=case.name, backend=backend,
                   work=case.work, unit=case.unit, note=case.note, peak_gflops=round(peak_gflops, 2),
                   matmul_gflops=round(matmul_gflops, 2))


def test_matmul_reference(benchmark, matmul_gflops, peak_gflops):
    """float32 numpy.matmul on 2048 x 2048 matrices, BLAS at its normal thread count."""
    n = fm.MATMUL_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    rows = slice(0, 16)
    exact = a[rows].astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(c[rows], exact, rtol=LONG_FLOAT32["rtol"],
                               atol=10 * LONG_FLOAT32["rtol"] * np.abs(exact).max())
    benchmark.group = f"matmul reference (float32 {n}x{n})"
    benchmark(np.matmul, a, b, out=c)
    fm.record_rate(benchmark, 2 * n ** 3, "GFLOP/s", peak_gflops, matmul_gflops,
                   session_best_gflops=round(matmul_gflops, 2), peak_gflops=round(peak_gflops, 2))
