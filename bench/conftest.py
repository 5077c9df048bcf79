"""Fixtures of the pytest-benchmark suite (``pytest bench/ --benchmark-only``).

Smoke mode: ``pytest bench/ --benchmark-disable`` runs every benchmark body once, checks included,
on fewer batches (what CI runs). Every measuring helper lives in :mod:`fastcnn.benchmark`, shared
with the ``fastcnn-bench`` command.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fastcnn.testing import real_mnist_dir

from fastcnn import benchmark as fb



def pytest_configure(config):
    config.addinivalue_line("markers", "needs_mnist: uses the real MNIST files")


@pytest.fixture(scope="session")
def smoke(request):
    """True under ``--benchmark-disable``: each benchmark body runs once, so use fewer batches."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def matmul_gflops(smoke):
    """This machine's reference rate (float32 numpy.matmul, BLAS at its normal thread count),
    measured once per session, before any Numba kernel runs (see ``numba_ready``)."""
    if smoke:
        return fb.measure_matmul(fb.MATMUL_N, repeats=1)["gflops"]
    return fb.measure_matmul(fb.MATMUL_N, repeats=5, min_time=1.5)["gflops"]


@pytest.fixture(scope="session")
def numba_ready(matmul_gflops):
    """Compile every Numba kernel once, so compile time never enters a timing. Depends on
    ``matmul_gflops`` so that the reference rate is measured before Numba's threads exist."""
    return fb.warm_up_kernels(("numba",))


@pytest.fixture(scope="session")
def op_data():
    """Per op case: (case, inputs, reference result), built once and shared by both backends."""
    cache = {}

    def get(name):
        if name not in cache:
            case = {c.name: c for c in fb.op_cases(fb.BATCH_SIZE)}[name]
            inputs = case.make_inputs(seed=0)
            from fastcnn import reference
            cache[name] = (case, inputs, case.run(reference, inputs))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the real MNIST IDX files (see :func:`fastcnn.testing.real_mnist_dir`)."""
    return real_mnist_dir(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from fastcnn.data import load_dataset
    return load_dataset("mnist", data_dir=mnist_dir, download=False)


@pytest.fixture(scope="session")
def train_batches(mnist, smoke):
    """Real shuffled training batches of 128 (float32, normalised); 4 in smoke mode, else 48."""
    return fb.mnist_batches(mnist, 4 if smoke else 48, seed=0)


@pytest.fixture(scope="session")
def train_reference(train_batches):
    """The NumPy reference's loss and gradients for one step on the first batch."""
    return fb.train_step_result("numpy", train_batches[0])


@pytest.fixture(scope="session")
def eval_batches(mnist, smoke):
    """Test images in evaluation batches of 1000: 1 batch in smoke mode, else all 10."""
    x, y = fb.eval_data(mnist, fb.EVAL_BATCH_SIZE if smoke else fb.TEST_IMAGES)
    n = fb.EVAL_BATCH_SIZE
    return [(x[i:i + n], y[i:i + n]) for i in range(0, len(x), n)]


@pytest.fixture(scope="session")
def eval_reference(eval_batches):
    """The NumPy reference's logits on the first evaluation batch."""
    return fb.eval_logits("numpy", eval_batches[0][0])

