"""Any network, not one: state dicts, predictions and summaries of any Sequential; fastcnn.save/load
round trips for every layer type (BatchNorm and fused layers included); model files and their
one-line errors; Trainer and the commands on LeNet-5 and a model file."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fastcnn
from fastcnn.architecture import LAYER_TYPES, ConfigError
from fastcnn.checkpoint import load_checkpoint
from fastcnn.convmath import conv_flops
from fastcnn.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    ConvReLUMaxPool2D,
    Dropout,
    Flatten,
    Linear,
    MaxPool2D,
    ReLU,
    ReLUMaxPool2D,
)
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.modelio import MAX_MODEL_FILE_BYTES, ModelFileError, build, read_model_file
from fastcnn.optim import AdamW
from fastcnn.summary import ShapeError, check_input
from fastcnn.train import TrainConfig, Trainer
from fastcnn.zoo import lenet5

from helpers import assert_one_error_line, run_cli, synthetic, write_custom_dataset


def every_layer_model(fuse=True, seed=0):
    """Each layer type once (3 channels in, 5 classes out); Conv-ReLU-MaxPool first and a ReLU-MaxPool
    later are fused when ``fuse``."""
    rng = np.random.default_rng(seed)
    layers = [Conv2D(3, 4, 3, padding=1, rng=rng, backend="numpy"), ReLU(backend="numpy"),
              MaxPool2D(2, backend="numpy"), Conv2D(4, 6, (3, 2), stride=(1, 2), rng=rng, backend="numpy"),
              BatchNorm2D(6), ReLU(backend="numpy"),
              MaxPool2D(2, stride=1, backend="numpy"), AvgPool2D(2, backend="numpy"), Flatten(),
              Dropout(0.25, rng=np.random.default_rng(seed + 1)), Linear(6, 5, rng=rng)]
    return Sequential(layers, backend="numpy", fuse=fuse, input_shape=(3, 12, 12))


def trained_step(model, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((8, *model.input_shape)).astype(np.float32)
    model.train_step(x, r.integers(0, 5, 8), AdamW(model, lr=1e-2))
    return x


@pytest.mark.parametrize("fuse", [True, False])
def test_every_layer_type_round_trips_through_save_and_load(tmp_path, fuse):
    model = every_layer_model(fuse)
    assert {e["type"] for e in model.config()} == set(LAYER_TYPES)
    if fuse:
        assert isinstance(model.layers[0], ConvReLUMaxPool2D) and isinstance(model.layers[5], ReLUMaxPool2D)
    x = trained_step(model)                                      # BatchNorm's running statistics move
    assert not np.array_equal(model.state_dict()["4.running_mean"], np.zeros(6, np.float32))
    model.data = {"mean": 0.5, "classes": ["a", "b", "c", "d", "e"]}
    path = fastcnn.save(model, tmp_path / "m.npz")
    loaded = fastcnn.load(path, backend="numpy")
    assert loaded.config() == model.config() and loaded.input_shape == (3, 12, 12)
    assert loaded.data == model.data
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_state_dict_is_a_copy_and_load_state_dict_checks_first(tmp_path):
    model, other = every_layer_model(seed=0), every_layer_model(seed=1)
    state = model.state_dict()
    state["0.weight"] += 1                                       # a copy: the model is untouched
    assert not np.array_equal(state["0.weight"], model.state_arrays()["0.weight"])
    before = other.state_dict()
    bad_cases = [
        ({k: v for k, v in state.items() if k != "4.running_var"}, r"missing '4\.running_var'"),
        ({**state, "11.weight": state["0.weight"]}, r"unexpected '11\.weight'"),
        ({**state, "10.bias": np.zeros(4, np.float32)}, r"'10\.bias' is float32\[4\], the model's is float32\[5\]"),
        ({**state, "10.bias": np.zeros(5, np.float64)}, r"'10\.bias' is float64\[5\], the model's is float32\[5\]"),
        ({**state, "4.running_mean": np.full(6, np.nan, np.float32)}, r"'4\.running_mean' has NaN or infinite"),
    ]
    for bad, message in bad_cases:
        with pytest.raises(ValueError, match=message) as info:
            other.load_state_dict(bad)
        assert "\n" not in str(info.value)
        assert all(np.array_equal(v, other.state_arrays()[k]) for k, v in before.items())
    other.load_state_dict(state)
    assert all(np.array_equal(v, other.state_arrays()[k]) for k, v in state.items())


def test_predict_for_any_number_of_classes_in_batches():
    model = every_layer_model()
    x = np.random.default_rng(3).standard_normal((7, 3, 12, 12)).astype(np.float32)
    probs = model.predict_proba(x, batch_size=3)
    assert probs.shape == (7, 5) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, model.predict_proba(x, batch_size=100), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(model.predict(x), model.forward(x).argmax(axis=1))
    assert model.predict_proba(x[:0]).shape == (0, 5)


def test_summary_counts_parameters_flops_and_memory():
    model = lenet5(backend="numpy")
    s = model.summary(batch_size=10)
    params = sum(a.size for k, a in model.state_arrays().items())
    assert s.params == params == 61_706 and s.output_shape == (10,)
    rows = s.layers
    assert rows[0].output_shape == (6, 28, 28) and rows[3].output_shape == (16, 10, 10)
    assert rows[0].flops == conv_flops(1, 1, 28, 28, 6, 5, 5, 1, 2)
    assert rows[7].flops == 2 * 400 * 120 and rows[7].params == 400 * 120 + 120
    assert rows[0].activation_bytes == 10 * 6 * 28 * 28 * 4
    table = str(s)
    assert "total" in table and "61,706" in table and len(table.splitlines()) == len(rows) + 3
    bn = mnist_cnn(batchnorm=True, backend="numpy").summary()
    assert bn.params == sum(a.size for k, a in mnist_cnn(batchnorm=True).state_arrays().items()
                            if not k.endswith(("running_mean", "running_var")))


@pytest.mark.parametrize("model, shape, message", [
    (lambda: fastcnn.cifar_cnn(backend="numpy"), (1, 28, 28),
     r"^the model expects 3x32x32 images, mnist gives 1x28x28$"),
    (lambda: Sequential.from_config([e if e.get("type") != "Linear" or e["in_features"] != 400
                                     else {**e, "in_features": 1600} for e in lenet5().config()], backend="numpy"),
     (1, 28, 28), r"^layer 7 Linear expects 1600 features, layer 6 Flatten gives 400$"),
    (lambda: Sequential.from_config([{"type": "Conv2D", "in_channels": 3, "out_channels": 2, "kernel_size": 3}],
                                    backend="numpy"), (1, 8, 8),
     r"^layer 0 Conv2D expects 3 channels, mnist \(1x8x8 images\) gives 1x8x8$"),
    (lambda: Sequential.from_config([{"type": "Flatten"}, {"type": "MaxPool2D", "kernel_size": 2}], backend="numpy"),
     (1, 8, 8), r"^layer 1 MaxPool2D needs images \(C, H, W\) but layer 0 Flatten gives 64: move it before"),
    (lambda: Sequential.from_config([{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 9}],
                                    backend="numpy"), (1, 8, 8), r"^layer 0 Conv2D: its 9x9 kernel does not fit"),
], ids=["input-shape", "linear-features", "channels", "pool-after-flatten", "kernel-too-big"])
def test_data_that_does_not_flow_through_the_model_is_named(model, shape, message):
    with pytest.raises(ShapeError, match=message):
        check_input(model(), shape, "mnist")


def test_from_config_with_an_input_shape_checks_the_chain():
    config = lenet5().config()
    with pytest.raises(ShapeError, match=r"layer 7 Linear expects 400 features, layer 6 Flatten gives 576"):
        Sequential.from_config(config, input_shape=(1, 32, 32), backend="numpy")


# ------------------------------------------------------------------------------------ model files

@pytest.mark.parametrize("content, message", [
    ('[{"type": "Conv3D"}]', r"give layer 0 a \"type\" among Conv2D"),
    ('{"layers": [{"type": "Linear", "in_features": 4, "out_features": 2, "units": 3}]}',
     r"remove 'units' from layer 0 \(Linear\)"),
    ('[{"type": "Linear", "in_features": "4", "out_features": 2}]', r"in_features must be an integer"),
    ('[{"type": "Linear", "in_features": 100000, "out_features": 100000}]', r"make the layers of .* smaller"),
    ('[{"type": ', r"as JSON .*Expecting value"),
    ('{"layer": []}', r"remove 'layer' in model file"),
    ('{"layers": [{"type": "ReLU"}], "input_shape": [1, 28]}', r"write input_shape .* as \[C, H, W\]"),
    ('"lenet5"', r"not a JSON str"),
    ("\udcff", r"as JSON"),
], ids=["unknown-type", "wrong-argument", "argument-type", "too-many-params", "not-json", "wrong-key",
        "bad-input-shape", "json-string", "not-utf8"])
def test_malformed_model_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "net.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=message) as info:
        build(str(path), backend="numpy")
    assert "\n" not in str(info.value)


def test_model_files_that_are_not_small_regular_files_are_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(MAX_MODEL_FILE_BYTES + 1)                     # sparse: nothing to read
    with pytest.raises(ModelFileError, match=r"at most 1024 KiB"):
        read_model_file(big)
    with pytest.raises(ModelFileError, match=r"not one"):
        read_model_file(tmp_path)
    with pytest.raises(ModelFileError, match=r"does not exist"):
        read_model_file(tmp_path / "none.json")
    with pytest.raises(ModelFileError, match=r"choose a built-in model \(mnist-cnn, lenet5, cifar-cnn\) or a "
                       r"model file"):
        build("lenet-5")


def test_a_model_file_is_what_a_checkpoint_stores(tmp_path):
    model = lenet5(seed=3, backend="numpy")
    path = fastcnn.save(model, tmp_path / "m.npz")
    (tmp_path / "net.json").write_text(json.dumps({"layers": model.config(), "input_shape": [1, 28, 28]}))
    for spec in (tmp_path / "net.json", str(path), model.config()):
        again = build(spec, seed=3, backend="numpy")
        assert again.config() == model.config()
        assert all(np.array_equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


# ------------------------------------------------------------------------------------ training

def test_trainer_takes_a_model_and_checks_the_data_before_training():
    data = synthetic(64, 32)
    model = lenet5(seed=1, backend="numpy")
    trainer = Trainer(TrainConfig(epochs=1, batch_size=32, backend="numpy", quiet=True, warmup=False), data,
                      model=model)
    assert trainer.state.model is model and trainer.config.model == "custom"
    state = trainer.run()
    assert len(state.history) == 1 and np.isfinite(state.history[0]["train_loss"])
    by_name = Trainer(TrainConfig(epochs=1, batch_size=32, backend="numpy", quiet=True), data, model="lenet5")
    assert by_name.config.model == "lenet5" and by_name.state.model.config() == lenet5().config()
    with pytest.raises(ShapeError, match=r"the model expects 3x32x32 images, synthetic gives 1x28x28"):
        Trainer(TrainConfig(model="cifar-cnn", batch_size=32, backend="numpy", quiet=True), data)
    with pytest.raises(ValueError, match=r"batchnorm adds BatchNorm to the mnist-cnn model only"):
        Trainer(TrainConfig(model="lenet5", batchnorm=True, batch_size=32, backend="numpy", quiet=True), data)


def test_a_mnist_cnn_checkpoint_of_the_previous_format_resumes(tmp_path):
    from helpers import as_version_2
    data = synthetic(64, 32)
    cfg = TrainConfig(epochs=2, batch_size=32, lr_schedule="constant", backend="numpy", quiet=True, warmup=False)
    straight = Trainer(cfg, data).run()
    first = Trainer(TrainConfig(**{**cfg.to_dict(), "epochs": 1}), data)
    first.run()
    new = first.save_checkpoint(tmp_path / "new.npz")
    old = as_version_2(new, tmp_path / "old.npz", {"dropout": 0.5, "batchnorm": False, "dtype": "float32"})
    again = Trainer(cfg, data)
    again.restore(old)
    state = again.run()
    assert [m["train_loss"] for m in state.history] == [m["train_loss"] for m in straight.history]


# ------------------------------------------------------------------------------------ commands

def test_train_refuses_model_files_and_models_that_do_not_fit_with_exit_2(tmp_path):
    data = write_custom_dataset(tmp_path / "data", n_train=32, n_test=16)
    (tmp_path / "bad.json").write_text('[{"type": "Conv3D"}]')
    for model, message in ((tmp_path / "bad.json", "Conv3D"), ("cifar-cnn", "the model expects 3x32x32 images")):
        result = run_cli(["--dataset", "custom", "--data-dir", data, "--model", model, "--summary"], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert_one_error_line(result.stderr)
        assert message in result.stderr
    result = run_cli(["--dataset", "custom", "--data-dir", data, "--model", "lenet5", "--summary"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "61,706" in result.stdout and not any(tmp_path.glob("plots"))


def test_lenet5_built_in_python_is_saved_evaluated_and_resumed(tmp_path, mnist_dir, capsys):
    """The custom-model workflow end to end on real MNIST: a LeNet-5 from fastcnn's layers, trained
    by Trainer, saved with fastcnn.save (read by fastcnn-eval) and as a training checkpoint (continued
    by fastcnn-train --resume)."""
    from fastcnn.cli import train_main
    from fastcnn.data import load_dataset
    from fastcnn.evaluate import eval_main
    rng = np.random.default_rng(0)
    net = Sequential([Conv2D(1, 6, 5, padding=2, rng=rng), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5, rng=rng), ReLU(),
                      MaxPool2D(2), Flatten(), Linear(400, 120, rng=rng), ReLU(), Linear(120, 84, rng=rng), ReLU(),
                      Linear(84, 10, rng=rng)], backend="numpy", input_shape=(1, 28, 28))
    data = load_dataset("mnist", data_dir=mnist_dir)
    cfg = TrainConfig(epochs=1, batch_size=64, limit_train=512, limit_test=200, backend="numpy", quiet=True)
    trainer = Trainer(cfg, data, model=net)
    trainer.run()
    ckpt = trainer.save_checkpoint(tmp_path / "run.npz", extra={"dataset": "mnist", "source_dir": str(mnist_dir)})
    model_path = fastcnn.save(net, tmp_path / "lenet.npz", extra={"dataset": "mnist", "source_dir": str(mnist_dir)})

    assert eval_main([str(model_path), "--backend", "numpy", "--limit-test", "200", "--out",
                      str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    expected = trainer.state.history[-1]["test_acc"]
    assert f"accuracy {expected:.2%} ({round(expected * 200)}/200 correct)" in out

    assert train_main(["--resume", str(ckpt), "--epochs", "2", "--plots-dir", str(tmp_path / "plots"), "-q",
                       "--metrics", str(tmp_path / "m.json")]) == 0
    resumed = load_checkpoint(ckpt)
    assert resumed.epoch == 2 and resumed.config["model"] == "custom"
    assert resumed.model_config == net.config()


def test_the_documented_workflow_runs_as_written(tmp_path, mnist_dir):
    import subprocess
    import sys

    from helpers import REPO, subprocess_env
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    block = re.findall(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)[0]
    (tmp_path / "example.py").write_text(block, encoding="utf-8")
    env = {**subprocess_env(), "FASTCNN_DATA_DIR": str(mnist_dir), "FASTCNN_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "61,706" in proc.stdout                                 # the summary's total parameters
    m = re.search(r"^test accuracy (\d+\.\d\d)%$", proc.stdout, re.MULTILINE)
    assert m and float(m.group(1)) >= 80.0, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.py", "lenet.npz"]


def test_predict_uses_the_models_input_shape_and_channels(tmp_path, capsys):
    from fastcnn.evaluate import eval_main
    model = fastcnn.cifar_cnn(seed=0, backend="numpy")              # 3x32x32 input
    path = fastcnn.save(model, tmp_path / "cifar.npz")
    image = np.zeros((45, 40))
    image[8:38, 18:23] = 1.0                                       # a light stroke on black, any size
    np.save(tmp_path / "one.npy", image)
    assert eval_main([str(path), "--predict", str(tmp_path / "one.npy"), "--backend", "numpy"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r".*one\.npy: digit \d \(p=[01]\.\d\d; dark background\)", line), line


def test_predict_on_a_colour_model_takes_colour_files_and_grey_arrays_together(tmp_path, capsys):
    from PIL import Image

    from fastcnn.evaluate import eval_main
    path = fastcnn.save(fastcnn.cifar_cnn(seed=0, backend="numpy"), tmp_path / "cifar.npz")
    image = np.zeros((45, 40))
    image[8:38, 18:23] = 1.0
    np.save(tmp_path / "grey.npy", image)
    Image.fromarray(np.full((50, 60, 3), (200, 30, 10), np.uint8)).save(tmp_path / "red.png")
    argv = [str(path), "--predict", str(tmp_path / "grey.npy"), str(tmp_path / "red.png"),
            "--predict-grid", str(tmp_path / "grid.png"), "--backend", "numpy"]
    assert eval_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r".*grey\.npy: digit \d \(p=[01]\.\d\d; dark background\)", out[0]), out
    assert re.fullmatch(r".*red\.png: digit \d \(p=[01]\.\d\d; colour, resized\)", out[1]), out
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_runs_are_named_and_identified_by_their_model(tmp_path):
    from fastcnn.sweep.grid import build_runs
    (tmp_path / "net.json").write_text(json.dumps(lenet5().config()))
    models = ["mnist-cnn", "lenet5", str((tmp_path / "net.json").resolve())]
    runs = build_runs({"model": models, "optimizer": ["adamw"]})
    assert [r.name for r in runs] == ["mnist-cnn", "lenet5", "net"]
    assert [r.config.model for r in runs][:2] == ["mnist-cnn", "lenet5"]
