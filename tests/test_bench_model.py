"""fastcnn-bench --model: any model's training step timed per backend after a check against the
NumPy reference, a per-layer profile, real MNIST for 1x28x28 input and random data of the model's
shape otherwise, one-line errors (exit 2) for models it cannot time, and the PyTorch twin built from
model.config() with the same weights (where PyTorch is installed)."""
from __future__ import annotations

import json
import sys

import numba
import numpy as np
import pytest

from fastcnn.benchmarks import cli
from fastcnn.benchmarks.model_bench import input_shape_of, twin
from fastcnn.model import Sequential, mnist_cnn

MNIST_SHAPED = [{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
                {"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}, {"type": "Flatten"},
                {"type": "Linear", "in_features": 2 * 13 * 13, "out_features": 10}]
CIFAR_SHAPED = [{"type": "Conv2D", "in_channels": 3, "out_channels": 2, "kernel_size": 3, "padding": 1},
                {"type": "BatchNorm2D", "num_features": 2}, {"type": "ReLU"}, {"type": "AvgPool2D", "kernel_size": 4},
                {"type": "Flatten"}, {"type": "Dropout", "p": 0.2},
                {"type": "Linear", "in_features": 2 * 8 * 8, "out_features": 4}]


def write_model(tmp_path, name, config):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def smoke(tmp_path, model, *extra):
    return ["--model", str(model), "--quick", "--batches", "1", "--out", str(tmp_path / "out"), *extra]


def test_input_shape_comes_from_the_model_or_the_first_size_it_runs_on():
    assert input_shape_of(mnist_cnn(backend="numpy")) == (1, 28, 28)
    assert input_shape_of(Sequential.from_config(MNIST_SHAPED, backend="numpy")) == (1, 28, 28)
    assert input_shape_of(Sequential.from_config(CIFAR_SHAPED, backend="numpy")) == (3, 32, 32)
    odd = [*MNIST_SHAPED[:-1], {"type": "Linear", "in_features": 7, "out_features": 2}]
    with pytest.raises(ValueError, match="28x28 or 1x32x32"):
        input_shape_of(Sequential.from_config(odd, backend="numpy"))


def test_twin_copies_weights_and_statistics():
    model = mnist_cnn(seed=1, batchnorm=True, backend="numpy")
    model.forward(np.ones((2, 1, 28, 28), np.float32), training=True)
    copy, _ = twin(model, "numpy", dropout=0.0, seed=5)
    for key, value in model.state_arrays().items():
        np.testing.assert_array_equal(copy.state_arrays()[key], value, err_msg=key)
    assert [e.get("p") for e in copy.config() if e["type"] == "Dropout"] == [0.0]


def test_mnist_shaped_model_times_real_mnist_and_profiles_every_layer(tmp_path, mnist_dir, capsys):
    model = write_model(tmp_path, "small.json", MNIST_SHAPED)
    assert cli.bench_main(smoke(tmp_path, model, "--data-dir", str(mnist_dir))) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["schema"] == "fastcnn-bench-model/1" and results["input_shape"] == [1, 28, 28]
    assert results["data"].startswith("real MNIST")
    assert set(results["training"]) == {"numpy", "numba"}
    for row in results["training"].values():
        assert row["batches"] == 1 and row["epoch_seconds"] > 0
    names = {r["name"] for r in results["profile"]["rows"]}
    assert {"0 ConvReLUMaxPool2D", "3 Flatten", "4 Linear", "optimizer step"} <= names
    assert "Per layer (numba)" in out and "0 ConvReLUMaxPool2D" in out and "s/epoch" in out


def test_other_shapes_get_random_data_of_their_shape(tmp_path, capsys):
    model = write_model(tmp_path, "cifarish.json", CIFAR_SHAPED)
    assert cli.bench_main(smoke(tmp_path, model, "--backends", "numba")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["input_shape"] == [3, 32, 32] and results["data"].startswith("random")
    assert set(results["training"]) == {"numba"}
    assert "1 BatchNorm2D" in capsys.readouterr().out


@pytest.mark.parametrize("config, fix", [
    (None, "choose a built-in model"),
    ([{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3}, {"type": "ReLU"}],
     "end the model with a Linear layer"),
    ([{"type": "Flatten"}, {"type": "Linear", "in_features": 5, "out_features": 2}], "28x28 or 1x32x32"),
    ([{"type": "Nope"}], "give layer 0 a \"type\""),
])
def test_models_it_cannot_time_are_one_line_errors(config, fix, tmp_path, capsys):
    model = "no-such-model" if config is None else write_model(tmp_path, "m.json", config)
    assert cli.bench_main(smoke(tmp_path, model, "--backends", "numba")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastcnn-bench: error: --model") and fix in err[0], err


def test_torch_twin_is_built_from_the_config_with_the_same_weights():
    torch = pytest.importorskip("torch")
    from fastcnn.benchmarks.torch_compare import torch_sequential
    model = Sequential.from_config(CIFAR_SHAPED, seed=2, backend="numpy", input_shape=(3, 32, 32))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model.forward(x * 2 + 1, training=True)                     # BatchNorm statistics away from 0 and 1
    net = torch_sequential(torch, model.config(), model).eval()
    from fastcnn.testing import assert_agree
    assert_agree(net(torch.from_numpy(x)).detach().numpy(), model.forward(x), "torch twin's evaluation")


def test_compare_torch_times_the_twin(tmp_path, capsys):
    pytest.importorskip("torch")
    model = write_model(tmp_path, "cifarish.json", CIFAR_SHAPED)
    assert cli.bench_main(smoke(tmp_path, model, "--backends", "numba", "--compare", "torch")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["training"]) == {"numba", "torch"}
    assert results["training_fastcnn_over_torch"] > 0
    assert results["machine"]["torch"]["threads"] == numba.get_num_threads()
    assert "fastcnn / torch epoch time" in capsys.readouterr().out


def test_compare_torch_without_torch_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)                 # import torch now fails
    model = write_model(tmp_path, "cifarish.json", CIFAR_SHAPED)
    assert cli.bench_main(smoke(tmp_path, model, "--compare", "torch")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--compare torch needs PyTorch" in err[0], err
    assert not (tmp_path / "out" / "results.json").exists()
