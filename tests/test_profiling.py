"""Sequential's profiling API and ``fastcnn-train --profile``: what is reported (names, order,
directions), that the parts add up to the step, that timing changes no result, and that no clock
is read while no profile is attached. No assertion on how long anything takes.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastcnn.model
from fastcnn.cli import train_main
from fastcnn.model import mnist_cnn
from fastcnn.optim import AdamW
from fastcnn.profiling import OPTIMIZER, OTHER, Profile

from helpers import write_custom_dataset


def _batches(n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((size, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size)) for _ in range(n)]


def _run(model, batches):
    opt = AdamW(model, lr=1e-3)
    return [model.train_step(x, y, opt) for x, y in batches]


def test_profile_rows_name_every_layer_both_ways_then_optimizer_and_rest():
    model = mnist_cnn(backend="numpy")
    profile = model.start_profile()
    _run(model, _batches())
    assert model.stop_profile() is profile and model.profile is None
    rows = profile.rows()
    layers = ["0 ConvReLUMaxPool2D", "3 ConvReLUMaxPool2D", "6 Flatten", "8 DropoutLinear"]
    assert [(r.name, r.direction) for r in rows] == (
        [(n, "forward") for n in layers] + [(n, "backward") for n in reversed(layers)]
        + [(OPTIMIZER, ""), (OTHER, "")])
    assert profile.batches == 3
    assert all(r.ms_per_batch >= 0 and r.percent >= 0 for r in rows)
    step_ms = 1e3 * profile.step_s / 3
    assert sum(r.ms_per_batch for r in rows) == pytest.approx(step_ms, rel=1e-9)
    assert sum(r.percent for r in rows) == pytest.approx(100.0, rel=1e-9)
    assert profile.to_dict()["step_ms"] == pytest.approx(step_ms)
    table = profile.table().splitlines()
    assert table[0].startswith("profile: 3 training steps, ") and table[0].endswith(" ms per step")
    assert len(table) == 2 + len(rows) and all(name in profile.table() for name in layers)


def test_evaluation_and_untimed_steps_are_not_counted():
    model = mnist_cnn(backend="numpy")
    batches = _batches()
    _run(model, batches[:1])                                    # before the profile: not counted
    profile = model.start_profile()
    model.evaluate(*batches[0])                                 # evaluation forwards: not counted
    assert profile.batches == 0 and sum(profile.forward_s) == 0
    assert profile.table() == "profile: no training step was timed"
    _run(model, batches[1:])
    assert profile.batches == 2


def test_profiling_changes_no_result():
    batches = _batches(seed=5)
    plain, timed = mnist_cnn(seed=2, backend="numpy"), mnist_cnn(seed=2, backend="numpy")
    timed.start_profile()
    assert _run(plain, batches) == _run(timed, batches)
    for name, a in plain.state_arrays().items():
        np.testing.assert_array_equal(timed.state_arrays()[name], a, err_msg=name)


def test_no_clock_is_read_without_a_profile(monkeypatch):
    model = mnist_cnn(backend="numpy")

    def no_clock():
        raise AssertionError("perf_counter called while not profiling")

    monkeypatch.setattr(fastcnn.model.time, "perf_counter", no_clock)
    _run(model, _batches(n=1))
    model.backward(np.zeros((8, 10), np.float32))


def test_profile_of_an_empty_profile_divides_by_nothing():
    rows = Profile(["0 Linear"]).rows()
    assert [r.ms_per_batch for r in rows] == [0.0, 0.0, 0.0, 0.0]


def test_train_cli_profile_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    data = write_custom_dataset(tmp_path / "data")
    code = train_main(["--dataset", "custom", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                       "--backend", "numpy", "--plots-dir", str(tmp_path / "plots"), "--profile"])
    out = capsys.readouterr().out
    assert code == 0
    assert "profile: 2 training steps, " in out
    for name in ("0 ConvReLUMaxPool2D", "3 ConvReLUMaxPool2D", "8 DropoutLinear", OPTIMIZER, OTHER):
        assert name in out
