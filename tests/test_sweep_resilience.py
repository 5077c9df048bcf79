"""fastcnn-sweep under attack, with real processes, signals and Dask clusters (small limits):

- one lock per --out: a second sweep on the same folder is refused while the first runs;
- a run found in OUT counts as completed only with its settings, an intact checkpoint of all its
  epochs and the very data this sweep reads; a completed run of other data is refused;
- a run of a cosine schedule is not continued to more epochs (a constant one is, equal bit for bit
  to a fresh run);
- every signal that ends a sweep (early during the start, twice, to the process group, SIGHUP,
  SIGQUIT) leaves a summary where no run is "failed", and exits with 128 + the signal;
- a scheduler lost mid-run ends the sweep in one line, without tracebacks.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from fastcnn._cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from fastcnn.checkpoint import load_checkpoint
from fastcnn.sweep.cli import LOCK_FILE, sweep_main

from helpers import subprocess_env, write_idx

TINY = ["--epochs", "2", "--limit-train", "64", "--limit-test", "50", "--batch-size", "64"]
LOCAL = ["--workers", "1", "--threads-per-run", "1", "--dashboard", "127.0.0.1:0"]


def _sweep(argv, cwd, pause=None, **kw):
    env = subprocess_env()
    if pause is not None:
        env["FASTCNN_TEST_PAUSE"] = ":".join(map(str, pause))
    return subprocess.Popen([sys.executable, "-m", "fastcnn.sweep", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    assert predicate(), "timed out"


def _finish(proc, timeout=120):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _statuses(out):
    return {r["run"]: r["status"] for r in _summary(out)["runs"]}


def test_a_second_sweep_on_the_same_out_is_refused(mnist_dir, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "paused"
    argv = ["--optimizer", "sgd", *TINY, *LOCAL, "-q", "--data-dir", mnist_dir, "--out", out]
    first = _sweep(argv, tmp_path, pause=("train", 2, 1, marker))
    try:
        _wait_for(marker.exists, first)
        code = sweep_main([*map(str, argv[:-2]), "--lr", "0.05", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE, err
        assert err.startswith(f"fastcnn-sweep: error: wait for it or choose another --out: another fastcnn-sweep "
                              f"(pid {first.pid}) is writing {out}") and err.count("\n") == 1, err
        first.send_signal(signal.SIGINT)
        _finish(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130
    assert _statuses(out) == {"sgd": "interrupted"}                  # the first sweep's summary, whole


def _mnist_copy(mnist_dir, folder, change_label=False):
    """MNIST's four files as a custom dataset; ``change_label``: the first training label differs."""
    from fastcnn.data import load_dataset
    data = load_dataset("mnist", data_dir=mnist_dir)
    folder.mkdir()
    y = data.y_train.copy()
    if change_label:
        y[0] = (y[0] + 1) % 10
    for name, arr in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                          "t10k-labels-idx1-ubyte"), (data.x_train[:512, 0], y[:512], data.x_test[:100, 0],
                                                      data.y_test[:100])):
        write_idx(folder / name, arr)
    return folder


def test_a_completed_run_counts_only_with_its_data_and_its_checkpoint(mnist_dir, tmp_path, capsys):
    first, other = _mnist_copy(mnist_dir, tmp_path / "a"), _mnist_copy(mnist_dir, tmp_path / "b", change_label=True)
    out = tmp_path / "out"
    base = ["--dataset", "custom", "--optimizer", "sgd", *TINY, *LOCAL, "--out", str(out)]
    assert sweep_main([*base, "-q", "--data-dir", str(first)]) == EXIT_OK
    before = _summary(out)["runs"][0]

    assert sweep_main([*base, "--data-dir", str(other)]) == EXIT_USAGE          # other data: refused
    err = capsys.readouterr().err
    assert err.startswith(f"fastcnn-sweep: error: choose another --out, or delete {out / 'sgd'}: its completed run "
                          "sgd was trained on other data") and err.count("\n") == 1, err
    assert _summary(out)["runs"][0] == before                                  # nothing rewritten

    assert sweep_main([*base, "--data-dir", str(first)]) == EXIT_OK             # the same data: skipped
    assert "sgd: completed earlier" in capsys.readouterr().out

    ckpt = out / "sgd" / "checkpoint.npz"                                       # a damaged checkpoint: not skipped
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    assert sweep_main([*base, "-q", "--data-dir", str(first)]) == EXIT_ERROR
    run = _summary(out)["runs"][0]
    assert run["status"] == "failed" and "delete" in run["reason"] and "damaged" in run["reason"], run
    capsys.readouterr()

    ckpt.unlink()                                                               # deleted: trained again
    assert sweep_main([*base, "--data-dir", str(first)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "completed earlier" not in text and "sgd: completed  test" in text, text
    assert load_checkpoint(ckpt).epoch == 2


def test_more_epochs_continue_only_a_constant_schedule_and_equal_a_fresh_run(mnist_dir, tmp_path, capsys):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    base = ["--optimizer", "sgd", "--limit-train", "64", "--limit-test", "50", "--batch-size", "32", *LOCAL, "-q",
            "--no-timings", "--data-dir", str(mnist_dir)]
    assert sweep_main([*base, "--epochs", "1", "--out", str(out)]) == EXIT_OK
    assert sweep_main([*base, "--epochs", "2", "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "cosine learning-rate schedule planned for 1 epochs" in err and err.count("\n") == 1, err
    assert len(json.loads((out / "sgd" / "metrics.json").read_text())["epochs"]) == 1

    const = [*base, "--lr-schedule", "constant"]
    assert sweep_main([*const, "--epochs", "1", "--out", str(tmp_path / "c")]) == EXIT_OK
    assert sweep_main([*const, "--epochs", "2", "--out", str(tmp_path / "c")]) == EXIT_OK
    assert sweep_main([*const, "--epochs", "2", "--out", str(fresh)]) == EXIT_OK
    resumed = json.loads((tmp_path / "c" / "sgd" / "metrics.json").read_text())["epochs"]
    alone = json.loads((fresh / "sgd" / "metrics.json").read_text())["epochs"]
    assert resumed == alone


@pytest.mark.parametrize("how", ["sigint-at-start", "sigterm-twice", "sigterm-to-the-group", "sighup", "sigquit"])
def test_every_signal_that_ends_a_sweep_leaves_its_summary(how, mnist_dir, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "paused"
    argv = ["--optimizer", "sgd,adamw", "--epochs", "3", "--limit-train", "64", "--limit-test", "50",
            "--batch-size", "64", *LOCAL, "-q", "--data-dir", mnist_dir, "--out", out]
    proc = _sweep(argv, tmp_path, pause=("train", 2, 1, marker), start_new_session=True)
    signum = {"sighup": signal.SIGHUP, "sigquit": signal.SIGQUIT, "sigint-at-start": signal.SIGINT}.get(
        how, signal.SIGTERM)
    try:
        if how == "sigint-at-start":              # the lock holds the pid once the handlers are in place
            lock = out / LOCK_FILE
            _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(proc.pid), proc)
            proc.send_signal(signum)
        else:
            _wait_for(marker.exists, proc)
            if how == "sigterm-to-the-group":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signum)
                if how == "sigterm-twice":
                    time.sleep(0.2)
                    proc.send_signal(signum)
        stdout, stderr = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and f"stopped by {signal.Signals(signum).name}" in stderr, stderr
    summary = _summary(out)
    assert summary["sweep"]["stopped_by"] == signal.Signals(signum).name
    statuses = sorted(_statuses(out).values())
    if how == "sigint-at-start":
        assert statuses == ["not-started", "not-started"], summary
    else:
        assert statuses == ["interrupted", "not-started"], summary
        (started,) = [r for r in summary["runs"] if r["status"] == "interrupted"]
        assert started["epochs_done"] == 1 and load_checkpoint(out / started["run"] / "checkpoint.npz").epoch == 1


def test_a_lost_scheduler_ends_the_sweep_in_one_line(mnist_dir, tmp_path, monkeypatch):
    from distributed import LocalCluster
    out, marker = tmp_path / "out", tmp_path / "paused"
    # The workers, this process's children, inherit the pause: the run waits before epoch 2.
    monkeypatch.setenv("FASTCNN_TEST_PAUSE", f"train:2:1:{marker}")
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
                           silence_logs=logging.CRITICAL)
    try:
        proc = _sweep(["--scheduler", cluster.scheduler_address, "--optimizer", "sgd", *TINY, "--threads-per-run",
                       "1", "-q", "--data-dir", mnist_dir, "--out", out], tmp_path)
        _wait_for(marker.exists, proc)
    finally:
        cluster.close()
    stdout, stderr = _finish(proc)
    assert proc.returncode == EXIT_ERROR, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("fastcnn-sweep: error: rerun the same command once the scheduler at"), stderr
    (run,) = _summary(out)["runs"]
    assert run["status"] == "interrupted" and "connection to the Dask scheduler" in run["reason"], run
    assert "\n" not in run["reason"]
