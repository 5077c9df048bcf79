"""fastcnn.export and fastcnn-export: the safetensors file holds what an equivalent PyTorch
nn.Sequential's state_dict holds (names, shapes, values, the model config in the metadata); the
ONNX graph passes onnx.checker and, run in ONNX Runtime, gives fastcnn's evaluation outputs on
MNIST test images (random images for 3x32x32 models) for every built-in model, with and without
BatchNorm (trained running statistics), any batch size; the command's errors are one line, exit 2,
and leave no file behind. PyTorch is never used here."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fastcnn import export as ex
from fastcnn.data import load_dataset, to_float
from fastcnn.layers import BatchNorm2D
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.testing import assert_export_agree
from fastcnn.zoo import MODELS

onnx = pytest.importorskip("onnx", reason="the export extra is part of the test extra: pip install -e '.[test]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the test extra: pip install -e '.[test]'")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

#: Every layer type, non-square kernel, stride and padding, BatchNorm, average pooling and dropout.
EVERY_LAYER = [
    {"type": "Conv2D", "in_channels": 2, "out_channels": 4, "kernel_size": [3, 5], "stride": [2, 1],
     "padding": [1, 2]},
    {"type": "BatchNorm2D", "num_features": 4, "eps": 1e-3}, {"type": "ReLU"},
    {"type": "AvgPool2D", "kernel_size": 2}, {"type": "Conv2D", "in_channels": 4, "out_channels": 3,
                                              "kernel_size": 2},
    {"type": "MaxPool2D", "kernel_size": [1, 2], "stride": 1}, {"type": "Flatten"}, {"type": "Dropout", "p": 0.25},
    {"type": "Linear", "in_features": 3 * 2 * 2, "out_features": 5},
]
EVERY_LAYER_INPUT = (2, 12, 9)


def built(name: str) -> Sequential:
    if name == "mnist-cnn-bn":
        return mnist_cnn(seed=3, batchnorm=True, backend="numpy")
    if name == "every-layer":
        return Sequential.from_config(EVERY_LAYER, seed=3, backend="numpy", input_shape=EVERY_LAYER_INPUT)
    return MODELS[name](seed=3, backend="numpy")


MODEL_NAMES = [*MODELS, "mnist-cnn-bn", "every-layer"]


def trained_statistics(model: Sequential) -> Sequential:
    """Run a few training forwards on shifted, scaled data, so BatchNorm's running statistics are
    far from their initial 0 and 1 (an export that ignored them would be caught)."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        model.forward((rng.standard_normal((6, *model.input_shape)) * 3 + 1).astype(np.float32), training=True)
    for layer in model.unfused_layers():
        if isinstance(layer, BatchNorm2D):
            assert np.abs(layer.buffers["running_mean"]).max() > 0.05
            assert np.abs(layer.buffers["running_var"] - 1).max() > 0.05
    return model


@pytest.fixture(scope="module")
def test_images(mnist_dir):
    data = load_dataset("mnist", data_dir=mnist_dir, splits=("test",))
    return to_float(data.x_test[:64])


def images_for(model: Sequential, test_images: np.ndarray) -> np.ndarray:
    if model.input_shape == (1, 28, 28):
        return test_images
    return np.random.default_rng(11).standard_normal((16, *model.input_shape)).astype(np.float32)


def run_onnx(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


# ------------------------------------------------------------------------------ safetensors

def expected_torch_names(model: Sequential) -> dict[str, tuple]:
    """The state_dict keys and shapes of the equivalent torch nn.Sequential, written out from the
    layer types (Conv2d/Linear: weight, bias; BatchNorm2d: weight, bias, running_mean, running_var,
    num_batches_tracked)."""
    out = {}
    for i, entry in enumerate(model.config()):
        kind = entry["type"]
        if kind == "Conv2D":
            kh, kw = entry["kernel_size"]
            out[f"{i}.weight"] = (entry["out_channels"], entry["in_channels"], kh, kw)
            out[f"{i}.bias"] = (entry["out_channels"],)
        elif kind == "Linear":
            out[f"{i}.weight"] = (entry["out_features"], entry["in_features"])
            out[f"{i}.bias"] = (entry["out_features"],)
        elif kind == "BatchNorm2D":
            c = entry["num_features"]
            out.update({f"{i}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})
            out[f"{i}.num_batches_tracked"] = ()
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_safetensors_holds_the_torch_state_dict_and_the_config(name, tmp_path):
    model = trained_statistics(built(name))
    path = ex.export(model, tmp_path / "m.safetensors")
    tensors = safetensors_numpy.load_file(str(path))
    expected = expected_torch_names(model)
    assert {k: v.shape for k, v in tensors.items()} == expected
    live = model.state_arrays()
    for key, value in tensors.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value == 0
        else:
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, live[key], err_msg=key)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt"
    assert json.loads(meta["fastcnn.config"]) == model.config()
    assert tuple(json.loads(meta["fastcnn.input_shape"])) == model.input_shape


def test_safetensors_rebuilds_the_same_model(tmp_path, test_images):
    model = trained_statistics(built("mnist-cnn-bn"))
    path = ex.export(model, tmp_path / "m.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as fh:
        config = json.loads(fh.metadata()["fastcnn.config"])
    copy = Sequential.from_config(config, seed=99, backend="numpy", input_shape=model.input_shape)
    tensors = safetensors_numpy.load_file(str(path))
    for key, array in copy.state_arrays().items():
        array[...] = tensors[key]
    np.testing.assert_array_equal(copy.forward(test_images), model.forward(test_images))


def test_safetensors_keeps_float64(tmp_path):
    model = mnist_cnn(dtype=np.float64, backend="numpy")
    tensors = safetensors_numpy.load_file(str(ex.export(model, tmp_path / "m.safetensors")))
    assert tensors["0.weight"].dtype == np.float64
    np.testing.assert_array_equal(tensors["8.weight"], model.state_arrays()["8.weight"])


# ------------------------------------------------------------------------------ ONNX

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_agrees_with_fastcnn_in_onnx_runtime(name, test_images):
    model = trained_statistics(built(name))
    proto = ex.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", ex.ONNX_OPSET)]
    assert proto.ir_version == ex.ONNX_IR_VERSION
    ops = [n.op_type for n in proto.graph.node]
    assert "Dropout" not in ops
    assert ops.count("BatchNormalization") == sum(e["type"] == "BatchNorm2D" for e in model.config())
    x = images_for(model, test_images)
    expected = model.forward(x, training=False)
    assert_export_agree(run_onnx(proto, x), expected, f"{name} in ONNX Runtime")
    for n in (1, 5):                                    # the batch dimension is free
        assert_export_agree(run_onnx(proto, x[:n]), expected[:n], f"{name}, batch {n}")


def test_onnx_reads_the_weights_it_was_given(test_images):
    # The agreement test is not vacuous: another model's weights disagree far beyond the tolerance.
    model, other = built("mnist-cnn-bn"), mnist_cnn(seed=4, batchnorm=True, backend="numpy")
    trained_statistics(model)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_export_agree(run_onnx(ex.to_onnx(other), test_images), model.forward(test_images))


def test_onnx_uses_the_running_statistics(test_images):
    model = trained_statistics(built("mnist-cnn-bn"))
    proto = ex.to_onnx(model)
    fresh = mnist_cnn(seed=3, batchnorm=True, backend="numpy")       # same weights, statistics 0 and 1
    with pytest.raises(AssertionError, match="exceeds"):
        assert_export_agree(run_onnx(proto, test_images), fresh.forward(test_images))


def test_onnx_of_a_float64_model_runs_in_float32(test_images):
    model = mnist_cnn(seed=3, dtype=np.float64, backend="numpy")
    out = run_onnx(ex.to_onnx(model), test_images)
    assert out.dtype == np.float32
    assert_export_agree(out, model.forward(test_images.astype(np.float64)).astype(np.float32))


def test_onnx_without_input_shape_has_free_height_and_width():
    model = Sequential.from_config(EVERY_LAYER[:4], seed=1, backend="numpy")
    proto = ex.to_onnx(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 2, "height", "width"]
    x = np.random.default_rng(0).standard_normal((3, 2, 10, 6)).astype(np.float32)
    assert_export_agree(run_onnx(proto, x), model.forward(x))


# ------------------------------------------------------------------------------ the command

def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcnn-export: error: "), err
    return lines[0]


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx"])
def test_command_exports_a_built_in_model(suffix, tmp_path, capsys):
    out = tmp_path / f"lenet{suffix}"
    assert ex.export_main(["lenet5", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    reference = MODELS["lenet5"](seed=0)
    if suffix == ".onnx":
        x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
        assert_export_agree(run_onnx(onnx.load(str(out)), x), reference.forward(x))
    else:
        np.testing.assert_array_equal(safetensors_numpy.load_file(str(out))["9.weight"],
                                      reference.state_arrays()["9.weight"])


def test_command_exports_a_json_model_file_and_a_checkpoint(tmp_path, capsys):
    from fastcnn.checkpoint import model_rngs, save_checkpoint
    config_file = tmp_path / "net.json"
    config_file.write_text(json.dumps(EVERY_LAYER))
    assert ex.export_main([str(config_file), str(tmp_path / "net.onnx")]) == 0
    ops = [n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node]
    assert ops == ["Conv", "BatchNormalization", "Relu", "AveragePool", "Conv", "MaxPool", "Flatten", "Gemm"]

    model = trained_statistics(mnist_cnn(seed=5, batchnorm=True))
    ckpt = save_checkpoint(tmp_path / "bn.ckpt", model, None, epoch=0, history=[], config={},
                           rngs=model_rngs(model), model_kwargs={"seed": 5, "batchnorm": True})
    assert ex.export_main([str(ckpt), str(tmp_path / "bn.safetensors")]) == 0
    tensors = safetensors_numpy.load_file(str(tmp_path / "bn.safetensors"))
    np.testing.assert_array_equal(tensors["1.running_var"], model.state_arrays()["1.running_var"])
    capsys.readouterr()


@pytest.mark.parametrize("args, fix", [
    (["mnist-cnn", "{tmp}/m.pt"], "suffix among .safetensors, .onnx"),
    (["mnist-cnn", "{tmp}/m"], "suffix among"),
    (["no-such-model", "{tmp}/m.onnx"], "choose a built-in model"),
    (["{tmp}/missing.json", "{tmp}/m.onnx"], "does not exist"),
    (["{tmp}/bad.json", "{tmp}/m.onnx"], "give layer 0 a \"type\""),
    (["{tmp}/broken.json", "{tmp}/m.onnx"], "as JSON"),
    (["mnist-cnn", "{tmp}/no/such/folder/m.onnx"], "choose a writable OUT"),
    (["mnist-cnn", "{tmp}/adir.onnx"], "choose a writable OUT"),
    (["mnist-cnn"], "OUT"),
])
def test_command_errors_are_one_line_and_exit_2(args, fix, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps([{"type": "Conv3D"}]))
    (tmp_path / "broken.json").write_text("[{")
    (tmp_path / "adir.onnx").mkdir()
    assert ex.export_main([a.format(tmp=tmp_path) for a in args]) == 2
    assert fix in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.onnx", "bad.json", "broken.json"]


@pytest.mark.parametrize("missing, suffix", [("onnx", ".onnx"), ("safetensors", ".safetensors")])
def test_missing_extra_names_the_install_command(missing, suffix, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)       # import now fails
    assert ex.export_main(["mnist-cnn", str(tmp_path / f"m{suffix}")]) == 2
    assert "pip install 'fastcnn[export]'" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_old_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")

    def broken(model):
        raise ex.ExportError("remove layer 3 (Fancy) to export to ONNX")
    monkeypatch.setattr(ex, "to_onnx", broken)
    assert ex.export_main(["mnist-cnn", str(out)]) == 2
    assert "remove layer 3" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
