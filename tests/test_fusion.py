"""Fusion as a rewrite of Sequential.layers: which runs are fused, what the fused model keeps
(parameter names, arrays, outputs, gradients, training trajectory, checkpoint architecture), and
the fused layers' own checks. NumPy reference backend (one layer test on Numba too); the Numba
kernels' fused ops are compared with the unfused ones in tests/test_kernels.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from fastcnn.checkpoint import CheckpointError, load_checkpoint, model_rngs, restore, save_checkpoint
from fastcnn.kernels import conv_pooled
from fastcnn.layers import (
    Conv2D,
    ConvReLUMaxPool2D,
    Dropout,
    DropoutLinear,
    Flatten,
    Identity,
    Linear,
    MaxPool2D,
    ReLU,
    ReLUMaxPool2D,
)
from fastcnn.model import Sequential, fuse, fuse_layers, mnist_cnn
from fastcnn.optim import SGD
from fastcnn.testing import assert_agree

from helpers import as_version_2

F32, F64 = np.float32, np.float64


def _types(layers):
    return [type(layer).__name__ for layer in layers]


def test_mnist_cnn_is_rewritten_with_identity_in_the_freed_slots():
    model = mnist_cnn(backend="numpy")
    assert _types(model.layers) == ["ConvReLUMaxPool2D", "Identity", "Identity", "ConvReLUMaxPool2D", "Identity",
                                    "Identity", "Flatten", "Identity", "DropoutLinear"]
    plain = mnist_cnn(backend="numpy", fuse=False)
    assert _types(plain.layers) == ["Conv2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D", "Flatten",
                                    "Dropout", "Linear"]
    assert [repr(layer) for layer in model.unfused_layers()] == [repr(layer) for layer in plain.layers]
    assert plain.unfused_layers() == plain.layers


def test_plain_layers_know_nothing_of_fusion():
    model = mnist_cnn(backend="numpy")
    for layer in model.unfused_layers():
        assert "relu=" not in repr(layer) and "fuse" not in repr(layer).lower()
        assert not any("fuse" in name for name in vars(layer))


def test_fused_model_keeps_parameter_names_and_arrays():
    fused, plain = mnist_cnn(seed=3, backend="numpy"), mnist_cnn(seed=3, backend="numpy", fuse=False)
    a, b = fused.state_arrays(), plain.state_arrays()
    assert list(a) == list(b) == ["0.weight", "0.bias", "3.weight", "3.bias", "8.weight", "8.bias"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    conv = fused.unfused_layers()[0]
    assert fused.layers[0].params is conv.params and fused.layers[0].grads is conv.grads
    assert a["0.weight"] is conv.params["weight"]


def test_batchnorm_after_the_first_conv_leaves_it_unfused():
    model = mnist_cnn(batchnorm=True, backend="numpy")
    assert _types(model.layers)[:6] == ["Conv2D", "BatchNorm2D", "ReLUMaxPool2D", "Identity", "Conv2D",
                                        "BatchNorm2D"]
    assert "1.running_mean" in model.state_arrays()


def test_every_conv_relu_pool_run_is_fused_and_a_lone_relu_pool_too():
    rng = np.random.default_rng(0)
    layers = [Flatten(), Conv2D(1, 2, 3, rng=rng, backend="numpy"), ReLU(backend="numpy"),
              MaxPool2D(2, backend="numpy"), ReLU(backend="numpy"), MaxPool2D(2, backend="numpy")]
    assert _types(fuse_layers(layers)) == ["Flatten", "ConvReLUMaxPool2D", "Identity", "Identity", "ReLUMaxPool2D",
                                           "Identity"]
    first = [Conv2D(1, 2, 3, rng=rng, backend="numpy"), ReLU(backend="numpy"), MaxPool2D(2, backend="numpy")]
    first[0].need_input_grad = False
    assert _types(fuse_layers(first)) == ["ConvReLUMaxPool2D", "Identity", "Identity"]


def test_dropout_then_linear_is_fused_in_the_linears_place():
    rng = np.random.default_rng(0)
    drop, lin = Dropout(0.5, backend="numpy"), Linear(6, 3, rng=rng, backend="numpy")
    layers = [Flatten(), Dropout(0.2, backend="numpy"), ReLU(backend="numpy"), drop, lin,
              Linear(3, 2, rng=rng, backend="numpy"), Dropout(0.1, backend="numpy")]
    fused = fuse_layers(layers)
    assert _types(fused) == ["Flatten", "Dropout", "ReLU", "Identity", "DropoutLinear", "Linear", "Dropout"]
    assert fused[4].parts == (drop, lin) and fused[4].params is lin.params and fused[4].grads is lin.grads
    model = Sequential(layers, backend="numpy")
    assert model.unfused_layers() == layers
    assert [name for name, _, _ in model.named_parameters()] == ["4.weight", "4.bias", "5.weight", "5.bias"]
    assert list(model_rngs(model)) == ["dropout/1", "dropout/3", "dropout/6"]     # a checkpoint's names, as before
    assert model_rngs(model)["dropout/3"] is drop.rng


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("p", [0.5, 0.3, 0.0])
def test_dropout_linear_is_the_two_layers_bit_for_bit(backend, dtype, p):
    """Training and evaluation outputs, the gradients, and the dropout generator's state after the
    step: those of Dropout then Linear on the same backend, for batch sizes that do and do not fill
    the kernel's row groups and feature counts across its blocks."""
    for n, features in [(1, 7), (5, 513), (8, 1030)]:
        seeds = [np.random.default_rng(11) for _ in range(2)]
        drops = [Dropout(p, rng=g, backend=backend) for g in seeds]
        lins = [Linear(features, 3, rng=np.random.default_rng(2), dtype=dtype, backend=backend) for _ in range(2)]
        fused = DropoutLinear(drops[0], lins[0])
        rng = np.random.default_rng(n)
        x = rng.standard_normal((n, features)).astype(dtype)
        for training in (True, False, True):
            y = fused.forward(x, training=training)
            y_ref = lins[1].forward(drops[1].forward(x, training=training), training=training)
            np.testing.assert_array_equal(y, y_ref)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx = fused.backward(dy)
            dx_ref = drops[1].backward(lins[1].backward(dy))
            np.testing.assert_array_equal(dx, dx_ref)
            for key in ("weight", "bias"):
                np.testing.assert_array_equal(lins[0].grads[key], lins[1].grads[key])
        assert seeds[0].bit_generator.state == seeds[1].bit_generator.state


def test_fuse_rewrites_an_unfused_model_in_place_and_is_idempotent():
    model = mnist_cnn(backend="numpy", fuse=False)
    assert fuse(model) is model
    expected = [repr(layer) for layer in mnist_cnn(backend="numpy").layers]
    assert [repr(layer) for layer in model.layers] == expected
    fuse(model)
    assert [repr(layer) for layer in model.layers] == expected


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_fused_training_is_bit_identical_to_unfused(dtype, batchnorm):
    """Same losses, hits and parameters after several SGD steps with dropout, fused or not."""
    models = [mnist_cnn(seed=1, dtype=dtype, batchnorm=batchnorm, backend="numpy", fuse=f) for f in (True, False)]
    opts = [SGD(m, lr=0.05, momentum=0.9) for m in models]
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.standard_normal((8, 1, 28, 28)).astype(dtype)
        y = rng.integers(0, 10, 8)
        (la, ha), (lb, hb) = (m.train_step(x, y, o) for m, o in zip(models, opts, strict=True))
        assert la == lb and ha == hb
    a, b = (m.state_arrays() for m in models)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    x = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
    np.testing.assert_array_equal(models[0].forward(x), models[1].forward(x))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("need_input_grad", [False, True], ids=["first-layer", "inner-layer"])
def test_conv_relu_maxpool_gradients_are_the_unfused_layers(need_input_grad, backend):
    """The fused layer's output and backward: dw and db (and dx for an inner layer) bit for bit
    those of Conv2D -> ReLU -> MaxPool2D on the same backend, odd sizes and ties included (on
    Numba a reduction of 72 over 32 channels: the convolution's pooling mode), except where Numba's
    fused backward takes the sparse route (other sums: to the tolerance)."""
    rng = np.random.default_rng(5)
    conv = Conv2D(8, 32, 3, padding=1, rng=rng, dtype=F64, backend=backend)
    conv.need_input_grad = need_input_grad
    relu, pool = ReLU(backend=backend), MaxPool2D(2, backend=backend)
    fused = ConvReLUMaxPool2D(conv, relu, pool)
    x = np.round(rng.standard_normal((2, 8, 9, 7)) * 2)                 # integers: exact ties in the windows
    y = fused.forward(x, training=True)
    y_ref = pool.forward(relu.forward(conv.forward(x, training=True), training=True), training=True)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    dx = fused.backward(dy)
    dw, db = conv.grads["weight"].copy(), conv.grads["bias"].copy()
    dx_ref = conv.backward(relu.backward(pool.backward(dy)))
    sparse_dw = backend == "numba" and conv_pooled.sparse_route(8, 3, 3, (2, 2), (2, 2), x.itemsize)
    sparse_dx = sparse_dw and conv_pooled.sparse_input_gradient(8, 3, 3, x.itemsize)
    same_dw = assert_agree if sparse_dw else np.testing.assert_array_equal
    same_dw(dw, conv.grads["weight"])
    same_dw(db, conv.grads["bias"])
    if need_input_grad:
        (assert_agree if sparse_dx else np.testing.assert_array_equal)(dx, dx_ref)
    else:
        assert dx is None and dx_ref is None


def test_fused_layers_take_only_their_own_parts():
    conv = Conv2D(1, 2, 3, backend="numpy")
    with pytest.raises(TypeError, match="ConvReLUMaxPool2D fuses"):
        ConvReLUMaxPool2D(conv, MaxPool2D(2, backend="numpy"), ReLU(backend="numpy"))
    with pytest.raises(TypeError, match="ReLUMaxPool2D fuses"):
        ReLUMaxPool2D(MaxPool2D(2, backend="numpy"), ReLU(backend="numpy"))
    with pytest.raises(TypeError, match="DropoutLinear fuses"):
        DropoutLinear(Linear(2, 2, backend="numpy"), Dropout(backend="numpy"))


def test_fused_layers_name_themselves_in_input_errors():
    model = mnist_cnn(backend="numpy")
    first, pool = model.layers[0], mnist_cnn(backend="numpy", batchnorm=True).layers[2]
    fused = r"ConvReLUMaxPool2D \(fused Conv2D \+ ReLU \+ MaxPool2D\)"     # names the layers the user built
    with pytest.raises(ValueError, match=fused + r" expects input of shape \(N, 1, H >= 1, W >= 1\), "
                                             r"got shape \(2, 3, 8, 8\)"):
        first.forward(np.zeros((2, 3, 8, 8), F32))
    with pytest.raises(ValueError, match=fused + r" expects input of shape \(N, C, H >= 2, W >= 2\), "
                                             r"got shape \(2, 32, 1, 8\)"):
        first.forward(np.zeros((2, 1, 1, 8), F32))            # the conv output is too small to pool
    with pytest.raises(TypeError, match=r"convert the input with x.astype\(np.float32\) .*: " + fused
                       + " has float32 parameters but got float64 input"):
        first.forward(np.zeros((2, 1, 8, 8), F64))
    with pytest.raises(ValueError, match=r"ReLUMaxPool2D \(fused ReLU \+ MaxPool2D\) expects input of shape "
                                         r"\(N, C, H >= 2, W >= 2\)"):
        pool.forward(np.zeros((2, 64, 1, 1), F32))
    head = model.layers[8]
    with pytest.raises(ValueError, match=r"DropoutLinear \(fused Dropout \+ Linear\) expects input of shape "
                                         r"\(N, 3136\), got shape \(2, 5\)"):
        head.forward(np.zeros((2, 5), F32), training=True)
    with pytest.raises(TypeError, match=r"DropoutLinear \(fused Dropout \+ Linear\) has float32 parameters"):
        head.forward(np.zeros((2, 3136), F64), training=True)


def test_set_backend_reaches_the_parts_and_copies_work():
    model = mnist_cnn(backend="numpy")
    model.set_backend("numba")
    assert all(part.backend_name == "numba" for part in model.layers[0].parts)
    clone = copy.deepcopy(model)
    assert clone.layers[0].params is clone.layers[0].parts[0].params      # sharing survives the copy
    assert clone.layers[0].params is not model.layers[0].params


def test_user_identity_layers_stay_in_the_architecture():
    rng = np.random.default_rng(0)
    model = Sequential([Conv2D(1, 2, 3, rng=rng, backend="numpy"), ReLU(backend="numpy"),
                        MaxPool2D(2, backend="numpy"), Identity(), Flatten(), Linear(2, 3, rng=rng)],
                       backend="numpy")
    assert _types(model.unfused_layers()) == ["Conv2D", "ReLU", "MaxPool2D", "Identity", "Flatten", "Linear"]


def test_checkpoint_stores_the_unfused_architecture(tmp_path):
    model = mnist_cnn(backend="numpy", batchnorm=True)
    path = save_checkpoint(tmp_path / "m.npz", model, None, epoch=0, history=[], config={}, rngs=None)
    ckpt = load_checkpoint(path)
    config = ckpt.header["architecture"]["config"]
    assert config == mnist_cnn(backend="numpy", batchnorm=True, fuse=False).config()
    assert [e["type"] for e in config] == _types(mnist_cnn(backend="numpy", batchnorm=True, fuse=False).layers)
    other = mnist_cnn(seed=9, backend="numpy", batchnorm=True)
    restore(ckpt, other)
    for name, a in model.state_arrays().items():
        np.testing.assert_array_equal(other.state_arrays()[name], a, err_msg=name)


def test_checkpoints_that_recorded_the_relu_flag_still_load(tmp_path):
    """Files written while the fused ReLU was a flag of the pool name it "MaxPool2D(..., relu=True)";
    the previous format's layer reprs are not compared at all: its mnist_cnn settings rebuild the model."""
    model = mnist_cnn(backend="numpy")
    path = save_checkpoint(tmp_path / "m.npz", model, None, epoch=0, history=[], config={}, rngs=None)
    reprs = [repr(layer) for layer in model.unfused_layers()]
    reprs[2] = reprs[5] = "MaxPool2D(kernel_size=(2, 2), stride=(2, 2), relu=True)"
    ckpt = load_checkpoint(as_version_2(path, tmp_path / "old.npz", {}, reprs))
    other = mnist_cnn(seed=4, backend="numpy")
    restore(ckpt, other)
    np.testing.assert_array_equal(other.state_arrays()["0.weight"], model.state_arrays()["0.weight"])
    with pytest.raises(CheckpointError, match=r"differs at layer 1: checkpoint has ReLU\(\), model has BatchNorm2D"):
        restore(ckpt, mnist_cnn(seed=4, backend="numpy", batchnorm=True))
