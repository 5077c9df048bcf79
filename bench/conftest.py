"""Fixtures of the pytest-benchmark suite (``pytest bench/ --benchmark-only``).

Smoke mode: ``pytest bench/ --benchmark-disable`` runs every benchmark body once, checks included,
on fewer batches (what CI runs). Every measuring helper lives in :mod:`fastcnn.benchmarks`, shared
with the ``fastcnn-bench`` command.
"""
from __future__ import annotations

from pathlib import Path

import numba
import pytest

from fastcnn import reference
from fastcnn._process import tune_process
from fastcnn.benchmarks import measurement as fm
from fastcnn.benchmarks import roofline
from fastcnn.benchmarks import workload as fw
from fastcnn.data import load_dataset
from fastcnn.testing import real_mnist_dir


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_mnist: uses the real MNIST files")
    tune_process()                    # as the commands do: the suite measures their speed


@pytest.fixture(scope="session")
def smoke(request):
    """True under ``--benchmark-disable``: each benchmark body runs once, so use fewer batches."""
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def matmul_gflops(smoke):
    """This machine's numpy.matmul rate (float32, BLAS on as many threads as Numba starts with),
    measured once per session, before any Numba kernel runs (see ``numba_ready``): the second
    yardstick."""
    threads = numba.config.NUMBA_NUM_THREADS       # not get_num_threads(): that would start Numba's pool
    if smoke:
        return fm.measure_matmul(fm.MATMUL_N, repeats=1, threads=threads)["gflops"]
    return fm.measure_matmul(fm.MATMUL_N, repeats=5, min_time=1.5, threads=threads)["gflops"]


@pytest.fixture(scope="session")
def peak_gflops(smoke, matmul_gflops):
    """The float32 FMA peak on all Numba threads (:func:`fastcnn.benchmarks.roofline.measure_fma_peak`):
    every ``fraction_of_peak`` in ``extra_info`` is against it."""
    peak = roofline.measure_fma_peak(numba.get_num_threads(), min_time=0.05 if smoke else 0.5,
                                     repeats=1 if smoke else 5)
    return peak["gflops"]


@pytest.fixture(scope="session")
def numba_ready(peak_gflops):
    """Compile every Numba kernel once, so compile time never enters a timing. Depends on the
    reference rates, so that they are measured before the kernels' threads exist."""
    return fm.warm_up_kernels(fw.network_cases(2) + fw.at_batch(fw.general_cases(), 1), ("numba",))


@pytest.fixture(scope="session")
def op_data():
    """Per op case: (case, inputs, reference result), built once and shared by both backends."""
    cache = {}
    cases = {c.name: c for c in fw.network_cases(fw.BATCH_SIZE) + fw.general_cases()}

    def get(name):
        if name not in cache:
            case = cases[name]
            inputs = case.make_inputs(seed=0)
            cache[name] = (case, inputs, case.run(reference, inputs))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the real MNIST IDX files (see :func:`fastcnn.testing.real_mnist_dir`)."""
    return real_mnist_dir(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return load_dataset("mnist", data_dir=mnist_dir, download=False)


@pytest.fixture(scope="session")
def train_batches(mnist, smoke):
    """Real shuffled training batches of 128 (float32, normalised); 4 in smoke mode, else 48."""
    return fm.mnist_batches(mnist, 4 if smoke else 48, seed=0)


@pytest.fixture(scope="session")
def train_reference(train_batches):
    """The NumPy reference's loss and gradients for one step on the first batch."""
    return fm.train_step_result("numpy", train_batches[0])


@pytest.fixture(scope="session")
def eval_batches(mnist, smoke):
    """Test images in evaluation batches of 1000: 1 batch in smoke mode, else all 10."""
    x, y = fm.eval_data(mnist, fw.EVAL_BATCH_SIZE if smoke else fw.TEST_IMAGES)
    n = fw.EVAL_BATCH_SIZE
    return [(x[i:i + n], y[i:i + n]) for i in range(0, len(x), n)]


@pytest.fixture(scope="session")
def eval_reference(eval_batches):
    """The NumPy reference's logits on the first evaluation batch."""
    return fm.eval_logits("numpy", eval_batches[0][0])
