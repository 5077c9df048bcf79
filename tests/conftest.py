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
    "test_kernels.py": {"test_warm_up_announces_compilation_only_on_an_empty_cache",      # cold compiles
                        "test_warm_up_halves_write_disjoint_cache_entries",
                        "test_512_bit_vectors_on_avx512_unless_told_or_too_late"},        # fresh interpreters
    "test_benchmark.py": {"test_peak_kernels_keep_their_chains_in_registers",            # uncached kernels
                          "test_peak_kernel_is_vectorised_and_checks_its_own_work"},
    "test_cli.py": {"test_usage_error_in_a_subprocess_is_one_line", "test_truncated_idx_file_in_a_subprocess",
                    "test_a_run_beside_a_busy_program_gets_the_contention_note"},
    "test_data.py": {"test_gzip_bomb_is_refused_in_bounded_memory"},
    "test_sweep.py": {"test_bad_option_list_from_the_command_line"},
    "test_package.py": {"test_import_fastcnn_leaves_malloc_alone",
                        "test_fastcnn_train_imports_and_helps_without_fcntl"},
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
