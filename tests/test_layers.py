"""Layer tests on the NumPy reference backend: constructor validation, input shape and dtype
errors that say what was expected and what was given, Dropout and BatchNorm2D train/eval
behaviour, and the MNIST network built by ``fastcnn.mnist_cnn``.

Every tolerance comes from :mod:`fastcnn.testing`; none is written here.
"""
from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest

import fastcnn
from fastcnn.backend import OP_NAMES, Ops, get_backend
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from fastcnn.testing import STAT_SIGMAS, assert_formula_close

F32, F64 = np.float32, np.float64


# ------------------------------------------------------------------------- constructor validation

@pytest.mark.parametrize("make,exc,name", [
    (lambda: Conv2D(0, 4, 3), ValueError, "in_channels"),
    (lambda: Conv2D(1.5, 4, 3), TypeError, "in_channels"),
    (lambda: Conv2D(1, -2, 3), ValueError, "out_channels"),
    (lambda: Conv2D(1, True, 3), TypeError, "out_channels"),
    (lambda: Conv2D(1, 4, 0), ValueError, "kernel_size"),
    (lambda: Conv2D(1, 4, (3, 0)), ValueError, "kernel_size"),
    (lambda: Conv2D(1, 4, (3,)), TypeError, "kernel_size"),
    (lambda: Conv2D(1, 4, (3, 3, 3)), TypeError, "kernel_size"),
    (lambda: Conv2D(1, 4, 2.0), TypeError, "kernel_size"),
    (lambda: Conv2D(1, 4, True), TypeError, "kernel_size"),
    (lambda: Conv2D(1, 4, 3, stride=0), ValueError, "stride"),
    (lambda: Conv2D(1, 4, 3, stride=(1, -1)), ValueError, "stride"),
    (lambda: Conv2D(1, 4, 3, stride="2"), TypeError, "stride"),
    (lambda: Conv2D(1, 4, 3, padding=-1), ValueError, "padding"),
    (lambda: Conv2D(1, 4, 3, padding=(0, 1.0)), TypeError, "padding"),
    (lambda: Conv2D(1, 4, 3, dtype=np.int32), TypeError, "dtype"),
    (lambda: Conv2D(1, 4, 3, dtype=np.float16), TypeError, "dtype"),
    (lambda: Conv2D(1, 4, 3, backend="cuda"), ValueError, "backend"),
    (lambda: MaxPool2D(0), ValueError, "kernel_size"),
    (lambda: MaxPool2D((2, 2, 2)), TypeError, "kernel_size"),
    (lambda: MaxPool2D(2, stride=0), ValueError, "stride"),
    (lambda: MaxPool2D(2, stride=(2, 2.5)), TypeError, "stride"),
    (lambda: AvgPool2D(-1), ValueError, "kernel_size"),
    (lambda: AvgPool2D(2, stride=(0, 1)), ValueError, "stride"),
    (lambda: Dropout(p=1.0), ValueError, "p"),
    (lambda: Dropout(p=-0.1), ValueError, "p"),
    (lambda: Dropout(p=1.5), ValueError, "p"),
    (lambda: Dropout(p=float("nan")), ValueError, "p"),
    (lambda: Dropout(p="0.5"), (TypeError, ValueError), "p"),
    (lambda: Dropout(p=True), (TypeError, ValueError), "p"),
    (lambda: Linear(0, 3), ValueError, "in_features"),
    (lambda: Linear(3, "4"), TypeError, "out_features"),
    (lambda: Linear(3, 4, dtype=np.int64), TypeError, "dtype"),
    (lambda: BatchNorm2D(0), ValueError, "num_features"),
    (lambda: BatchNorm2D(4, eps=0.0), ValueError, "eps"),
    (lambda: BatchNorm2D(4, momentum=1.5), ValueError, "momentum"),
    (lambda: BatchNorm2D(4, momentum=-0.1), ValueError, "momentum"),
])
def test_constructor_validation(make, exc, name):
    with pytest.raises(exc, match=rf"\b{name}\b"):
        make()


def test_constructor_normalises_pairs():
    conv = Conv2D(2, 3, (3, 1), stride=np.int64(2), padding=[1, 0], dtype=F64, backend="numpy")
    assert conv.kernel_size == (3, 1) and conv.stride == (2, 2) and conv.padding == (1, 0)
    assert conv.params["weight"].shape == (3, 2, 3, 1) and conv.params["weight"].dtype == F64
    assert MaxPool2D(3).stride == (3, 3) and AvgPool2D(3, stride=1).stride == (1, 1)


# ------------------------------------------------------------------------ input shape/dtype errors

def _assert_names_both(exc_type, fn, expected, actual_shape):
    """fn() raises exc_type whose message contains the expected shape text and the actual shape."""
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert expected in msg, f"expected shape {expected!r} missing from: {msg}"
    assert str(tuple(actual_shape)) in msg, f"actual shape {actual_shape} missing from: {msg}"


@pytest.mark.parametrize("layer,shape,expected", [
    (lambda: Conv2D(3, 4, 3, backend="numpy"), (2, 3, 5), "(N, 3, H, W)"),
    (lambda: Conv2D(3, 4, 3, backend="numpy"), (2, 2, 5, 5), "(N, 3,"),
    (lambda: Conv2D(3, 4, 3, backend="numpy"), (1, 3, 2, 5), "H >= 3"),
    (lambda: Conv2D(3, 4, (2, 4), backend="numpy"), (1, 3, 5, 3), "W >= 4"),
    (lambda: MaxPool2D(3, backend="numpy"), (1, 1, 2, 5), "H >= 3"),
    (lambda: MaxPool2D(2, backend="numpy"), (4, 4), "(N, C, H, W)"),
    (lambda: AvgPool2D((2, 3), backend="numpy"), (1, 2, 4, 2), "W >= 3"),
    (lambda: Linear(5, 3), (2, 4), "(N, 5)"),
    (lambda: Linear(5, 3), (2, 1, 5), "(N, 5)"),
    (lambda: BatchNorm2D(4), (2, 3, 5, 5), "(N, 4, H, W)"),
    (lambda: BatchNorm2D(4), (2, 4, 5), "(N, 4, H, W)"),
    (lambda: Flatten(), (5,), "(N, ...)"),
])
def test_wrong_input_shape_names_expected_and_actual(layer, shape, expected):
    lay = layer()
    dtype = lay.params["weight"].dtype if "weight" in lay.params else F32
    x = np.zeros(shape, dtype=dtype)
    _assert_names_both(ValueError, lambda: lay.forward(x, training=True), expected, shape)


def test_conv2d_dtype_mismatch_raises_type_error():
    conv = Conv2D(1, 2, 3, dtype=F32, backend="numpy")
    with pytest.raises(TypeError, match="float32.*float64|float64.*float32"):
        conv.forward(np.zeros((1, 1, 5, 5), F64))
    with pytest.raises(TypeError, match=r"^convert images with fastcnn\.to_float\(x\)"):     # raw images: the fix first
        conv.forward(np.zeros((1, 1, 5, 5), np.uint8))
    with pytest.raises(TypeError, match=r"^Conv2D expects float32"):                   # no int hint for floats
        conv.forward(np.zeros((1, 1, 5, 5), np.float16))
    with pytest.raises(TypeError):
        conv.forward(np.zeros((1, 1, 5, 5), F32).tolist())


def test_every_float_layer_rejects_input_of_another_dtype():
    x = np.zeros((2, 3, 4, 4), F64)
    for layer in (Conv2D(3, 2, 3, backend="numpy"), BatchNorm2D(3)):
        with pytest.raises(TypeError, match=r"^convert the input with x\.astype\(np\.float32\) or build the layer with "
                                            r"dtype=np\.float64: \w+ has float32 parameters but got float64 input"):
            layer.forward(x, training=True)
    with pytest.raises(TypeError, match="Linear has float32 parameters but got float64 input"):
        Linear(3, 2).forward(np.zeros((2, 3)))              # NumPy alone would promote the output to float64


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_relu_checks_its_input_like_every_layer(backend):
    with pytest.raises(TypeError, match=r"^convert images with fastcnn\.to_float\(x\)"):
        ReLU(backend=backend).forward(np.array([[-1, 2]]))
    with pytest.raises(TypeError, match="ReLU expects float32 or float64 input, got float16"):
        ReLU(backend=backend).forward(np.zeros(3, np.float16))


def _layers_and_inputs(backend):
    x4 = np.random.default_rng(0).standard_normal((2, 3, 6, 8)).astype(F32)
    return [(Conv2D(3, 4, 3, padding=1, backend=backend), x4), (MaxPool2D(2, backend=backend), x4),
            (AvgPool2D(2, backend=backend), x4), (ReLU(backend=backend), x4), (BatchNorm2D(3), x4),
            (Flatten(), x4), (Dropout(0.5), x4), (Linear(144, 5), x4.reshape(2, 144))]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_backward_refuses_a_gradient_of_another_shape_or_dtype(backend):
    # The Numba kernels index dy by the shapes forward saw, without bounds checks: a dy of the same
    # size but transposed spatial axes used to return a wrongly shaped dx, a larger one read past
    # argmax. Every layer now checks dy against its last forward's output.
    for layer, x in _layers_and_inputs(backend):
        y = layer.forward(x, training=True)
        name = type(layer).__name__
        swapped = np.ones(y.shape[:-2] + y.shape[:-3:-1], F32) if y.ndim == 4 else np.ones(y.shape[::-1], F32)
        for dy in (np.ones(y.shape, F64), np.ones((y.shape[0] + 1, *y.shape[1:]), F32), y.sum()):
            with pytest.raises(ValueError, match=f"^pass the gradient of the last forward's output: {name}.backward "
                                                 f"expects dy of shape {re.escape(str(y.shape))} and dtype float32"):
                layer.backward(dy)
        if swapped.shape != y.shape:
            with pytest.raises(ValueError, match=f"{name}.backward expects dy"):
                layer.backward(swapped)
        assert layer.backward(np.ones_like(y)) is not None or isinstance(layer, Conv2D)


def test_backward_before_forward_says_what_to_do():
    for layer, _ in _layers_and_inputs("numpy"):
        with pytest.raises(RuntimeError, match=r"^call forward"):
            layer.backward(np.ones((2, 3, 6, 6), F32))


def test_batchnorm2d_refuses_one_value_per_channel_in_training():
    bn = BatchNorm2D(3)
    with pytest.raises(ValueError, match=r"^use a batch of 2 or more images in training: .*N\*H\*W = 1"):
        bn.forward(np.ones((1, 3, 1, 1), F32), training=True)
    np.testing.assert_array_equal(bn.buffers["running_var"], np.ones(3, F32))     # nothing updated
    assert bn.forward(np.ones((1, 3, 1, 1), F32)).shape == (1, 3, 1, 1)          # evaluation takes it


def test_layers_accept_non_contiguous_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 12))[:, :, ::2, ::3]            # (2, 3, 4, 4) view
    conv = Conv2D(3, 2, 3, padding=1, rng=rng, dtype=F64, backend="numpy")
    np.testing.assert_array_equal(conv.forward(x), conv.forward(np.ascontiguousarray(x)))


# ------------------------------------------------------------------------------------------ ReLU

def test_relu_layer_forward_backward():
    relu = ReLU(backend="numpy")
    x = np.array([[-1.0, 0.0, 2.0]], F32)
    np.testing.assert_array_equal(relu.forward(x), [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.backward(np.ones_like(x)), [[0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------- Dropout

@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_eval_is_identity(dtype):
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(dtype)
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.forward(x), x)                # training defaults to False
    np.testing.assert_array_equal(Dropout(0.0).forward(x, training=True), x)


def test_dropout_train_deterministic_for_seeded_rng():
    x = np.ones((50, 40), F32)
    a = Dropout(0.4, rng=np.random.default_rng(123)).forward(x, training=True)
    b = Dropout(0.4, rng=np.random.default_rng(123)).forward(x, training=True)
    c = Dropout(0.4, rng=np.random.default_rng(124)).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    layer = Dropout(0.4, rng=np.random.default_rng(123))
    first, second = layer.forward(x, training=True), layer.forward(x, training=True)
    assert not np.array_equal(first, second), "consecutive calls draw fresh masks"


def test_dropout_uses_only_its_own_rng():
    x = np.ones((30, 30), F32)
    np.random.seed(0)
    a = Dropout(0.5, rng=np.random.default_rng(9)).forward(x, training=True)
    np.random.seed(1)
    b = Dropout(0.5, rng=np.random.default_rng(9)).forward(x, training=True)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_dropout_drops_about_p_and_scales_the_rest(p, dtype):
    """At 100k elements the dropped fraction is within STAT_SIGMAS binomial standard deviations
    of p; kept elements are scaled by 1/(1-p) with p at its documented 1/65536 resolution."""
    n = 100_000
    x = np.full((100, 1000), 3.0, dtype)
    y = Dropout(p, rng=np.random.default_rng(2024)).forward(x, training=True)
    assert y.dtype == dtype and y.shape == x.shape
    dropped = float(np.mean(y == 0))
    bound = STAT_SIGMAS * math.sqrt(p * (1 - p) / n)
    assert abs(dropped - p) <= bound, f"dropped {dropped:.4f}, expected {p} +- {bound:.4f}"
    p_q = round(p * 65536) / 65536
    kept = y[y != 0].astype(F64)
    np.testing.assert_array_equal(kept, kept[0])                     # one scale for all
    if dtype == F64:
        assert_formula_close(kept[0], 3.0 / (1 - p_q), "kept value")
    if p == 0.5:
        assert p_q == 0.5                                              # exact at p = 0.5


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_dropout_rate_holds_for_every_bit_generator(bit_generator):
    """The mask's 16-bit draws must be uniform whatever generator the user passes (MT19937's raw
    outputs fill only 32 of 64 bits: drawing from those dropped 75 % at p = 0.5)."""
    n, p = 100_000, 0.5
    y = Dropout(p, rng=np.random.Generator(bit_generator(7))).forward(np.ones((100, 1000), F32), training=True)
    dropped = float(np.mean(y == 0))
    assert abs(dropped - p) <= STAT_SIGMAS * math.sqrt(p * (1 - p) / n), dropped


# ---------------------------------------------------------------------------------- BatchNorm2D

def _bn_with_state(C=3, dtype=F64):
    layer = BatchNorm2D(C, eps=1e-3, momentum=0.2, dtype=dtype)
    layer.params["weight"][...] = [1.5, -0.5, 2.0][:C]
    layer.params["bias"][...] = [0.1, 0.2, -0.3][:C]
    layer.buffers["running_mean"][...] = [1.0, -2.0, 0.5][:C]
    layer.buffers["running_var"][...] = [4.0, 0.25, 1.0][:C]
    return layer


def test_batchnorm2d_eval_uses_running_stats_and_does_not_update_them():
    layer = _bn_with_state()
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)) * 3 + 1
    before = {k: v.copy() for k, v in layer.buffers.items()}
    y = layer.forward(x, training=False)
    rm, rv = before["running_mean"][:, None, None], before["running_var"][:, None, None]
    g, b = layer.params["weight"][:, None, None], layer.params["bias"][:, None, None]
    assert_formula_close(y, (x - rm) / np.sqrt(rv + 1e-3) * g + b, "eval output")
    for k in before:
        np.testing.assert_array_equal(layer.buffers[k], before[k], err_msg=k)


def test_batchnorm2d_train_uses_batch_stats_and_updates_running_stats():
    layer = _bn_with_state()
    rng = np.random.default_rng(4)
    rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    for _ in range(3):
        x = rng.standard_normal((4, 3, 3, 5)) * 2 - 1
        y = layer.forward(x, training=True)
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))                                  # biased, for normalising
        m = 4 * 3 * 5
        x_hat = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
        g, b = layer.params["weight"][:, None, None], layer.params["bias"][:, None, None]
        assert_formula_close(y, x_hat * g + b, "train output")
        rm = 0.8 * rm + 0.2 * mean
        rv = 0.8 * rv + 0.2 * var * m / (m - 1)                      # unbiased, as in PyTorch
        assert_formula_close(layer.buffers["running_mean"], rm, "running_mean")
        assert_formula_close(layer.buffers["running_var"], rv, "running_var")
    assert layer.buffers["running_mean"].dtype == F64


def test_batchnorm2d_float32_keeps_dtype():
    layer = BatchNorm2D(2)
    x = np.random.default_rng(5).standard_normal((3, 2, 4, 4)).astype(F32)
    assert layer.forward(x, training=False).dtype == F32
    assert layer.forward(x, training=True).dtype == F32
    assert all(v.dtype == F32 for v in layer.buffers.values())
    assert layer.backward(np.ones_like(x)).dtype == F32
    assert all(g.dtype == F32 for g in layer.grads.values())


# ----------------------------------------------------------------------------------- mnist_cnn

@pytest.mark.parametrize("N", [1, 3])
def test_mnist_cnn_output_shape(N):
    model = fastcnn.mnist_cnn(backend="numpy")
    x = np.random.default_rng(N).random((N, 1, 28, 28), dtype=F32)
    for training in (False, True):
        y = model.forward(x, training=training)
        assert y.shape == (N, 10) and y.dtype == F32
        assert np.all(np.isfinite(y))


def test_mnist_cnn_parameter_shapes():
    model = fastcnn.mnist_cnn(backend="numpy")
    shapes = {name: w.shape for name, w, _ in model.named_parameters()}
    layers = model.unfused_layers()
    convs = [layer for layer in layers if isinstance(layer, Conv2D)]
    linears = [layer for layer in layers if isinstance(layer, Linear)]
    assert [c.params["weight"].shape for c in convs] == [(32, 1, 3, 3), (64, 32, 3, 3)]
    assert [c.params["bias"].shape for c in convs] == [(32,), (64,)]
    assert [linear.params["weight"].shape for linear in linears] == [(10, 3136)]
    assert linears[0].params["bias"].shape == (10,)
    assert sum(int(np.prod(s)) for s in shapes.values()) == (32 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 10 + 10)
    assert model.backend_name == "numpy"
    assert all(layer.backend_name == "numpy" for layer in model.layers + layers if hasattr(layer, "backend_name"))
    assert convs[0].need_input_grad is False and convs[1].need_input_grad is True
    assert sum(isinstance(layer, Dropout) for layer in layers) == 1


def test_mnist_cnn_seeding():
    a, b, c = (fastcnn.mnist_cnn(seed=s, backend="numpy") for s in (5, 5, 6))
    pa, pb, pc = ({n: w for n, w, _ in m.named_parameters()} for m in (a, b, c))
    assert pa.keys() == pb.keys() == pc.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    assert all(not np.array_equal(pa[n], pc[n]) for n in pa if n.endswith("weight"))
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=F32)
    np.testing.assert_array_equal(a.forward(x, training=True), b.forward(x, training=True))


def test_mnist_cnn_batchnorm_and_dtype():
    model = fastcnn.mnist_cnn(batchnorm=True, dtype=F64, backend="numpy")
    bns = [layer for layer in model.layers if isinstance(layer, BatchNorm2D)]
    assert len(bns) == 2 and [bn.num_features for bn in bns] == [32, 64]
    assert all(w.dtype == F64 for _, w, _ in model.named_parameters())
    y = model.forward(np.zeros((2, 1, 28, 28), F64), training=True)
    assert y.shape == (2, 10) and y.dtype == F64
    assert sum(isinstance(layer, BatchNorm2D) for layer in fastcnn.mnist_cnn(backend="numpy").layers) == 0


# ---------------------------------------------------------------------------------- op contract

@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_both_backends_implement_the_typed_op_contract(backend):
    """Every op of backend.Ops exists in the backend with the same parameter names, kinds and defaults."""
    ops = get_backend(backend)
    assert OP_NAMES and set(OP_NAMES) <= set(dir(ops))
    for name in OP_NAMES:
        contract = list(inspect.signature(getattr(Ops, name)).parameters.values())[1:]      # drop self
        actual = list(inspect.signature(getattr(ops, name)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in actual] == [(p.name, p.kind, p.default) for p in contract], name


@pytest.mark.parametrize("make", [lambda: Conv2D(3, 4, 3), lambda: Linear(12, 5),
                                  lambda: fastcnn.mnist_cnn(in_channels=3, image_size=8).layers[0]],
                         ids=["conv", "linear", "fused"])
def test_input_checks_run_again_for_any_new_shape_or_dtype(make):
    """A layer skips its input checks only for the shape and dtype it last accepted (with the same
    weight dtype): a different shape, dtype or weight dtype is checked and refused as before."""
    layer = make()
    C = layer.params["weight"].shape[1]
    good = np.zeros((2, C, 8, 8) if layer.params["weight"].ndim == 4 else (2, C), np.float32)
    for _ in range(2):
        layer.forward(good)
    with pytest.raises(ValueError, match="expects input of shape"):
        layer.forward(np.zeros((2, C + 1, *good.shape[2:]), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        layer.forward(good.astype(np.float16))
    with pytest.raises(TypeError, match="expects a numpy array, got list"):
        layer.forward(good.tolist())
    layer.forward(good)
    layer.params["weight"] = layer.params["weight"].astype(np.float64)
    with pytest.raises(TypeError, match="float64 parameters but got float32 input"):
        layer.forward(good)
