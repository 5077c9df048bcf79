"""Shared pytest fixtures for the fastcnn test suite, and which tests are ``slow``.

The development loop is ``pytest -m "not slow"`` (under a minute on 2 cores with a warm Numba
cache); plain ``pytest``, what CI runs, runs everything. A test is slow when it starts another
process (a command end to end, a signal, a cold compile in a fresh cache), trains on the real
MNIST files, or runs a Dask cluster: the rules below say which, in one place."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastcnn.testing import real_mnist_dir

# Every test of these files: real processes and signals, Dask clusters, documentation that trains.
SLOW_FILES = {"test_resilience.py", "test_readme.py"}
# Tests that read the real MNIST files train or evaluate on them.
SLOW_FIXTURES = {"mnist_dir"}
# Single tests, by file and name (a parametrised test by its base name).
SLOW_TESTS = {
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        file = Path(str(item.fspath)).name
        name = getattr(item, "originalname", None) or item.name
        if (file in SLOW_FILES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or name in SLOW_TESTS.get(file, ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the real MNIST IDX files (see :func:`fastcnn.testing.real_mnist_dir`)."""
    return real_mnist_dir(Path(__file__).resolve().parents[1])
