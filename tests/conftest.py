"""Shared pytest fixtures for the fastcnn test suite, and which tests are ``slow``.

The development loop is ``pytest -m "not slow"`` (under a minute on 2 cores with a warm Numba
cache); plain ``pytest``, what CI runs, runs everything. A test is slow when it starts another
process (a command end to end, a signal, a cold compile in a fresh cache), trains a network for
whole epochs (on the real MNIST files or synthetic ones), runs hundreds of random shapes, or runs a
Dask cluster: the rules below say which, in one place."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastcnn.testing import real_mnist_dir

# Every test of these files: real processes and signals, Dask clusters, documentation that trains.
SLOW_FILES = {"test_resilience.py", "test_readme.py"}
# Tests that read the real MNIST files train or evaluate on them.
SLOW_FIXTURES = {"mnist_dir"}
# Single tests, by file and name (a parametrised test by its base name).
_OTHER_PROCESS = {
    "test_kernels.py": {"test_warm_up_announces_compilation_only_on_an_empty_cache",      # cold compiles
                        "test_warm_up_halves_write_disjoint_cache_entries",
                        "test_512_bit_vectors_on_avx512_only_when_a_command_asks",
                        "test_kernels_bit_identical_across_thread_counts"},               # a 2-thread process
    "test_benchmark.py": {"test_peak_kernels_keep_their_chains_in_registers",            # uncached kernels
                          "test_peak_kernel_is_vectorised_and_checks_its_own_work"},
    "test_cli.py": {"test_usage_error_in_a_subprocess_is_one_line", "test_truncated_idx_file_in_a_subprocess",
                    "test_a_run_beside_a_busy_program_gets_the_contention_note"},
    "test_data.py": {"test_gzip_bomb_is_refused_in_bounded_memory"},
    "test_sweep.py": {"test_bad_option_list_from_the_command_line"},
    "test_package.py": {"test_import_fastcnn_leaves_malloc_alone", "test_import_leaves_numbas_target_alone",
                        "test_fastcnn_train_imports_and_helps_without_fcntl"},
}
# Whole training runs (epochs of a network, here on synthetic data) and the property-based kernel
# tests' hundreds of random shapes: a second or more each, seconds on a busy machine.
_TRAINING_RUNS = {
    "test_train.py": {"test_same_seed_gives_identical_history", "test_different_seeds_differ",
                      "test_warm_up_leaves_the_real_model_untouched",
                      "test_quiet_logs_nothing_and_log_gets_one_line_per_epoch",
                      "test_callbacks_see_every_epoch_and_can_stop_the_run", "test_learning_rate_schedules",
                      "test_sgd_runs_and_defaults_are_filled_in", "test_last_partial_batch_is_trained",
                      "test_save_plots_writes_two_pngs_atomically"},
    "test_kernels.py": {"test_conv2d_random_shapes", "test_conv2d_relu_maxpool_random_shapes",
                        "test_pool_random_shapes"},
    "test_evaluate.py": {"test_trained_model_is_evaluated_on_its_own_data_folder",
                         "test_eval_uses_the_data_the_model_was_trained_on", "test_single_class_test_labels_warn",
                         "test_fashion_model_predicts_fashion_class_names"},
    "test_cli.py": {"test_a_batch_too_large_for_the_memory_is_warned_about", "test_quiet_prints_nothing",
                    "test_custom_dataset_in_process", "test_library_errors_are_reported_as_one_line"},
    "test_checkpoint.py": {"test_resume_is_bit_identical", "test_resume_without_dropout_rng_diverges"},
    "test_fusion.py": {"test_fused_training_is_bit_identical_to_unfused"},
    "test_profiling.py": {"test_train_cli_profile_prints_the_table", "test_profiling_changes_no_result"},
    "test_package.py": {"test_without_fcntl_a_run_warns_once_and_writes_unlocked"},
    "test_data_facts.py": {"test_trained_model_carries_the_facts_in_data_not_extra"},
}
SLOW_TESTS = {file: _OTHER_PROCESS.get(file, set()) | _TRAINING_RUNS.get(file, set())
              for file in {*_OTHER_PROCESS, *_TRAINING_RUNS}}


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
