"""fastcnn-train (fastcnn.cli): end to end in a subprocess, argument errors in-process.

The error contract: a non-zero exit code (2 for bad arguments, 1 for runtime errors) and exactly
one line on stderr, ``fastcnn-train: error: <message>``, never a traceback.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastcnn.train
from fastcnn._cli import write_line
from fastcnn.cli import build_parser, train_main

from helpers import PNG_SIGNATURE, assert_one_error_line, run_cli, write_custom_dataset

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second",
              "eval_seconds"}
TOP_KEYS = {"config", "epochs", "warmup_seconds", "time_to_first_batch_seconds", "versions", "backend", "threads"}


@pytest.fixture(autouse=True)
def isolated_data_search(monkeypatch, tmp_path):
    """No $FASTCNN_DATA_DIR and an empty cache, so nothing is found by accident."""
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


# ------------------------------------------------------------------------------------ end to end

def test_end_to_end_on_real_mnist(mnist_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(["--data-dir", mnist_dir, "--no-download", "--limit-train", 1000, "--limit-test", 500,
                    "--epochs", 2, "--backend", "numpy", "--plots-dir", out, "--metrics", out / "m.json"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"], proc.stdout
    assert all("test " in line and line.endswith("img/s") for line in epoch_lines)

    metrics = json.loads((out / "m.json").read_text())
    assert TOP_KEYS <= set(metrics)
    assert len(metrics["epochs"]) == 2 and [m["epoch"] for m in metrics["epochs"]] == [1, 2]
    for m in metrics["epochs"]:
        assert EPOCH_KEYS <= set(m)
        assert 0.0 <= m["test_acc"] <= 1.0 and m["seconds"] > 0 and m["images_per_second"] > 0
    assert metrics["epochs"][-1]["test_acc"] > 0.3          # 1,000 images, 16 steps: measured ~0.70
    assert metrics["backend"] == "numpy"
    assert metrics["config"]["limit_train"] == 1000 and metrics["config"]["epochs"] == 2
    assert metrics["config"]["lr"] == 2e-3                   # the resolved per-optimizer default
    assert set(metrics["versions"]) == {"python", "numpy", "numba", "fastcnn"}
    assert metrics["warmup_seconds"] > 0 and metrics["time_to_first_batch_seconds"] > 0
    for name in ("train_loss.png", "test_acc.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.iterdir()) == ["m.json", "test_acc.png", "train_loss.png"]


def test_a_bad_backend_from_the_environment_names_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCNN_BACKEND", "cuda")
    assert train_main(["--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("fastcnn-train: error: unknown backend 'cuda' in $FASTCNN_BACKEND: expected "
                                       "one of numba, numpy\n")


def test_write_line_survives_a_closed_pipe():
    """What every command prints goes through write_line: ``fastcnn-eval ... | head -1`` and
    ``fastcnn-sweep ... | head -1`` used to end in 'error: Broken pipe' (exit 1, no summary)."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    os.close(read_end)                                       # as head -1 exits
    try:
        write_line("first", stream)                          # EPIPE: that stream is silenced
        write_line("second", stream)
        assert os.readlink(f"/proc/self/fd/{stream.fileno()}") == os.devnull
    finally:
        stream.close()


def test_usage_error_in_a_subprocess_is_one_line(tmp_path):
    proc = run_cli(["--epochs", "0"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr)
    assert "--epochs" in proc.stderr


def test_custom_dataset_in_process(tmp_path, capsys):
    data = write_custom_dataset(tmp_path / "data")
    out = tmp_path / "plots"
    code = train_main(["--dataset", "custom", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                       "--backend", "numpy", "--plots-dir", str(out), "--metrics", str(tmp_path / "m" / "m.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    assert sum(line.startswith("epoch 1/1") for line in captured.out.splitlines()) == 1
    assert (out / "train_loss.png").is_file() and (out / "test_acc.png").is_file()
    metrics = json.loads((tmp_path / "m" / "m.json").read_text())
    assert metrics["config"]["dataset"] == "custom" and len(metrics["epochs"]) == 1


def test_quiet_prints_nothing(tmp_path, capsys):
    data = write_custom_dataset(tmp_path / "data")
    code = train_main(["--dataset", "custom", "--data-dir", str(data), "--epochs", "1", "--batch-size", "64",
                       "--backend", "numpy", "--plots-dir", str(tmp_path / "plots"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == "" and captured.err == ""


# ------------------------------------------------------------------------------------------ help

def test_help_mentions_every_option(capsys):
    assert train_main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--data-dir", "--dataset", "--backend", "--threads", "--epochs", "--batch-size",
                   "--optimizer", "--lr", "--lr-schedule", "--momentum", "--weight-decay", "--dropout",
                   "--batchnorm", "--seed", "--dtype", "--limit-train", "--limit-test", "--plots-dir",
                   "--metrics", "--quiet", "--no-download"):
        assert option in text, option
    parsed = {s for action in build_parser()._actions for s in action.option_strings}
    assert all(s in text for s in parsed)
    assert "examples:" in text and "(default: 128)" in text


# --------------------------------------------------------------------------------- bad arguments

BAD_ARGS = [
    (["--epochs", "0"], 2),
    (["--epochs", "-1"], 2),
    (["--epochs", "two"], 2),
    (["--batch-size", "0"], 2),
    (["--lr", "-1"], 2),
    (["--lr", "0"], 2),
    (["--lr", "nan"], 2),
    (["--dropout", "1.5"], 2),
    (["--dropout", "1"], 2),
    (["--momentum", "1.2", "--optimizer", "sgd"], 2),
    (["--momentum", "0.9"], 2),                              # adamw has no momentum option
    (["--weight-decay", "-0.1"], 2),
    (["--backend", "tensorflow"], 2),
    (["--optimizer", "rmsprop"], 2),
    (["--dataset", "imagenet"], 2),
    (["--limit-train", "0"], 2),
    (["--limit-test", "-5"], 2),
    (["--dtype", "float16"], 2),
    (["--threads", "0"], 2),
    (["--threads", "100000"], 2),
    (["--seed", "-1"], 2),
    (["--no-such-option"], 2),
    (["--data-dir", "/nonexistent/fastcnn-mnist", "--no-download"], 2),
    (["--no-download"], 1),                                  # nothing in the (empty) search path
    (["--dropout", "0.99999999"], 2),                        # below 1 but beyond the 16-bit mask
    (["--threads", "100000", "--backend", "numpy"], 2),
    (["--diverge-factor", "0.5"], 2),
    (["--diverge-window", "0"], 2),
]


@pytest.mark.parametrize("args,needle", [
    (["--dropout", "0.99999999"], "--dropout must be below 0.99999"),
    (["--threads", "100000", "--backend", "numpy"], "the CPU count"),
    (["--momentum", "0.5"], "--momentum applies only to the sgd optimizer, not adamw: choose sgd or leave "),
])
def test_config_errors_name_the_option_and_fail_before_loading(args, needle, tmp_path, capsys, monkeypatch):
    """The TrainConfig validator decides; the CLI only words it as a usage error, before any data."""
    import fastcnn.data
    monkeypatch.setattr(fastcnn.data, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    rc = train_main([*args, "--plots-dir", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "NUMBA_NUM_THREADS" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,code", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_with_one_line(args, code, tmp_path, capsys):
    rc = train_main([*args, "--backend", "numpy", "--plots-dir", str(tmp_path / "plots")]
                    if "--backend" not in args else [*args, "--plots-dir", str(tmp_path / "plots")])
    captured = capsys.readouterr()
    assert rc == code, captured.err
    assert_one_error_line(captured.err)
    assert captured.out == ""


def test_plots_dir_that_is_a_file_fails_before_loading_data(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    monkeypatch.setattr("fastcnn.data.load_dataset", lambda *a, **k: pytest.fail("data loaded before the check"))
    for plots_dir in (blocker, blocker / "sub"):
        assert train_main(["--backend", "numpy", "--plots-dir", str(plots_dir)]) == 2
        err = capsys.readouterr().err
        assert_one_error_line(err)
        assert "--plots-dir" in err


@pytest.mark.parametrize("metrics", ["dir", "file-parent"])
def test_unwritable_metrics_path_fails_fast(metrics, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    path = tmp_path if metrics == "dir" else blocker / "m.json"
    assert train_main(["--backend", "numpy", "--plots-dir", str(tmp_path / "p"), "--metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "--metrics" in err


def test_truncated_idx_file_is_a_runtime_error(tmp_path, capsys):
    data = write_custom_dataset(tmp_path / "data", truncate=100)
    rc = train_main(["--dataset", "custom", "--data-dir", str(data), "--no-download", "--backend", "numpy",
                     "--plots-dir", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_error_line(err)
    assert "truncated" in err and "t10k-images-idx3-ubyte" in err


def test_truncated_idx_file_in_a_subprocess(tmp_path):
    data = write_custom_dataset(tmp_path / "data", truncate=100)
    proc = run_cli(["--dataset", "custom", "--data-dir", data, "--no-download", "--backend", "numpy",
                    "--plots-dir", tmp_path / "plots"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert_one_error_line(proc.stderr)


def test_batch_size_larger_than_limited_training_set(tmp_path, capsys):
    data = write_custom_dataset(tmp_path / "data", n_train=64)
    rc = train_main(["--dataset", "custom", "--data-dir", str(data), "--batch-size", "128", "--backend", "numpy",
                     "--plots-dir", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 2
    assert_one_error_line(err)
    assert "--batch-size 128" in err and "64" in err


def test_keyboard_interrupt_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    data = write_custom_dataset(tmp_path / "data")

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastcnn.train.Trainer, "run", interrupted)
    rc = train_main(["--dataset", "custom", "--data-dir", str(data), "--batch-size", "32", "--backend", "numpy",
                     "--plots-dir", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("fastcnn-train: stopped at once by SIGINT")


def test_library_errors_are_reported_as_one_line(tmp_path, capsys, monkeypatch):
    data = write_custom_dataset(tmp_path / "data")

    def broken(self):
        raise ValueError("loss diverged\nsecond line")

    monkeypatch.setattr(fastcnn.train.Trainer, "run", broken)
    rc = train_main(["--dataset", "custom", "--data-dir", str(data), "--batch-size", "32", "--backend", "numpy",
                     "--plots-dir", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_error_line(err)
    assert "loss diverged" in err and "second line" not in err

    monkeypatch.setenv("FASTCNN_VERBOSE", "1")
    rc = train_main(["--dataset", "custom", "--data-dir", str(data), "--batch-size", "32", "--backend", "numpy",
                     "--plots-dir", str(tmp_path / "plots")])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 1 and lines == ["fastcnn-train: error: loss diverged", "  second line"]


def test_a_batch_too_large_for_the_memory_is_warned_about(tmp_path, capsys, monkeypatch):
    """A step's memory is estimated before the first batch (a lower bound: the first convolution's
    output and gradient); more than half the available memory gets a warning, and the run goes on."""
    import fastcnn.trainsetup
    data = write_custom_dataset(tmp_path / "data")
    args = ["--dataset", "custom", "--data-dir", str(data), "--batch-size", "32", "--backend", "numpy",
            "--epochs", "1", "--plots-dir", str(tmp_path / "plots")]
    need = 2 * 32 * 32 * 28 * 28 * 4
    monkeypatch.setattr(fastcnn.trainsetup, "available_memory_bytes", lambda: 2 * need + 1)
    assert train_main(args) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(fastcnn.trainsetup, "available_memory_bytes", lambda: 2 * need - 1)
    assert train_main(args) == 0
    err = capsys.readouterr().err
    assert "warning: --batch-size 32 needs at least 0.0 GiB per training step" in err, err


@pytest.mark.parametrize("load,note", [
    ({"contended": False, "other_load": 0.1, "cpu_seconds_per_second": 1.9, "threads": 2}, None),
    ({"contended": True, "other_load": 1.23, "cpu_seconds_per_second": 1.9, "threads": 2},
     "note: other programs used the cores; epoch times are inflated (they used 1.2 cores on average)"),
    ({"contended": True, "other_load": None, "cpu_seconds_per_second": 0.9, "threads": 2},
     "note: other programs used the cores; epoch times are inflated (CPU/wall 0.90 with 2 threads)"),
])
def test_contention_hint_follows_the_cpu_meter(load, note):
    from fastcnn.cli import contention_hint
    assert contention_hint(load) == note


def test_a_run_beside_a_busy_program_gets_the_contention_note(tmp_path, capsys):
    """Programs spinning on every usable core while the run trains on all of them: the run's own
    CPU/wall can stay high (its threads spin too), but the others' CPU time shows in /proc/stat."""
    import subprocess
    import sys

    from fastcnn.backend import usable_cpus
    data = tmp_path / "data"
    write_custom_dataset(data, n_train=384, n_test=64)
    cores = usable_cpus()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        assert train_main(["--dataset", "custom", "--data-dir", str(data), "--epochs", "1", "--batch-size", "64",
                           "--backend", "numpy", "--threads", str(cores), "--plots-dir", str(tmp_path / "plots")]) == 0
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert "note: other programs used the cores; epoch times are inflated (" in capsys.readouterr().out


def test_header_wraps_between_words_in_a_120_column_terminal(monkeypatch):
    import os
    import shutil

    from fastcnn.cli import _header
    from fastcnn.data import Dataset
    from fastcnn.train import TrainConfig
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=None: os.terminal_size((120, 40)))
    data = Dataset(None, None, None, None, "fashion-mnist", "/home/someone/a-rather-long/path/to/the/datasets/folder")
    text = _header(data, TrainConfig(optimizer="sgd").resolved(), 60000, 10000)
    words = " ".join(text.split())
    folder = "/home/someone/a-rather-long/path/to/the/datasets/folder"
    assert words.startswith(f"fastcnn-train: fashion-mnist from {folder} ")
    assert "batch 128, 5 epochs" in words
    assert all(len(line) < 120 for line in text.splitlines())


def test_the_compile_message_covers_kernels_outside_the_mnist_set(monkeypatch):
    """A compilation the kernels' own warm-up does not cover (here a fresh function the throwaway
    step compiles, as BatchNorm's kernels are) is announced once, and its time counts as warm-up."""
    from types import SimpleNamespace

    import numba

    import fastcnn.kernels
    from fastcnn.cli import _warm_up

    monkeypatch.setattr(fastcnn.kernels, "warm_up", lambda model, on_compile=None, **kwargs: 0.0)
    said = []

    class Step:
        state = SimpleNamespace(model=None, optimizer=None)
        x_train = np.zeros((1, 1, 28, 28), np.float32)

        def warm_up(self, prepare=None):
            prepare()
            numba.njit(lambda x: x + 1)(1)
            numba.njit(lambda x: x + 2)(1)
            return 1.5

    _warm_up(Step(), fastcnn.train.TrainConfig(backend="numba"), said.append)
    assert said == ["compiling the Numba kernels, first run only ...",
                    "compiled in 1.5 s; later runs load them from Numba's cache"], said


def test_a_file_as_data_dir_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not data")
    assert train_main(["--data-dir", str(tmp_path / "notes.txt"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "notes.txt': is a file, not a folder; pass the folder that holds the IDX files" in err, err
