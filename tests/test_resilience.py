"""Training that survives: exact resume, Ctrl-C and SIGTERM, divergence, damaged checkpoints, bad
arguments, reproducible metrics, protected outputs, signals, closed pipes and full disks.

The library tests train a few steps on synthetic data; the command-line tests run the real
``fastcnn-train`` in a subprocess on a few thousand real MNIST images, numba backend (its kernels
load from Numba's cache that the rest of the suite has filled).
"""
from __future__ import annotations

import json
import signal
import stat
import subprocess
import time

import numpy as np
import pytest

import fastcnn.model
from fastcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastcnn.cli import train_main
from fastcnn.train import TIMING_KEYS, ResumeRefused, TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted
from fastcnn.trainconfig import OPTIONAL_TIMING_KEYS

from helpers import (
    PNG_SIGNATURE,
    assert_one_error_line,
    cli_command,
    run_cli,
    subprocess_env,
    synthetic,
    write_custom_dataset,
)


def config(**overrides):
    options = dict(epochs=2, batch_size=32, backend="numpy", quiet=True, warmup=False)
    options.update(overrides)
    return TrainConfig(**options)


def stop_after_epoch(state, metrics):
    state.stop_requested = True


def assert_same_run(a, b):
    """Two RunStates are bit-identical: parameters and buffers, optimizer state, generators, step,
    and the metrics without their wall-clock fields."""
    pa, pb = a.model.state_arrays(), b.model.state_arrays()
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
        assert pa[name].dtype == pb[name].dtype
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert a.shuffle_rng.bit_generator.state == b.shuffle_rng.bit_generator.state
    assert (a.epoch, a.step) == (b.epoch, b.step)
    assert a.summary(timings=False) == b.summary(timings=False)


# ------------------------------------------------------------------------- library: exact resume

RESUME_CASES = [
    dict(),
    dict(optimizer="sgd", lr_schedule="constant"),
    dict(batchnorm=True),                                   # running statistics travel too
    dict(dtype="float64", epochs=3),
    dict(backend="numba", warmup=True),
]


@pytest.mark.parametrize("overrides", RESUME_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "adamw")
def test_resume_after_an_epoch_is_bit_identical(overrides, tmp_path):
    data, cfg = synthetic(96), config(**overrides)
    straight = Trainer(cfg, data).run()

    first = Trainer(cfg, data, callbacks=[stop_after_epoch])
    first.run()
    assert first.state.epoch == 1
    path = first.save_checkpoint(tmp_path / "run.npz")

    resumed = Trainer(cfg, data)
    assert resumed.restore(path) == []                      # nothing that would break bit-identity
    assert resumed.state.epoch == 1 and len(resumed.state.history) == 1
    resumed.run()
    assert_same_run(straight, resumed.state)
    assert [list(m) for m in resumed.state.history] == [list(m) for m in straight.history]   # key order


def test_checkpoint_records_versions_backend_threads_and_seed(tmp_path):
    t = Trainer(config(seed=7), synthetic(96), callbacks=[stop_after_epoch])
    t.run()
    header = load_checkpoint(t.save_checkpoint(tmp_path / "c.npz")).header
    assert header["config"]["seed"] == 7 and header["backend"] == "numpy"
    assert "threads" in header and set(header["versions"]) >= {"python", "numpy", "numba", "fastcnn"}
    assert header["epoch"] == 1 and header["extra"]["step"] == 3
    assert set(header["rngs"]) == {"shuffle", "dropout/7"}
    assert len(header["extra"]["data"]["sha256"]) == 64


@pytest.mark.parametrize("change,needle", [
    (dict(lr=0.01), "lr"),
    (dict(batch_size=16), "batch_size"),
    (dict(seed=1), "seed"),
    (dict(dtype="float64"), "dtype"),
    (dict(dropout=0.25), "dropout"),
    (dict(batchnorm=True), "batchnorm"),
])
def test_restore_refuses_other_settings_and_changes_nothing(change, needle, tmp_path):
    data = synthetic(96)
    t = Trainer(config(), data, callbacks=[stop_after_epoch])
    t.run()
    path = t.save_checkpoint(tmp_path / "c.npz")
    other = Trainer(config(**change), data)
    before = {k: v.copy() for k, v in other.state.model.state_arrays().items()}
    rng_before = other.state.shuffle_rng.bit_generator.state
    with pytest.raises(CheckpointError, match=needle) as info:
        other.restore(path)
    assert "\n" not in str(info.value) and "c.npz" in str(info.value)
    for k, v in other.state.model.state_arrays().items():
        np.testing.assert_array_equal(v, before[k])
    assert other.state.shuffle_rng.bit_generator.state == rng_before and other.state.epoch == 0


def test_restore_refuses_other_data(tmp_path):
    t = Trainer(config(), synthetic(96, seed=0), callbacks=[stop_after_epoch])
    t.run()
    path = t.save_checkpoint(tmp_path / "c.npz")
    with pytest.raises(CheckpointError, match="other data"):
        Trainer(config(), synthetic(96, seed=1)).restore(path)


@pytest.mark.parametrize("epochs", [1, 2])
def test_restore_refuses_a_checkpoint_with_no_epoch_left(epochs, tmp_path):
    data = synthetic(96)
    t = Trainer(config(epochs=2), data)
    t.run()
    path = t.save_checkpoint(tmp_path / "c.npz")
    with pytest.raises(ResumeRefused, match=f"has completed 2 of {epochs} epochs") as info:
        Trainer(config(epochs=epochs), data).restore(path)
    assert info.value.epochs_done == 2 and isinstance(info.value, CheckpointError)


def test_restore_refuses_a_model_only_checkpoint(tmp_path):
    t = Trainer(config(), synthetic(96))
    save_checkpoint(tmp_path / "m.npz", t.state.model, None, epoch=0, history=[], config={}, rngs=None)
    with pytest.raises(CheckpointError, match="model only"):
        t.restore(tmp_path / "m.npz")


def test_resume_with_more_epochs_notes_the_schedule_change(tmp_path):
    data = synthetic(96)
    t = Trainer(config(epochs=1), data)
    t.run()
    path = t.save_checkpoint(tmp_path / "c.npz")
    longer = Trainer(config(epochs=2), data)
    notes = longer.restore(path)
    assert len(notes) == 1 and "cosine" in notes[0]
    longer.run()
    assert [m["epoch"] for m in longer.state.history] == [1, 2]


# ----------------------------------------------------------------- library: stopping, divergence

def test_stop_requested_mid_epoch_abandons_the_epoch():
    t = Trainer(config(), synthetic(96))
    calls = []
    real_step = t.state.model.train_step

    def step(x, y, optimizer):
        calls.append(1)
        if len(calls) == 2:
            t.state.stop_requested = True
        return real_step(x, y, optimizer)

    t.state.model.train_step = step
    with pytest.raises(TrainingInterrupted) as info:
        t.run()
    assert (info.value.epoch, info.value.batch, info.value.batches) == (1, 3, 3)
    assert t.state.epoch == 0 and t.state.history == [] and len(calls) == 2


def test_huge_learning_rate_diverges_with_epoch_and_batch():
    t = Trainer(config(lr=1e8, lr_schedule="constant", epochs=3), synthetic(96))
    with pytest.raises(TrainingDiverged) as info:
        t.run()
    exc = info.value
    assert 1 <= exc.batch <= 3 and len(t.state.history) == exc.epoch - 1
    assert f"epoch {exc.epoch} at batch {exc.batch}/3" in str(exc) and "learning rate" in str(exc)


def test_a_non_finite_parameter_is_caught_even_when_the_loss_is_finite():
    t = Trainer(config(), synthetic(96))
    real_step = t.state.optimizer.step

    def poisoned(*args, **kwargs):
        real_step(*args, **kwargs)
        if t.state.step == 4:                          # state.step counts steps before this one
            t.state.model.layers[3].params["weight"][0, 0, 0, 0] = np.inf

    t.state.optimizer.step = poisoned
    with pytest.raises(TrainingDiverged, match=r"epoch 2 at batch 2/3: parameter 3\.weight"):
        t.run()
    assert len(t.state.history) == 1


# ------------------------------------------------------------------------- command line, real data

def train_args(mnist_dir, *extra, limit_train=6000, epochs=2):
    return ["--data-dir", mnist_dir, "--no-download", "--limit-train", limit_train, "--limit-test", 500,
            "--epochs", epochs, "--backend", "numba", "--no-timings", *extra]


def wait_for(path, proc, timeout=240):
    """Poll until ``path`` exists or the process ends."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"fastcnn-train ended early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.01)


def start(args, cwd, pause=None):
    """Start fastcnn-train; ``pause`` = (phase, epoch, batch, marker file): the run creates the
    marker when it reaches that point and waits there until a stop is requested (fastcnn/_pause.py),
    so a signal sent after the marker appears lands exactly there, however loaded the machine."""
    env = subprocess_env()
    if pause is not None:
        env["FASTCNN_TEST_PAUSE"] = ":".join(map(str, pause))
    return subprocess.Popen(cli_command(args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def params_of(path):
    return load_checkpoint(path).params


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_then_resume_equals_a_straight_run(sig, code, mnist_dir, tmp_path):
    """Train 2 epochs straight; separately, stop a run with a real signal early in epoch 2 and
    resume it. Final parameters (the --save-model files) and metrics must be bit-identical."""
    straight = run_cli(train_args(mnist_dir, "--metrics", "straight.json", "--save-model", "straight.npz",
                                  "--plots-dir", "straight", limit_train=2000), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr

    ckpt = tmp_path / "run.npz"
    marker = tmp_path / "at-epoch-2-batch-2"
    proc = start(train_args(mnist_dir, "--checkpoint", ckpt, "--metrics", "m.json", "--plots-dir", "plots",
                            limit_train=2000), tmp_path, pause=("train", 2, 2, marker))
    wait_for(marker, proc)                                  # the run waits before epoch 2's batch 2
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastcnn-train: stopped by {sig.name} in epoch 2 before batch 2/"), err
    assert f"resume with: fastcnn-train --resume {ckpt}" in last
    assert load_checkpoint(ckpt).epoch == 1                 # the last complete epoch
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["stopped"]["reason"] == sig.name
    assert metrics["stopped"]["epoch"] == 2 and metrics["stopped"]["batch"] == 2
    assert [m["epoch"] for m in metrics["epochs"]] == [1]
    for name in ("train_loss.png", "test_acc.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE
    assert not list(tmp_path.glob("**/.*.tmp")), "a temporary file was left behind"

    resumed = run_cli(["--resume", ckpt, "--metrics", "m.json", "--no-timings", "--save-model", "resumed.npz",
                       "--plots-dir", "plots"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    notes = [line for line in resumed.stdout.splitlines() if line.startswith("note:")]
    assert all("other programs used the cores" in line for line in notes), notes   # nothing breaks bit-identity
    a, b = params_of(tmp_path / "straight.npz"), params_of(tmp_path / "resumed.npz")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    done = json.loads((tmp_path / "m.json").read_text())
    assert done["status"] == "completed"
    straight_epochs = json.loads((tmp_path / "straight.json").read_text())["epochs"]
    assert json.dumps(done["epochs"]) == json.dumps(straight_epochs)      # values and key order
    assert load_checkpoint(ckpt).epoch == 2


def test_identical_seed_runs_write_byte_identical_metrics(mnist_dir, tmp_path):
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        proc = run_cli(train_args(mnist_dir, "--metrics", "m.json", "--checkpoint", "c.npz", "--seed", 3,
                                  limit_train=2000), cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        outputs.append(tmp_path / name)
    a, b = ((p / "m.json").read_bytes() for p in outputs)
    assert a == b
    doc = json.loads(a)
    assert doc["config"]["seed"] == 3 and doc["backend"] == "numba" and doc["threads"] >= 1
    assert set(doc["versions"]) == {"python", "numpy", "numba", "fastcnn"}
    assert not any(key in m for m in doc["epochs"] for key in TIMING_KEYS)
    pa, pb = params_of(outputs[0] / "c.npz"), params_of(outputs[1] / "c.npz")
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


def test_forced_divergence_stops_at_once_with_one_line(mnist_dir, tmp_path):
    proc = run_cli(train_args(mnist_dir, "--lr", "1e4", "--checkpoint", "c.npz", "--metrics", "m.json",
                              "--save-model", "model.npz", limit_train=2000), cwd=tmp_path)
    assert proc.returncode == 3
    assert_one_error_line(proc.stderr)
    assert "training diverged in epoch 1 at batch" in proc.stderr and "no checkpoint was written" in proc.stderr
    assert "no --save-model file" in proc.stderr and not (tmp_path / "model.npz").exists()
    assert "RuntimeWarning" not in proc.stderr
    assert not (tmp_path / "c.npz").exists()
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "diverged" and doc["stopped"]["epoch"] == 1 and doc["epochs"] == []


# ------------------------------------------------------------- command line, in-process, synthetic

def small_args(tmp_path, *extra):
    data = tmp_path / "data"
    if not data.exists():
        write_custom_dataset(data, n_train=64, n_test=32)
    return ["--dataset", "custom", "--data-dir", str(data), "--batch-size", "32", "--backend", "numpy",
            "--plots-dir", str(tmp_path / "plots"), *map(str, extra)]


def test_divergence_after_a_good_epoch_keeps_its_checkpoint_and_plots(tmp_path, capsys, monkeypatch):
    real = fastcnn.model.Sequential.train_step
    calls = []

    def nan_in_epoch_2(self, x, y, optimizer):
        calls.append(1)
        loss, hits = real(self, x, y, optimizer)
        return (float("nan") if len(calls) == 4 else loss), hits   # call 1 is the warm-up step

    monkeypatch.setattr(fastcnn.model.Sequential, "train_step", nan_in_epoch_2)
    ckpt = tmp_path / "c.npz"
    rc = train_main(small_args(tmp_path, "--epochs", 3, "--checkpoint", ckpt, "--metrics", tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 3
    assert_one_error_line(err)
    assert "epoch 2 at batch 1/2: the loss is nan" in err and f"(epoch 1) is {ckpt}" in err
    assert load_checkpoint(ckpt).epoch == 1
    assert (tmp_path / "plots" / "train_loss.png").is_file() and (tmp_path / "plots" / "test_acc.png").is_file()
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "diverged" and len(doc["epochs"]) == 1


def test_metrics_keep_timings_unless_asked(tmp_path, capsys):
    assert train_main(small_args(tmp_path, "--epochs", 1, "--metrics", tmp_path / "m.json")) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "completed"
    # augment_seconds (an optional timing) is measured only with augmentation (tests/test_train_validation.py)
    assert set(TIMING_KEYS) <= set(doc["epochs"][0]) and "warmup_seconds" in doc
    assert not set(OPTIONAL_TIMING_KEYS) & set(doc["epochs"][0])


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_change_a_weight(path):
    """A well-formed archive whose weights no longer match the header's SHA-256."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["param/0.weight"] = arrays["param/0.weight"] * 2
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def damage_flip_a_weight_byte(path):
    ckpt = load_checkpoint(path)
    raw = bytearray(path.read_bytes())
    needle = ckpt.arrays["param/0.weight"].tobytes()[:16]
    at = raw.find(needle)
    raw[at + 3] ^= 0xFF
    path.write_bytes(bytes(raw))


def damage_empty(path):
    path.write_bytes(b"")


def damage_not_a_zip(path):
    path.write_text("hello, not a checkpoint\n")


def damage_drop_the_header(path):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "__header__"}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def damage_edit_the_architecture(path):
    """Change the saved layer list (as if written by another network) and fix up nothing else."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["__header__"].tobytes())
    header["architecture"]["config"][0]["out_channels"] = 16
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


DAMAGE = [(damage_truncate, "damaged"), (damage_flip_a_weight_byte, "Bad CRC-32"),
          (damage_change_a_weight, "SHA-256"), (damage_empty, "empty"),
          (damage_not_a_zip, "not an .npz"), (damage_drop_the_header, "no __header__"),
          (damage_edit_the_architecture, "damaged or modified")]


@pytest.mark.parametrize("damage,needle", DAMAGE, ids=[d.__name__[len("damage_"):] for d, _ in DAMAGE])
def test_damaged_checkpoint_is_refused_and_nothing_is_overwritten(damage, needle, tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    assert train_main(small_args(tmp_path, "--epochs", 1, "--checkpoint", ckpt)) == 0
    damage(ckpt)
    before = ckpt.read_bytes()
    plots = {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()}
    capsys.readouterr()
    rc = train_main(small_args(tmp_path, "--resume", ckpt, "--epochs", 2, "--metrics", tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 1, err
    assert_one_error_line(err)
    assert needle in err and str(ckpt) in err
    assert ckpt.read_bytes() == before
    assert {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()} == plots
    assert not (tmp_path / "m.json").exists()


def test_missing_resume_file(tmp_path, capsys):
    rc = train_main(small_args(tmp_path, "--resume", tmp_path / "nope.npz"))
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_error_line(err)
    assert "no such file" in err


def test_model_only_file_cannot_be_resumed_but_evaluates(tmp_path, capsys):
    model = tmp_path / "model.npz"
    assert train_main(small_args(tmp_path, "--epochs", 1, "--save-model", model)) == 0
    assert load_checkpoint(model).header["optimizer"] is None
    capsys.readouterr()
    assert train_main(small_args(tmp_path, "--resume", model, "--epochs", 2)) == 1
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "model only" in err


# ------------------------------------------------------------------------ bad arguments, table

def existing_checkpoint(tmp_path):
    ckpt = tmp_path / "done.npz"
    if not ckpt.exists():
        assert train_main(small_args(tmp_path, "--epochs", 1, "--checkpoint", ckpt, "--quiet")) == 0
    return ckpt


BAD = [
    # (arguments given a tmp_path and an existing 1-epoch checkpoint, exit code, words in the message)
    (lambda t, c: ["--checkpoint", c], 2, "already exists"),
    (lambda t, c: ["--checkpoint", t], 2, "is a directory"),
    (lambda t, c: ["--metrics", f"{t / 'new'}/"], 2, "/new/' is a directory"),
    (lambda t, c: ["--checkpoint", t / "file.txt" / "c.npz"], 2, "--checkpoint folder"),
    (lambda t, c: ["--save-model", t / "x.npz", "--metrics", t / "x.npz"], 2, "same file"),
    (lambda t, c: ["--checkpoint", t / "plots" / "test_acc.png"], 2, "same file"),
    (lambda t, c: ["--resume", c], 2, "completed 1 of 1 epochs"),
    (lambda t, c: ["--resume", c, "--epochs", 3, "--lr", "0.1"], 2, "--lr 0.1 (checkpoint: 0.002)"),
    (lambda t, c: ["--resume", c, "--epochs", 3, "--batch-size", 16], 2, "--batch-size 16"),
    (lambda t, c: ["--resume", c, "--epochs", 3, "--seed", 5], 2, "--seed 5"),
    (lambda t, c: ["--resume", c, "--epochs", 3, "--dataset", "mnist"], 2, "--dataset mnist"),
    (lambda t, c: ["--resume", t / "missing.npz"], 1, "no such file"),
    (lambda t, c: ["--resume", t / "file.txt"], 1, "not a checkpoint"),
    (lambda t, c: ["--resume", t], 1, "is a directory"),
    (lambda t, c: ["--epochs", 0], 2, "--epochs"),
    (lambda t, c: ["--limit-train", 0], 2, "--limit-train"),
    (lambda t, c: ["--batch-size", 1000], 2, "--batch-size 1000"),
    (lambda t, c: ["--plots-dir", t / "file.txt"], 2, "--plots-dir"),
]


@pytest.mark.parametrize("make,code,needle", BAD, ids=[b[2] for b in BAD])
def test_bad_arguments_table(make, code, needle, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder\n")
    ckpt = existing_checkpoint(tmp_path)
    before = ckpt.read_bytes()
    capsys.readouterr()
    rc = train_main(small_args(tmp_path, *make(tmp_path, ckpt)))
    out, err = capsys.readouterr()
    assert rc == code, err
    assert_one_error_line(err)
    assert needle in err, err
    assert out == ""
    assert ckpt.read_bytes() == before


def test_resume_runs_on_after_an_extension(tmp_path, capsys):
    ckpt = existing_checkpoint(tmp_path)
    rc = train_main(small_args(tmp_path, "--resume", ckpt, "--epochs", 2, "--metrics", tmp_path / "m.json"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "resuming" in out and "note: the cosine" in out
    assert load_checkpoint(ckpt).epoch == 2
    assert [m["epoch"] for m in json.loads((tmp_path / "m.json").read_text())["epochs"]] == [1, 2]


# ------------------------------------------------------------------------------ library, bad input

@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 6)


LIBRARY_BAD = [
    (lambda x, y: (x[:, :, :, :27], y), ValueError, r"expects input of shape \(N, 1, 28, 28\), got \(6, 1, 28, 27\)"),
    (lambda x, y: (x[0], y[:1]), ValueError, "expects input of shape"),
    (lambda x, y: (x.astype(np.float64), y), TypeError, "float32 parameters but got float64"),
    (lambda x, y: (x.astype(np.int32), y), TypeError, "float32 or float64"),
    (lambda x, y: (x.tolist(), y), TypeError, "numpy array"),
    (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), y),
     ValueError, "NaN or infinite"),
    (lambda x, y: (np.full_like(x, np.inf), y), ValueError, "NaN or infinite"),
    (lambda x, y: (x, y.astype(np.float64)), TypeError, "integers"),
    (lambda x, y: (x, y[:-1]), ValueError, "one label per image"),
    (lambda x, y: (x, np.where(y == y[0], 10, y)), ValueError, r"labels must lie in \[0, 9\]"),
    (lambda x, y: (x[:0], y[:0]), ValueError, "non-empty batch"),
]


LIBRARY_BAD_IDS = ["28x27", "3d", "float64", "int32", "list", "one-nan", "all-inf", "float-labels",
                   "short-labels", "label-10", "empty"]


@pytest.mark.parametrize("method", ["train_step", "evaluate"])
@pytest.mark.parametrize("make,error,match", LIBRARY_BAD, ids=LIBRARY_BAD_IDS)
def test_library_raises_typed_errors_and_changes_nothing(method, make, error, match, batch):
    from fastcnn.model import mnist_cnn
    from fastcnn.optim import AdamW
    model = mnist_cnn(backend="numpy")
    before = {k: v.copy() for k, v in model.state_arrays().items()}
    x, y = make(*batch)
    with pytest.raises(error, match=match):
        if method == "train_step":
            model.train_step(x, y, AdamW(model))
        else:
            model.evaluate(x, y)
    for k, v in model.state_arrays().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed"])
def test_non_contiguous_batches_train_exactly_like_contiguous_ones(backend, layout, batch):
    from fastcnn.model import mnist_cnn
    from fastcnn.optim import AdamW
    x, y = batch
    if layout == "fortran":
        view = np.asfortranarray(x)
    elif layout == "strided":
        view = np.repeat(x, 2, axis=0)[::2]
    else:
        view = x[::-1, :, ::-1][::-1, :, ::-1]               # same values, negative strides underneath
    assert not view.flags.c_contiguous or layout == "reversed"
    np.testing.assert_array_equal(view, x)
    results = []
    for data in (x, view):
        model = mnist_cnn(backend=backend, seed=1)
        opt = AdamW(model)
        results.append((model.train_step(data, y, opt), model.train_step(data, y, opt),
                        model.evaluate(data, y, batch_size=4), model.state_arrays()))
    (a1, a2, ea, pa), (b1, b2, eb, pb) = results
    assert (a1, a2, ea) == (b1, b2, eb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


# --------------------------------------------- real processes: signals, pipes, locks, full disks

def small_subprocess_args(tmp_path, *extra, epochs=2):
    data = tmp_path / "data"
    if not data.exists():
        write_custom_dataset(data, n_train=256, n_test=64)
    return ["--dataset", "custom", "--data-dir", data, "--batch-size", 32, "--backend", "numpy", "--epochs", epochs,
            "--plots-dir", tmp_path / "plots", "--no-timings", *extra]


SIGNAL_CASES = [
    # (signal, where the run waits for it, exit code, how the last line says where it stopped, epochs kept)
    (signal.SIGHUP, ("train", 2, 2), 129, "in epoch 2 before batch 2/8", 1),
    (signal.SIGQUIT, ("train", 2, 2), 131, "in epoch 2 before batch 2/8", 1),
    (signal.SIGTERM, ("train", 1, 1), 143, "in epoch 1 before batch 1/8", 0),
    (signal.SIGINT, ("eval", 1, 1), 130, "in epoch 1 during its evaluation", 0),
    (signal.SIGINT, ("eval", 2, 1), 130, "in epoch 2 during its evaluation", 1),
]


@pytest.mark.parametrize("sig,pause,code,where,kept", SIGNAL_CASES,
                         ids=[f"{c[0].name}-{c[1][0]}-{c[1][1]}-{c[1][2]}" for c in SIGNAL_CASES])
def test_every_stop_signal_stops_cleanly_with_a_final_status(sig, pause, code, where, kept, tmp_path):
    """SIGHUP and SIGQUIT like SIGTERM and SIGINT (exit 128 + n); a signal during the evaluation
    stops before its next batch. The run waits at the named batch (a test-only hook), so the
    signal lands exactly there."""
    ckpt, marker = tmp_path / "c.npz", tmp_path / "paused"
    proc = start(small_subprocess_args(tmp_path, "--checkpoint", ckpt, "--metrics", "m.json"), tmp_path,
                 pause=(*pause, marker))
    wait_for(marker, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastcnn-train: stopped by {sig.name} {where}; "), err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "interrupted" and doc["stopped"]["reason"] == sig.name
    assert len(doc["epochs"]) == kept
    if kept:
        assert load_checkpoint(ckpt).epoch == kept and f"resume with: fastcnn-train --resume {ckpt}" in last
    else:
        assert not ckpt.exists() and "nothing to resume" in last
    assert not list(tmp_path.glob("**/.*.tmp")) and not list(tmp_path.glob("**/.*.lock"))


def test_a_second_signal_stops_at_once_and_still_leaves_a_final_status(tmp_path, capsys, monkeypatch):
    """Double Ctrl-C: the first asks for a stop, the second (here while the first epoch's files are
    written) ends the process at once; the metrics still get their final status."""
    import os

    import fastcnn.cli
    real = fastcnn.cli._Run.after_epoch

    def twice(self, state, metrics):
        real(self, state, metrics)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)                  # raises out of this callback

    monkeypatch.setattr(fastcnn.cli._Run, "after_epoch", twice)
    ckpt = tmp_path / "c.npz"
    rc = train_main(small_args(tmp_path, "--epochs", 3, "--checkpoint", ckpt, "--metrics", tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fastcnn-train: stopped at once by SIGINT"), err
    assert f"epoch 1 is safe in {ckpt}" in err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "interrupted" and doc["stopped"] == {"reason": "SIGINT", "at_once": True}
    assert load_checkpoint(ckpt).epoch == 1


def test_a_closed_stdout_does_not_stop_the_run(tmp_path):
    """``fastcnn-train ... | head -1``: a real pipe whose reader goes away after the first line."""
    ckpt = tmp_path / "c.npz"
    proc = subprocess.Popen(cli_command(small_subprocess_args(tmp_path, "--checkpoint", ckpt, "--metrics", "m.json",
                                                              "--save-model", "model.npz")),
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                                      # as head -1 exits
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert first.startswith(b"fastcnn-train: custom from ")
    assert proc.returncode == 0, err
    assert err == "", err
    assert load_checkpoint(ckpt).epoch == 2 and load_checkpoint(tmp_path / "model.npz").epoch == 2
    assert json.loads((tmp_path / "m.json").read_text())["status"] == "completed"


def test_two_runs_cannot_write_one_checkpoint(tmp_path):
    """The first run holds an fcntl lock on c.npz while it runs (here: waiting at its first batch);
    a second run with the same --checkpoint is refused; the lock file goes when the first ends."""
    ckpt, marker = tmp_path / "c.npz", tmp_path / "paused"
    first = start(small_subprocess_args(tmp_path, "--checkpoint", ckpt), tmp_path, pause=("train", 1, 1, marker))
    try:
        wait_for(marker, first)
        assert (tmp_path / ".c.npz.lock").read_text().strip() == str(first.pid)
        second = run_cli(small_subprocess_args(tmp_path, "--checkpoint", ckpt, "--plots-dir", "other"),
                         cwd=tmp_path)
        assert second.returncode == 1, second.stderr
        assert_one_error_line(second.stderr)
        assert f"another fastcnn-train (pid {first.pid}) is writing {ckpt}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143
    assert not (tmp_path / ".c.npz.lock").exists()


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path, capsys):
    ckpt = tmp_path / "c.npz"
    stale = [tmp_path / ".c.npz.a1b2c3d4.tmp", tmp_path / "plots" / ".test_acc.png.zz_9y8x7.tmp"]
    kept = [tmp_path / ".c.npz.mine.tmp", tmp_path / ".other.npz.a1b2c3d4.tmp"]      # not ours to remove
    (tmp_path / "plots").mkdir()
    for path in stale + kept:
        path.write_bytes(b"partial")
    assert train_main(small_args(tmp_path, "--epochs", 1, "--checkpoint", ckpt)) == 0
    out = capsys.readouterr().out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert f"removed 1 temporary file an interrupted run left beside {ckpt}" in out


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A folder on a real 1 MiB tmpfs (room for one checkpoint, not two) when root may mount one;
    else the same capacity enforced by an OSError(ENOSPC) injected at the atomic write's fsync."""
    import errno
    import os
    import subprocess as sp

    import fastcnn._atomic
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = sp.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                         capture_output=True).returncode == 0
    except OSError:                                          # no mount command
        mounted = False
    if not mounted:
        real_fsync = os.fsync

        def fsync(fd):
            where = os.readlink(f"/proc/self/fd/{fd}")
            if where.startswith(str(disk) + os.sep):
                used = sum(p.stat().st_size for p in disk.iterdir() if p.is_file())
                if used > 1 << 20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)
        monkeypatch.setattr(fastcnn._atomic.os, "fsync", fsync)
    yield disk
    if mounted:
        sp.run(["umount", str(disk)], check=True)


def test_a_full_disk_names_the_file_and_what_is_safe(small_disk, tmp_path, capsys):
    ckpt = small_disk / "c.npz"
    rc = train_main(small_args(tmp_path, "--epochs", 3, "--checkpoint", ckpt, "--metrics", tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_error_line(err)
    assert err.startswith(f"fastcnn-train: error: free some space: writing --checkpoint {ckpt} failed "
                          "(No space left on device); epoch 1 is safe in "), err
    assert f"resume with: fastcnn-train --resume {ckpt}" in err and ".tmp" not in err
    assert load_checkpoint(ckpt).epoch == 1 and not list(small_disk.glob(".*.tmp"))
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "failed" and "No space left" in doc["error"] and len(doc["epochs"]) == 2


def test_save_model_on_a_full_disk_is_not_reported_completed(small_disk, tmp_path, capsys):
    (small_disk / "filler").write_bytes(b"\0" * (900 << 10))
    ckpt, model = tmp_path / "c.npz", small_disk / "model.npz"
    rc = train_main(small_args(tmp_path, "--epochs", 1, "--checkpoint", ckpt, "--save-model", model,
                               "--metrics", tmp_path / "m.json"))
    err = capsys.readouterr().err
    assert rc == 1
    assert_one_error_line(err)
    assert f"writing --save-model {model} failed (No space left on device)" in err
    assert f"the trained weights are safe in {ckpt} (epoch 1" in err
    assert json.loads((tmp_path / "m.json").read_text())["status"] == "failed"
    assert not model.exists()


def other_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "plots").mkdir(exist_ok=True)
    (tmp_path / "plots" / "test_acc.png").write_text("not a png\n")


OUTPUT_CASES = [
    # (arguments given tmp_path and an existing 1-epoch checkpoint, exit code, words in the message)
    (lambda t, c: ["--save-model", c], 2, "--save-model"),                    # a training checkpoint
    (lambda t, c: ["--save-model", t / "notes.txt", "--overwrite"], 2, "is not a fastcnn checkpoint"),
    (lambda t, c: ["--metrics", t / "notes.txt", "--overwrite"], 2, "is not a fastcnn metrics file"),
    (lambda t, c: ["--checkpoint", t / "notes.txt", "--overwrite"], 2, "is not a fastcnn checkpoint"),
    (lambda t, c: ["--metrics", t / "data" / "train-labels-idx1-ubyte", "--overwrite"], 2, "is a data file"),
    (lambda t, c: ["--save-model", t / "data" / "t10k-images-idx3-ubyte"], 2, "is a data file"),
    (lambda t, c: ["--resume", c, "--epochs", 2, "--checkpoint", t / "new.npz", "--metrics", c], 2,
     "is the --resume file"),
    (lambda t, c: ["--plots-dir", t / "plots", "--overwrite"], 2, "is not a PNG image"),
]


@pytest.mark.parametrize("make,code,needle", OUTPUT_CASES, ids=[str(i) for i in range(len(OUTPUT_CASES))])
def test_outputs_never_replace_another_kind_or_an_input(make, code, needle, tmp_path, capsys):
    ckpt = existing_checkpoint(tmp_path)
    other_kinds(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    args = small_args(tmp_path, *make(tmp_path, ckpt))
    rc = train_main(args)
    out, err = capsys.readouterr()
    assert rc == code, err
    assert_one_error_line(err)
    assert needle in err and out == ""
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("option", ["--save-model", "--metrics", "--checkpoint"])
def test_outputs_never_replace_a_link_or_a_pipe(option, tmp_path, capsys):
    # A rename over a path replaces whatever the path is: as root, --save-model /dev/null replaced
    # the device with a regular file. Links and pipes stand in for devices here (no root needed).
    import os
    (tmp_path / "notes.txt").write_text("mine\n")
    os.symlink(tmp_path / "notes.txt", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    for name, kind in (("link", "a symbolic link"), ("pipe", "a named pipe")):
        rc = train_main(small_args(tmp_path, option, tmp_path / name, "--overwrite"))
        out, err = capsys.readouterr()
        assert rc == 2 and out == ""
        assert_one_error_line(err)
        assert f"choose another path: {option} '{tmp_path / name}' is {kind}, not a regular file" in err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "notes.txt").read_text() == "mine\n"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)


def test_atomic_write_refuses_to_replace_a_special_file(tmp_path):
    import os

    from fastcnn._atomic import atomic_write
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "link")
    for name in ("pipe", "link"):
        with pytest.raises(OSError, match="not a regular file, and is never replaced") as info:
            atomic_write(tmp_path / name, lambda fh: fh.write(b"x"))
        assert info.value.filename == str(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "pipe"]      # no temporary file left
    assert atomic_write(tmp_path / "new", lambda fh: fh.write(b"x")).read_bytes() == b"x"


def test_overwrite_replaces_outputs_of_the_same_kind(tmp_path, capsys):
    ckpt = existing_checkpoint(tmp_path)
    metrics = tmp_path / "m.json"
    assert train_main(small_args(tmp_path, "--epochs", 1, "--metrics", metrics, "--quiet")) == 0
    assert train_main(small_args(tmp_path, "--epochs", 1, "--metrics", metrics)) == 2
    assert "--metrics" in capsys.readouterr().err
    assert train_main(small_args(tmp_path, "--epochs", 1, "--metrics", metrics, "--save-model", ckpt,
                                 "--overwrite", "--quiet")) == 0
    assert load_checkpoint(ckpt).header["optimizer"] is None                  # now a model file


DIVERGING = [["--lr", "200", "--lr-schedule", "constant"], ["--optimizer", "sgd", "--lr", "5"]]


@pytest.mark.parametrize("options", DIVERGING, ids=[" ".join(o) for o in DIVERGING])
def test_a_finite_blow_up_is_divergence_and_good_files_survive(options, mnist_dir, tmp_path):
    good = run_cli(train_args(mnist_dir, "--checkpoint", "c.npz", "--save-model", "m.npz", limit_train=1000,
                              epochs=1), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    before = {name: (tmp_path / name).read_bytes() for name in ("c.npz", "m.npz")}
    proc = run_cli(train_args(mnist_dir, *options, "--checkpoint", "c.npz", "--save-model", "m.npz", "--overwrite",
                              "--metrics", "d.json", limit_train=2000), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert_one_error_line(proc.stderr)
    assert "training diverged in epoch 1 at batch" in proc.stderr and "x the starting" in proc.stderr
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert json.loads((tmp_path / "d.json").read_text())["status"] == "diverged"


def scripted_losses(monkeypatch, losses):
    """Sequential.train_step trains for real but reports the given losses, one per call."""
    real = fastcnn.model.Sequential.train_step
    script = iter(losses)

    def step(self, x, y, optimizer):
        _, hits = real(self, x, y, optimizer)
        return next(script), hits

    monkeypatch.setattr(fastcnn.model.Sequential, "train_step", step)


GROWTH = [
    # (losses per batch, factor, window, diverged at (epoch, batch) or None)
    # 3 batches per epoch; the window holds fewer batches until that many were trained
    ([2.0, 2.0, 2.0, 50.0] + [2.0] * 5, 10, 3, None),       # one spike: means 18 < 20
    ([2.0, 2.0, 2.0, 50.0, 50.0] + [2.0] * 4, 10, 3, (2, 2)),   # held: mean 34 > 20 at the 5th batch
    ([2.0, 50.0] + [2.0] * 7, 10, 3, (1, 2)),               # early: the 2-batch mean 26 > 20
    ([2.0] * 5 + [19.0] * 4, 10, 3, None),                  # high but under 10 x 2.0
    ([2.0] * 5 + [21.0] * 4, 10, 3, (3, 2)),                # the 8th batch: mean 21 > 20
    ([2.0, 1e9, 1e9] + [2.0] * 6, 0, 3, None),              # factor 0: finite losses never diverge
]


@pytest.mark.parametrize("losses,factor,window,where", GROWTH, ids=[str(i) for i in range(len(GROWTH))])
def test_divergence_is_a_held_rise_above_the_starting_loss(losses, factor, window, where, monkeypatch):
    scripted_losses(monkeypatch, losses)
    t = Trainer(config(epochs=3, divergence_factor=factor, divergence_window=window), synthetic(96))
    if where is None:
        t.run()
        assert t.state.epoch == 3 and t.state.start_loss == 2.0
        return
    with pytest.raises(TrainingDiverged, match=rf"epoch {where[0]} at batch {where[1]}/3: mean loss") as info:
        t.run()
    assert f"> {factor:g} x the starting 2" in str(info.value) and len(t.state.history) == where[0] - 1


def test_a_resumed_run_keeps_its_starting_loss(tmp_path, monkeypatch):
    scripted_losses(monkeypatch, [2.0, 3.0, 3.0] + [30.0] * 6)
    data = synthetic(96)
    t = Trainer(config(epochs=3, divergence_window=1), data, callbacks=[stop_after_epoch])
    t.run()
    path = t.save_checkpoint(tmp_path / "c.npz")
    resumed = Trainer(config(epochs=3, divergence_window=1), data)
    resumed.restore(path)
    assert resumed.state.start_loss == 2.0
    with pytest.raises(TrainingDiverged, match="epoch 2 at batch 1/3"):      # 30 > 10 x 2.0, not 10 x 30
        resumed.run()


def test_should_stop_and_request_stop_stop_between_batches():
    """The Python way to stop a run (e.g. from a sweep's thread): should_stop() or request_stop()."""
    import threading
    event = threading.Event()
    t = Trainer(config(), synthetic(96), should_stop=event.is_set)
    seen = []

    def on_batch(phase, epoch, batch):
        seen.append((phase, epoch, batch))
        if (phase, epoch, batch) == ("train", 1, 2):
            event.set()

    t.on_batch = on_batch
    with pytest.raises(TrainingInterrupted) as info:
        t.run()
    assert (info.value.epoch, info.value.batch) == (1, 2) and seen[-1] == ("train", 1, 2)
    t2 = Trainer(config(), synthetic(96))
    t2.on_batch = lambda phase, epoch, batch: phase == "eval" and t2.request_stop()
    with pytest.raises(TrainingInterrupted) as info:
        t2.run()
    assert (info.value.epoch, info.value.batch) == (1, 4) and t2.state.history == []     # during evaluation


def test_a_signal_before_anything_slow_is_one_line(tmp_path):
    """The handlers are installed before NumPy and the data are loaded: a Ctrl-C right then (the run
    waits there, see fastcnn/_pause.py) ends with exit 130 and one line, never a traceback."""
    marker = tmp_path / "started"
    proc = start(small_subprocess_args(tmp_path, "--checkpoint", "c.npz"), tmp_path, pause=("start", 0, 0, marker))
    wait_for(marker, proc, timeout=60)
    assert int(marker.read_text()) == proc.pid
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fastcnn-train: stopped at once by SIGINT"), err
    assert not (tmp_path / "c.npz").exists() and not list(tmp_path.glob(".*"))
