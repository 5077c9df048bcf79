"""fastcnn-sweep on a real Dask LocalCluster (processes, 2 workers) and real MNIST, small limits.

Covered: a 2x2 grid (summary and plots hold the runs' numbers; a rerun skips it), one run equal bit
for bit to the same run of fastcnn-train, failing and diverging runs next to a good one (on a given
scheduler address), Ctrl-C and resume, one-line usage errors; and that no worker process is left.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastcnn._cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from fastcnn.checkpoint import load_checkpoint
from fastcnn.sweep.cli import _table, sweep_main
from fastcnn.sweep.grid import DEFAULT_EPOCHS, RunSpec, build_runs, load_runs_file
from fastcnn.sweep.report import PLOT_FILES, comparison_figures, rank, record, write_summary
from fastcnn.train import TIMING_KEYS

from helpers import PNG_SIGNATURE, REPO, run_cli, subprocess_env

SMALL = ["--limit-train", "256", "--limit-test", "100", "--batch-size", "64"]
LOCAL = ["--workers", "2", "--threads-per-run", "1", "--dashboard", "127.0.0.1:0", "-q"]


def _children() -> set[int]:
    """Process ids whose parent is this process (Linux /proc), except multiprocessing's resource
    tracker (started with the first spawned process, it lives as long as this interpreter)."""
    me, out = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == me and b"multiprocessing.resource_tracker" not in cmdline:
                out.add(int(entry.name))
    return out


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes():
    """Every cluster the tests start is closed: no worker or nanny process outlives the module."""
    before = _children()
    yield
    deadline = time.monotonic() + 10
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before, f"processes left behind: {_children() - before}"


@pytest.fixture(scope="module")
def grid(mnist_dir, tmp_path_factory):
    """A 2x2 sweep (optimizer x seed, 2 epochs) run once for the tests that read it."""
    out = tmp_path_factory.mktemp("grid") / "out"
    argv = ["--optimizer", "sgd,adamw", "--seed", "0,1", "--epochs", "2", *SMALL, *LOCAL,
            "--data-dir", str(mnist_dir), "--out", str(out)]
    code = sweep_main(argv)
    return {"out": out, "argv": argv, "code": code}


def _metrics(out, run):
    return json.loads((out / run / "metrics.json").read_text())


def test_grid_completes_with_summary_and_plots(grid):
    out = grid["out"]
    assert grid["code"] == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["run"] for r in runs] == ["sgd_seed0", "sgd_seed1", "adamw_seed0", "adamw_seed1"]
    assert [r["group"] for r in runs] == ["sgd", "sgd", "adamw", "adamw"]
    for r in runs:
        doc = _metrics(out, r["run"])
        accs = [m["test_acc"] for m in doc["epochs"]]
        assert r["status"] == doc["status"] == "completed" and r["reason"] is None
        assert doc["config"]["optimizer"] == r["config"]["optimizer"] and doc["config"]["seed"] == r["config"]["seed"]
        assert doc["threads"] == 1 and r["epochs_done"] == 2
        assert r["final_test_acc"] == accs[-1] and r["best_test_acc"] == max(accs)
        assert r["final_train_loss"] == doc["epochs"][-1]["train_loss"]
        assert r["epoch_seconds"] == [m["seconds"] for m in doc["epochs"]]
        assert (out / r["run"] / "checkpoint.npz").is_file()
        assert load_checkpoint(out / r["run"] / "checkpoint.npz").epoch == 2

    lines = (out / "summary.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 5
    for line, r in zip(lines[1:], runs):
        row = dict(zip(header, line.split(",")))
        assert row["run"] == r["run"] and row["status"] == "completed"
        assert float(row["final_test_acc"]) == r["final_test_acc"]
        assert float(row["best_test_acc"]) == r["best_test_acc"]

    for name in PLOT_FILES.values():
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    figs = comparison_figures(runs)
    for key, scale in (("test_acc", 100.0), ("train_loss", 1.0)):
        ax = figs[key].axes[0]
        curves = {line.get_gid(): line for line in ax.lines}
        assert set(curves) == {"sgd", "adamw"}
        assert len(ax.collections) == 2                        # one seed band per group
        for group in ("sgd", "adamw"):
            seeds = [r for r in runs if r["group"] == group]
            expected = [scale * sum(r["history"][e][key] for r in seeds) / 2 for e in range(2)]
            np.testing.assert_allclose(curves[group].get_ydata(), expected, rtol=1e-12)
            np.testing.assert_array_equal(curves[group].get_xdata(), [1, 2])
    bars = {p.get_gid(): p.get_height() for p in figs["final_acc"].axes[0].patches}
    for group in ("sgd", "adamw"):
        finals = [100 * r["final_test_acc"] for r in runs if r["group"] == group]
        assert bars[group] == pytest.approx(sum(finals) / 2, rel=1e-12)


def test_rerun_skips_completed_runs(grid, capsys):
    out = grid["out"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*")}
    argv = [a for a in grid["argv"] if a != "-q"]
    assert sweep_main(argv) == EXIT_OK
    text = capsys.readouterr().out
    assert "(0 to train, 4 completed earlier)" in text, text
    assert text.count("completed earlier") == 5, text
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*")} == before     # no run was trained again


def test_rerun_with_other_settings_is_refused_and_writes_nothing(grid, capsys):
    out = grid["out"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = [*grid["argv"], "--lr", "0.001"]
    assert sweep_main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"fastcnn-sweep: error: choose another --out, or delete {out / 'sgd_seed0'}: it holds a "
                          "run sgd_seed0 of other settings (lr 0.01 there, 0.001 now)"), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before     # metrics, summary, plots kept


def test_run_equals_fastcnn_train_alone(grid, mnist_dir, tmp_path):
    """adamw seed 1 from the sweep against the same settings trained alone, one thread each."""
    cmd = ["--optimizer", "adamw", "--seed", "1", "--epochs", "2", *SMALL, "--threads", "1", "--no-timings",
           "--data-dir", mnist_dir, "--metrics", tmp_path / "m.json", "--checkpoint", tmp_path / "c.npz",
           "--plots-dir", tmp_path / "plots", "-q"]
    proc = run_cli(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr
    alone = json.loads((tmp_path / "m.json").read_text())
    swept = _metrics(grid["out"], "adamw_seed1")
    assert alone["threads"] == swept["threads"] == 1 and alone["backend"] == swept["backend"]
    assert [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in swept["epochs"]] == alone["epochs"]
    a, b = load_checkpoint(tmp_path / "c.npz"), load_checkpoint(grid["out"] / "adamw_seed1" / "checkpoint.npz")
    assert sorted(a.arrays) == sorted(b.arrays)
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype
        assert a.arrays[name].tobytes() == b.arrays[name].tobytes(), name


def _local_cluster():
    """A cluster of this test process's own, given to the sweep by its address. Its scheduler and
    nannies live in this process: their warnings (a slow close on a loaded machine) would land in
    the stderr the tests read, so only errors are logged, as the sweep's own local cluster does."""
    from distributed import LocalCluster
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", worker_dashboard_address=None, silence_logs=logging.ERROR)


def test_failing_runs_do_not_stop_the_others_on_a_given_scheduler(mnist_dir, tmp_path, capsys):
    with _local_cluster() as cluster:
        code = sweep_main(["--scheduler", cluster.scheduler_address, "--optimizer", "sgd", "--lr", "0.01,1e30",
                           "--batch-size", "64,1000", "--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                           "--threads-per-run", "1", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "-q"])
        address = cluster.scheduler_address
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass                                                   # the scheduler's port is closed again
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.count("\n") == 1 and err.startswith("fastcnn-sweep: error: 3 of 4 runs did not complete"), err
    runs = {r["run"]: r for r in json.loads((tmp_path / "summary.json").read_text())["runs"]}
    assert set(runs) == {"lr0.01_batch-size64", "lr0.01_batch-size1000", "lr1e+30_batch-size64",
                         "lr1e+30_batch-size1000"}
    assert runs["lr0.01_batch-size64"]["status"] == "completed" and runs["lr0.01_batch-size64"]["epochs_done"] == 1
    diverged = runs["lr1e+30_batch-size64"]
    assert diverged["status"] == "diverged" and "training diverged in epoch 1" in diverged["reason"]
    assert _metrics(tmp_path, "lr1e+30_batch-size64")["status"] == "diverged"
    for name in ("lr0.01_batch-size1000", "lr1e+30_batch-size1000"):
        assert runs[name]["status"] == "failed"
        assert "batch_size 1000 is larger than the training set (256 images): use a batch of at most 256" \
            in runs[name]["reason"]
    csv_status = [line.split(",")[2] for line in (tmp_path / "summary.csv").read_text().splitlines()[1:]]
    assert sorted(csv_status) == ["completed", "diverged", "failed", "failed"]


def test_a_lost_worker_run_is_retried_once_from_its_checkpoint(mnist_dir, tmp_path, capsys, monkeypatch):
    """The worker running the sweep's only run is killed after its first epoch; the run is submitted
    again and resumes from that epoch's checkpoint."""
    import dask
    marker = tmp_path / "paused"
    killed = []

    def kill_the_worker():
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = int(marker.read_text())
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    # The workers inherit the pause: the run waits before epoch 2's first batch (its first checkpoint
    # written) until its worker is killed there; the retry finds the marker and goes on.
    monkeypatch.setenv("FASTCNN_TEST_PAUSE", f"train:2:1:{marker}")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _local_cluster() as cluster:
        killer = threading.Thread(target=kill_the_worker)
        killer.start()
        code = sweep_main(["--scheduler", cluster.scheduler_address, "--optimizer", "sgd", "--epochs", "3",
                           "--limit-train", "64", "--limit-test", "50", "--batch-size", "64", "--threads-per-run", "1",
                           "--data-dir", str(mnist_dir), "--out", str(tmp_path), "-q"])
        killer.join()
    err = capsys.readouterr().err
    assert len(killed) == 1, killed
    assert code == EXIT_OK, err
    assert "run sgd: its worker was lost" in err and "retrying it once, from its last checkpoint" in err, err
    (run,) = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert run["status"] == "completed" and run["epochs_done"] == 3 and run["resumed_from"] == 1
    assert [m["epoch"] for m in _metrics(tmp_path, "sgd")["epochs"]] == [1, 2, 3]


def _sweep_process(argv, cwd, pause=None):
    env = subprocess_env()
    if pause is not None:
        env["FASTCNN_TEST_PAUSE"] = ":".join(map(str, pause))
    return subprocess.Popen([sys.executable, "-m", "fastcnn.sweep", *map(str, argv)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_interrupted_sweep_resumes(mnist_dir, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "paused"
    # One worker: the runs go one after the other. The first one to start waits before epoch 2's
    # first batch (its first checkpoint written) until the signal stops it; the other never starts.
    argv = ["--optimizer", "sgd,adamw", "--epochs", "3", "--limit-train", "64", "--limit-test", "50",
            "--batch-size", "64", "--workers", "1", "--threads-per-run", "1", "--dashboard", "127.0.0.1:0", "-q",
            "--data-dir", mnist_dir, "--out", out]
    proc = _sweep_process(argv, tmp_path, pause=("train", 2, 1, marker))
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "stopped by SIGINT" in stderr and "rerun the same command to resume" in stderr, stderr
    first = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert sorted(r["status"] for r in first.values()) == ["interrupted", "not-started"], first
    (started,) = [run for run, r in first.items() if r["status"] == "interrupted"]
    (waiting,) = [run for run, r in first.items() if r["status"] == "not-started"]
    assert first[started]["epochs_done"] == 1 and first[started]["reason"] == "stopped in epoch 2 before batch 1/1"
    assert _metrics(out, started)["status"] == "interrupted"
    assert load_checkpoint(out / started / "checkpoint.npz").epoch == 1
    assert first[waiting]["epochs_done"] == 0 and not (out / waiting).exists(), first

    proc = _sweep_process([a for a in argv if a != "-q"], tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, stderr
    second = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert all(r["status"] == "completed" for r in second.values()), second
    assert second[started]["resumed_from"] == 1 and second[waiting]["resumed_from"] is None
    assert f"{started}: completed (resumed after epoch 1)" in stdout, stdout
    assert f"{waiting}: completed  test" in stdout, stdout
    for run in (started, waiting):
        assert [m["epoch"] for m in _metrics(out, run)["epochs"]] == [1, 2, 3]
    kept = first[started]["history"]                 # the epoch before the interrupt is kept as it was
    assert [{k: m[k] for k in h} for m, h in zip(_metrics(out, started)["epochs"], kept)] == kept


@pytest.mark.parametrize("argv, expected", [
    (["--lr", "0.01,abc"], "fastcnn-sweep: error: --lr '0.01,abc': expected a number, got 'abc'"),
    (["--seed", "0,,1"], "fastcnn-sweep: error: --seed '0,,1': give a comma-separated list without empty items"),
    (["--optimizer", "sgd,rmsprop"], "fastcnn-sweep: error: --optimizer 'sgd,rmsprop': expected one of adamw, sgd"),
    (["--seed", "1,1"], "fastcnn-sweep: error: --seed '1,1': '1' is listed twice"),
    (["--optimizer", "adamw", "--momentum", "0.9"], "fastcnn-sweep: error: --momentum applies only to sgd runs"),
    (["--batchnorm", "maybe"], "fastcnn-sweep: error: --batchnorm 'maybe': expected on or off"),
    (["--early-stop", "2"], "fastcnn-sweep: error: --early-stop needs --val-split (it watches the validation loss)"),
    (["--val-split", "0.1,1.5"], "fastcnn-sweep: error: --val-split '0.1,1.5': a validation split is a count of "
                                 "images (e.g. 5000) or a fraction in (0, 1)"),
    (["--augment", "none,flip"], "fastcnn-sweep: error: --augment 'none,flip': expected one of shift, crop-flip"),
    (["--val-split", "0.1", "--early-stop", "0"], "fastcnn-sweep: error: --early-stop '0': "),
])
def test_bad_option_list_is_one_line_usage_error(argv, expected, capsys, tmp_path):
    assert sweep_main([*argv, "--out", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert not (tmp_path / "out").exists()


def test_bad_option_list_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastcnn.sweep", "--dropout", "0.5,1.5"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.startswith("fastcnn-sweep: error: --dropout '0.5,1.5': must be a finite number"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_missing_data_is_one_line_before_any_cluster_starts(tmp_path, capsys, monkeypatch):
    # Nowhere to find MNIST: no $FASTCNN_DATA_DIR (searched after --data-dir), an empty cache.
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code = sweep_main(["--data-dir", str(empty), "--no-download", "--epochs", "1", "--limit-train", "64",
                       "--limit-test", "50", "--out", str(tmp_path / "o"), *LOCAL])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    # The data's own message, as fastcnn-train gives it: said once, and no download it never tried.
    assert err.count("\n") == 1, err
    assert err.startswith(f"fastcnn-sweep: error: --data-dir {empty} lacks all 4 IDX files"), err
    assert "put the MNIST files there" in err and "download" not in err
    assert not (tmp_path / "o").exists()


def test_default_sweep_is_sgd_against_adamw():
    runs = build_runs({})
    assert [r.name for r in runs] == ["sgd", "adamw"]
    assert [r.config.optimizer for r in runs] == ["sgd", "adamw"]
    assert {r.config.seed for r in runs} == {0} and {r.config.epochs for r in runs} == {DEFAULT_EPOCHS}
    assert runs[0].config.momentum == 0.9 and runs[1].config.momentum is None


def test_grid_order_names_and_momentum_only_for_sgd():
    runs = build_runs({"optimizer": ["sgd", "adamw"], "momentum": [0.5, 0.9], "batchnorm": [False, True]})
    assert [r.name for r in runs] == ["sgd_momentum0.5_nobn", "sgd_momentum0.5_bn", "sgd_momentum0.9_nobn",
                                      "sgd_momentum0.9_bn", "adamw_momentum-default_nobn", "adamw_momentum-default_bn"]
    assert [r.config.momentum for r in runs] == [0.5, 0.5, 0.9, 0.9, None, None]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_runs_file(tmp_path, suffix):
    if suffix == ".toml":
        pytest.importorskip("tomllib", reason="TOML runs files need Python >= 3.11")
        text = ('[defaults]\nepochs = 2\nlimit-train = 500\n\n[[runs]]\nname = "slow-sgd"\noptimizer = "sgd"\n'
                'lr = 0.001\n\n[[runs]]\noptimizer = "adamw"\nbatchnorm = true\nseed = [0, 1]\n')
    else:
        text = json.dumps({"defaults": {"epochs": 2, "limit_train": 500},
                           "runs": [{"name": "slow-sgd", "optimizer": "sgd", "lr": 0.001},
                                    {"optimizer": "adamw", "batchnorm": True, "seed": [0, 1]}]})
    path = tmp_path / f"runs{suffix}"
    path.write_text(text)
    runs = build_runs({"dropout": [0.25]}, load_runs_file(path))
    assert [r.name for r in runs] == ["slow-sgd", "adamw_lr-default_bn_seed0", "adamw_lr-default_bn_seed1"]
    assert [r.group for r in runs] == ["slow-sgd", "adamw_lr-default_bn", "adamw_lr-default_bn"]
    assert [(r.config.optimizer, r.config.lr, r.config.batchnorm, r.config.seed) for r in runs] == [
        ("sgd", 0.001, False, 0), ("adamw", 2e-3, True, 0), ("adamw", 2e-3, True, 1)]
    assert {(r.config.epochs, r.config.limit_train, r.config.dropout) for r in runs} == {(2, 500, 0.25)}


def test_runs_file_errors_name_the_entry(tmp_path, capsys):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"runs": [{"optimizer": "sgd"}, {"lr": 0.1, "learning_rate": 3}]}))
    assert sweep_main(["--runs", str(path), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"fastcnn-sweep: error: --runs '{path}': runs[1]: unknown option 'learning_rate'"), err


def test_validation_options_reach_every_run_and_name_it(tmp_path):
    runs = build_runs({"optimizer": ["adamw"], "val_split": [0.1, 500], "early_stop": [3],
                       "augment": [None, "crop-flip"]})
    assert [r.name for r in runs] == ["val-split0.1_noaug", "val-split0.1_crop-flip", "val-split500_noaug",
                                      "val-split500_crop-flip"]
    assert [(r.config.val_split, r.config.early_stop, r.config.augment) for r in runs] == [
        (0.1, 3, None), (0.1, 3, "crop-flip"), (500, 3, None), (500, 3, "crop-flip")]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"runs": [{"val-split": 0.2, "augment": "shift", "early_stop": 2},
                                         {"augment": "none"}]}))
    path_runs = build_runs({}, load_runs_file(path))
    assert [(r.config.val_split, r.config.early_stop, r.config.augment) for r in path_runs] == [
        (0.2, 2, "shift"), (None, None, None)]


def _fake(name, val_split, history, final_test=None, early=None, status="completed"):
    """A summary record of a run that 'trained' ``history`` (no training: the ranking alone)."""
    from fastcnn.train import TrainConfig
    spec = RunSpec(name=name, group=name, config=TrainConfig(val_split=val_split).resolved(), given={})
    doc = {"epochs": [{"epoch": i + 1, "train_loss": 1.0, "seconds": 1.0, **m} for i, m in enumerate(history)]}
    if final_test is not None:
        doc["final_test"] = {"test_loss": 0.5, "test_acc": final_test}
    if early is not None:
        doc["early_stopping"] = {"best_epoch": early, "stopped_early": True}
    return record(spec, {"status": status, "document": doc}, "/out", "mnist")


def test_a_validation_split_ranks_by_val_acc_never_by_the_test_set(tmp_path):
    # b has the better test accuracy, a the better validation accuracy (of the model it kept: epoch
    # 1, by early stopping, not its last epoch's 0.70): a ranks first, the test set only reports.
    a = _fake("a", 0.1, [{"val_loss": 0.3, "val_acc": 0.90}, {"val_loss": 0.4, "val_acc": 0.70}], 0.91, early=1)
    b = _fake("b", 0.1, [{"val_loss": 0.3, "val_acc": 0.85}, {"val_loss": 0.2, "val_acc": 0.88}], 0.95)
    c = _fake("c", 0.1, [{"val_loss": 0.3, "val_acc": 0.99}], None, status="interrupted")
    assert (a["val_acc"], a["best_val_acc"], a["best_epoch"], a["final_test_acc"]) == (0.90, 0.90, 1, 0.91)
    assert (b["val_acc"], b["final_test_acc"], b["best_test_acc"]) == (0.88, 0.95, None)
    assert [r["run"] for r in rank([b, c, a])] == ["a", "b", "c"]          # a completed run before any other
    assert (a["rank"], b["rank"], c["rank"]) == (1, 2, 3)
    table = _table([b, c, a]).splitlines()
    assert table[0].split() == ["rank", "run", "status", "val", "acc", "test", "acc", "s/epoch"]
    assert [line.split()[:2] for line in table[1:4]] == [["1", "a"], ["2", "b"], ["3", "c"]]
    assert "90.00%" in table[1] and "91.00%" in table[1] and "ranked by val acc" in table[-1]
    write_summary(tmp_path, [b, a], {})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ranking"] == {"by": "val_acc", "runs": ["a", "b"]}
    assert [r["run"] for r in summary["runs"]] == ["b", "a"]               # the runs keep their order
    figs = comparison_figures([b, a])
    bars = figs["final_acc"].axes[0].patches
    assert [p.get_gid() for p in bars] == ["a", "b"]                       # best first, by val acc
    assert [p.get_height() for p in bars] == pytest.approx([90.0, 88.0])
    assert figs["final_acc"].axes[0].get_ylabel() == "val acc (%)"
    curves = {line.get_gid(): list(line.get_ydata()) for line in figs["test_acc"].axes[0].lines}
    assert curves == {"a": pytest.approx([90.0, 70.0]), "b": pytest.approx([85.0, 88.0])}


def test_without_a_validation_split_runs_rank_by_final_test_acc():
    a = _fake("a", None, [{"test_acc": 0.97}, {"test_acc": 0.93}])
    b = _fake("b", None, [{"test_acc": 0.90}, {"test_acc": 0.95}])
    assert (a["final_test_acc"], a["best_test_acc"], a["best_epoch"], a["val_acc"]) == (0.93, 0.97, 1, None)
    assert [r["run"] for r in rank([a, b])] == ["b", "a"]
    assert "ranked by final test accuracy" in _table([a, b])


def test_a_validation_sweep_early_stops_and_reruns_as_completed(mnist_dir, tmp_path, capsys):
    """lr 0.03 stops early on these settings (validation loss up in epoch 3, epoch 2 kept); lr 0.005
    trains all 5 epochs. Both complete; a rerun trains neither again."""
    out = tmp_path / "out"
    argv = ["--optimizer", "adamw", "--lr", "0.005,0.03", "--lr-schedule", "constant", "--val-split", "64",
            "--early-stop", "1", "--augment", "none", "--epochs", "5", "--limit-train", "512", "--limit-test", "100",
            "--batch-size", "64", *LOCAL, "--data-dir", str(mnist_dir),
            "--out", str(out)]
    assert sweep_main(argv) == EXIT_OK, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    runs = {r["run"]: r for r in summary["runs"]}
    assert summary["ranking"] == {"by": "val_acc", "runs": ["lr0.005", "lr0.03"]}
    for name, r in runs.items():
        doc = _metrics(out, name)
        assert r["status"] == doc["status"] == "completed" and r["ranked_by"] == "val_acc"
        assert (doc["config"]["val_split"], doc["config"]["early_stop"], doc["config"]["augment"]) == (64, 1, None)
        assert all("test_acc" not in m and "val_acc" in m for m in doc["epochs"])     # the test set: once, at the end
        assert r["final_test_acc"] == doc["final_test"]["test_acc"]
        kept = doc["early_stopping"]["best_epoch"]
        assert r["val_acc"] == doc["epochs"][kept - 1]["val_acc"]
    assert runs["lr0.005"]["epochs_done"] == 5 and not _metrics(out, "lr0.005")["early_stopping"]["stopped_early"]
    stopped = _metrics(out, "lr0.03")["early_stopping"]
    assert stopped["stopped_early"] and runs["lr0.03"]["epochs_done"] < 5 and stopped["best_epoch"] < 5
    assert runs["lr0.005"]["rank"] == 1 and runs["lr0.005"]["val_acc"] > runs["lr0.03"]["val_acc"]
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"rank", "val_acc", "final_test_acc", "val_split", "early_stop", "augment"} <= set(header)
    capsys.readouterr()

    assert sweep_main([a for a in argv if a != "-q"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "(0 to train, 2 completed earlier)" in text, text
    assert "rank  run      status       val acc  test acc" in text and "ranked by val acc" in text, text


def test_readme_and_docs_document_the_sweep():
    assert "pip install 'fastcnn[sweep]'" in (REPO / "README.md").read_text()
    text = (REPO / "docs" / "sweep.md").read_text()
    assert "fastcnn-sweep" in text and "dask scheduler" in text and "dask worker" in text
