"""Per-op benchmarks at the mission network's training shapes (batch 128, float32).

For every op of the network (conv1, pool1, conv2, pool2; forward, backward-weight,
backward-input+weight, pool backward; and conv1+pool1, the fused first layer as the model runs it)
and each backend, one benchmark in a group named after the op,
so NumPy and Numba sit side by side in pytest-benchmark's table. Each benchmark first checks its
result against the NumPy reference (``fastcnn.testing`` tolerances), so a wrong fast kernel fails
instead of posting a time; kernels are compiled once per session before any timing. ``extra_info``
records ``gflops`` and ``fraction_of_matmul`` (convs) or ``gbytes_per_s`` (pooling), from the
median round. ``test_matmul_reference`` is the machine's BLAS rate the fractions refer to.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import benchmark as fb
from fastcnn.backend import blas_guard, get_backend

CASES = fb.op_cases(fb.BATCH_SIZE)


@pytest.mark.parametrize("backend", fb.BACKEND_ORDER)
@pytest.mark.parametrize("name", [c.name for c in CASES], ids=[c.id for c in CASES])
def test_op(benchmark, name, backend, op_data, matmul_gflops, numba_ready):
    case, inputs, expected = op_data(name)
    ops = get_backend(backend)
    benchmark.group = f"{case.name} (batch {fb.BATCH_SIZE}, float32)"
    with blas_guard(backend):
        case.check(case.run(ops, inputs), expected)      # a wrong kernel fails here, before any timing
        benchmark(case.run, ops, inputs)
    fb.record_rate(benchmark, case.work, case.unit, matmul_gflops, op=case.name, backend=backend,
                   work=case.work, unit=case.unit, note=case.note,
                   matmul_gflops=round(matmul_gflops, 2))


def test_matmul_reference(benchmark, matmul_gflops):
    """float32 numpy.matmul on 2048 x 2048 matrices, BLAS at its normal thread count."""
    n = fb.MATMUL_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    rows = slice(0, 16)
    exact = a[rows].astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(c[rows], exact, rtol=1e-4, atol=1e-3 * np.abs(exact).max())
    benchmark.group = f"matmul reference (float32 {n}x{n})"
    benchmark(np.matmul, a, b, out=c)
    fb.record_rate(benchmark, 2 * n ** 3, "GFLOP/s", matmul_gflops, session_best_gflops=round(matmul_gflops, 2))
