"""The training loop (fastcnn.train) and the plots (fastcnn.plots).

Everything runs on the numpy backend. Only the first test needs real MNIST (the ``mnist_dir``
fixture skips it when the files are absent); the others use a small synthetic dataset.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fastcnn.data import load_dataset
from fastcnn.plots import PLOT_FILES, save_plots
from fastcnn.train import ConfigError, RunState, TrainConfig, Trainer, learning_rate, train

from helpers import PNG_SIGNATURE, synthetic

EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second",
              "eval_seconds"}


def tiny(**overrides):
    """A config that trains a few steps on the synthetic data in well under a second (no JIT
    warm-up: the numpy backend compiles nothing)."""
    options = dict(epochs=2, batch_size=64, backend="numpy", quiet=True, warmup=False)
    options.update(overrides)
    return TrainConfig(**options)


def losses(run):
    return [(m["train_loss"], m["test_loss"], m["train_acc"], m["test_acc"]) for m in run.history]


# ------------------------------------------------------------------------------------- real MNIST

def test_short_mnist_run_learns(mnist_dir):
    """5,000 training images (batch 32: 157 steps), one epoch, 2,000 test images, default AdamW
    and cosine schedule: well above 85 % for any seed, while chance is 10 %, and a loop that never
    updates, mixes up labels or evaluates the wrong model stays far below."""
    data = load_dataset("mnist", data_dir=mnist_dir, download=False)
    lines = []
    run = train(TrainConfig(epochs=1, batch_size=32, limit_train=5000, limit_test=2000, backend="numpy"),
                data, log=lines.append)
    (m,) = run.history
    assert m["test_acc"] >= 0.85, m
    assert m["train_loss"] < 1.0, m
    assert EPOCH_KEYS <= set(m)
    assert m["seconds"] > 0 and m["eval_seconds"] > 0
    assert m["images_per_second"] == pytest.approx(5000 / m["seconds"])
    assert run.step == math.ceil(5000 / 32)
    assert lines and lines[-1].startswith("epoch 1/1  loss ") and "% " in lines[-1] and lines[-1].endswith("img/s")
    summary = run.summary()
    assert summary["warmup_seconds"] > 0
    assert 0 < summary["time_to_first_batch_seconds"] < summary["warmup_seconds"] + m["seconds"] + 60


# ---------------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_history():
    data = synthetic()
    first, second = train(tiny(seed=3), data), train(tiny(seed=3), data)
    assert losses(first) == losses(second)
    for name, w in first.model.state_arrays().items():
        np.testing.assert_array_equal(w, second.model.state_arrays()[name], err_msg=name)


def test_different_seeds_differ():
    data = synthetic()
    assert losses(train(tiny(seed=0), data)) != losses(train(tiny(seed=1), data))


def test_shuffle_stream_depends_only_on_seed():
    """The epoch order comes from its own stream: same seed -> same order whatever the other
    options, different seed -> different order, and it is not the model's init stream."""
    data = synthetic()

    def order(**kw):
        return Trainer(tiny(**kw), data).state.shuffle_rng.permutation(len(data.x_train))

    np.testing.assert_array_equal(order(seed=5), order(seed=5, batch_size=32, dropout=0.0, optimizer="sgd"))
    assert not np.array_equal(order(seed=5), order(seed=6))
    init_stream = np.random.default_rng(np.random.SeedSequence(5).spawn(2)[0])
    assert not np.array_equal(order(seed=5), init_stream.permutation(len(data.x_train)))


def test_warm_up_leaves_the_real_model_untouched():
    """The JIT warm-up runs on a deep copy: with or without it, the same run to the last bit."""
    data = synthetic()
    warm, cold = train(tiny(seed=2, warmup=True), data), train(tiny(seed=2, warmup=False), data)
    assert warm.warmup_seconds > 0 and cold.warmup_seconds == 0
    assert losses(warm) == losses(cold)
    assert warm.optimizer.t == cold.optimizer.t == warm.step


def test_warm_up_seconds_include_what_runs_before_the_step():
    """fastcnn-train compiles the kernels in ``prepare``: that time is the run's warm-up too."""
    trainer, calls = Trainer(tiny(), synthetic()), []
    seconds = trainer.warm_up(prepare=lambda: calls.append(time.sleep(0.05)))
    assert calls == [None] and seconds == trainer.state.warmup_seconds >= 0.05


def test_last_partial_batch_is_trained():
    run = train(tiny(epochs=1, batch_size=64, limit_train=100), synthetic())
    assert run.history[0]["images_per_second"] == pytest.approx(100 / run.history[0]["seconds"])
    assert run.steps_per_epoch == 2 and run.step == 2 and run.optimizer.t == 2


# -------------------------------------------------------------------------------- loop structure

def test_callbacks_see_every_epoch_and_can_stop_the_run():
    seen = []

    def stop_after_two(state, metrics):
        assert isinstance(state, RunState) and state.history[-1] is metrics
        seen.append(metrics["epoch"])
        state.stop_requested = metrics["epoch"] == 2

    run = Trainer(tiny(epochs=4), synthetic(), callbacks=[stop_after_two]).run()
    assert seen == [1, 2] and run.epoch == 2 and len(run.history) == 2


def test_quiet_logs_nothing_and_log_gets_one_line_per_epoch():
    lines = []
    train(tiny(epochs=2, quiet=False), synthetic(), log=lines.append)
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    quiet = []
    train(tiny(epochs=1, quiet=True), synthetic(), log=quiet.append)
    assert quiet == []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_data_and_weights_use_the_configured_dtype(dtype):
    trainer = Trainer(tiny(dtype=dtype), synthetic())
    assert trainer.x_train.dtype == trainer.x_test.dtype == np.dtype(dtype)
    assert all(w.dtype == np.dtype(dtype) for w in trainer.state.model.state_arrays().values())


def test_threads_option_limits_blas_on_the_numpy_backend():
    run = train(tiny(epochs=1, threads=1), synthetic())
    assert run.threads == 1


def test_threads_option_is_undone_after_the_run_on_the_numba_backend():
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2 to tell 1 thread from the default")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    run = train(tiny(epochs=1, backend="numba", threads=1), synthetic())
    assert run.threads == 1
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS

    def fail(state, metrics):
        raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        Trainer(tiny(epochs=1, backend="numba", threads=1), synthetic(), callbacks=[fail]).run()
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def test_sgd_runs_and_defaults_are_filled_in():
    cfg = tiny(optimizer="sgd").resolved()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.01, 0.9, 0.0)
    adamw = tiny().resolved()
    assert (adamw.lr, adamw.momentum, adamw.weight_decay) == (2e-3, None, 1e-2)
    assert train(tiny(optimizer="sgd", epochs=1), synthetic()).optimizer.momentum == 0.9


def test_learning_rate_schedules():
    assert learning_rate(1e-3, "constant", 50, 100) == 1e-3
    assert learning_rate(1e-3, "cosine", 0, 100) == 1e-3
    assert learning_rate(1e-3, "cosine", 50, 100) == pytest.approx(5e-4)
    assert learning_rate(1e-3, "cosine", 100, 100) == pytest.approx(0.0, abs=1e-18)
    values = [learning_rate(1.0, "cosine", s, 10) for s in range(11)]
    assert values == sorted(values, reverse=True)
    run = train(tiny(epochs=2, lr_schedule="cosine"), synthetic())
    assert run.history[0]["lr"] > run.history[1]["lr"] > 0


@pytest.mark.parametrize("bad", [
    {"epochs": 0}, {"epochs": -1}, {"batch_size": 0}, {"lr": -1.0}, {"lr": 0.0}, {"lr": float("nan")},
    {"dropout": 1.0}, {"dropout": -0.1}, {"optimizer": "rmsprop"}, {"dtype": "float16"},
    {"backend": "tensorflow"}, {"limit_train": 0}, {"limit_test": 0}, {"threads": 0},
    {"momentum": 0.9}, {"optimizer": "sgd", "momentum": 1.0}, {"weight_decay": -1.0},
    {"lr_schedule": "step"}, {"seed": -1}, {"epochs": 2.5}, {"lr": "0.1"}, {"dropout": None},
])
def test_invalid_config_raises_value_error(bad):
    with pytest.raises(ValueError):
        Trainer(tiny(**bad), synthetic())


@pytest.mark.parametrize("bad,field,needle", [
    ({"dropout": 0.99999999}, "dropout", "steps of 1/65536"),
    ({"momentum": 0.5}, "momentum", "only to the sgd optimizer"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum", "< 1"),
    ({"backend": "numpy", "threads": 100000}, "threads", "the CPU count"),
    ({"backend": "numba", "threads": 100000}, "threads", "NUMBA_NUM_THREADS"),
    ({"divergence_factor": 0.5}, "divergence_factor", "> 1"),
    ({"divergence_window": 0}, "divergence_window", ">= 1"),
    ({"batch_size": True}, "batch_size", "integer"),
])
def test_config_validates_itself_and_names_the_field(bad, field, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        tiny(**bad).resolved()
    assert info.value.field == field and str(info.value).startswith(field)
    if field != "threads":
        assert "NUMBA" not in str(info.value)


def test_divergence_factor_zero_disables_the_growth_rule():
    assert tiny(divergence_factor=0).resolved().divergence_factor == 0


def test_batch_larger_than_training_set_is_rejected():
    with pytest.raises(ValueError, match="larger than the training set"):
        Trainer(tiny(batch_size=101, limit_train=100), synthetic())
    Trainer(tiny(batch_size=100, limit_train=100), synthetic())                 # equal is fine


# ------------------------------------------------------------------------------------------ plots

def test_save_plots_writes_two_pngs_atomically(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_acc": 0.9 + e / 100,
                "test_acc": 0.92 + e / 100} for e in (1, 2, 3)]
    out = tmp_path / "new" / "plots"
    paths = save_plots(history, out)
    assert sorted(p.name for p in paths) == sorted(PLOT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOT_FILES)      # no temp files left
    for p in paths:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
    save_plots(history[:1], out)                                            # overwrite, one epoch
    assert sorted(p.name for p in out.iterdir()) == sorted(PLOT_FILES)
    with pytest.raises(ValueError):
        save_plots([], out)
