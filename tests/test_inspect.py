"""Tests for fastcnn.inspect: saliency against central finite differences, every layer's maps against
the layers run by hand, top-k against the softmax, filters as copies, the model left untouched, and
concurrent calls each getting their own answer."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from fastcnn.inspect import conv_filters, feature_maps, inspect_image, saliency, top_k
from fastcnn.layers import BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.testing import assert_agree, assert_gradient_close, numerical_gradient


def small_model(backend="numpy", dtype=np.float64, fuse=True):
    """Two convolutions (BatchNorm with non-trivial running statistics after the first), pools,
    dropout and a linear head on 1x8x8 input."""
    rng = np.random.default_rng(3)
    bn = BatchNorm2D(3, dtype=dtype)
    bn.buffers["running_mean"][:] = rng.normal(size=3)
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2.0, size=3)
    bn.params["weight"][:] = rng.uniform(0.5, 1.5, size=3)
    bn.params["bias"][:] = rng.normal(size=3) * 0.1
    layers = [Conv2D(1, 3, 3, padding=1, rng=rng, dtype=dtype), bn, ReLU(), MaxPool2D(2),
              Conv2D(3, 4, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2D(2), Flatten(),
              Dropout(0.5, rng=np.random.default_rng(0)), Linear(16, 5, rng=rng, dtype=dtype)]
    return Sequential(layers, backend=backend, fuse=fuse, input_shape=(1, 8, 8))


def small_mnist_like(backend="numpy", dtype=np.float64):
    """Conv -> ReLU -> MaxPool first: the layers that fusion turns into one ConvReLUMaxPool2D."""
    rng = np.random.default_rng(5)
    layers = [Conv2D(1, 3, 3, padding=1, rng=rng, dtype=dtype), ReLU(), MaxPool2D(2), Flatten(),
              Linear(48, 4, rng=rng, dtype=dtype)]
    return Sequential(layers, backend=backend, input_shape=(1, 8, 8))


@pytest.mark.parametrize("build", [small_model, small_mnist_like])
def test_saliency_matches_finite_differences(build):
    model = build()
    x = np.random.default_rng(1).normal(size=(1, 8, 8))
    c = int(np.argmax(model.forward(x[None])[0]))
    grad = saliency(model, x)
    assert grad.shape == x.shape and np.abs(grad).max() > 0
    numeric = numerical_gradient(lambda: float(model.forward(x[None])[0, c]), x)
    assert_gradient_close(grad, numeric, "saliency")


def test_inspection_leaves_the_model_untouched():
    model = small_model()
    first = model.layers[0]
    grads = {name: g.copy() for name, _, g in model.named_parameters()}
    params = {name: p.copy() for name, p, _ in model.named_parameters()}
    inspect_image(model, np.random.default_rng(2).normal(size=(1, 8, 8)))
    assert model.layers[0] is first and first.need_input_grad is False
    fused = mnist_cnn(seed=0, backend="numpy")
    kinds = [type(layer).__name__ for layer in fused.layers]
    inspect_image(fused, np.zeros((1, 28, 28), np.float32))
    assert [type(layer).__name__ for layer in fused.layers] == kinds and kinds[0] == "ConvReLUMaxPool2D"
    assert fused.layers[0].parts[0].need_input_grad is False
    for name, p, g in model.named_parameters():
        np.testing.assert_array_equal(p, params[name])
        np.testing.assert_array_equal(g, grads[name])


def test_feature_maps_are_each_layers_output_in_order():
    model = small_model()
    x = np.random.default_rng(4).normal(size=(1, 8, 8))
    maps = feature_maps(model, x)
    assert [m.name for m in maps] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Conv2D", "ReLU", "MaxPool2D",
                                      "Flatten", "Linear"]
    assert [m.index for m in maps] == [0, 1, 2, 3, 4, 5, 6, 7, 9]          # Dropout (8) changes nothing at evaluation
    h = x[None]
    for m, layer in zip(maps, [layer for layer in model.unfused_layers() if not isinstance(layer, Dropout)]):
        h = layer.forward(h)
        assert_agree(m.output, h[0], f"layer {m.index} {m.name}")
    assert maps[0].output.shape == (3, 8, 8) and maps[3].output.shape == (3, 4, 4)
    assert (maps[2].output >= 0).all() and (maps[2].output == np.maximum(maps[1].output, 0)).all()
    assert_agree(maps[-1].output, model.forward(x[None])[0], "logits")


def test_top_k_is_the_softmax_in_order():
    logits = np.array([0.5, 3.0, -1.0, 3.0, 2.0])
    top = top_k(logits, 3)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert [c for c, _ in top] == [1, 3, 4]
    np.testing.assert_allclose([q for _, q in top], p[[1, 3, 4]], rtol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        top_k(logits, 0)
    result = inspect_image(small_model(), np.ones((1, 8, 8)), k=10)
    assert len(result.top) == 5 and result.predicted == int(np.argmax(result.logits))
    np.testing.assert_allclose(result.probs.sum(), 1.0, rtol=1e-12)


def test_conv_filters_are_copies_of_every_conv():
    model = small_model()
    filters = conv_filters(model)
    assert [(f.index, f.weight.shape) for f in filters] == [(0, (3, 1, 3, 3)), (4, (4, 3, 3, 3))]
    filters[0].weight[:] = 0
    assert np.abs(model.unfused_layers()[0].params["weight"]).max() > 0


def test_bad_inputs_raise_argument_errors():
    model = small_model()
    with pytest.raises(ValueError, match="shape"):
        saliency(model, np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="expects one image of shape"):
        feature_maps(model, np.zeros((1, 9, 9)))
    with pytest.raises(TypeError, match="to_float"):
        feature_maps(model, np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        saliency(model, np.full((1, 8, 8), np.nan))
    with pytest.raises(TypeError, match="Sequential"):
        conv_filters(object())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_concurrent_calls_each_get_their_own_answer(backend):
    model = mnist_cnn(seed=0, backend=backend)
    xs = np.random.default_rng(6).normal(size=(8, 1, 28, 28)).astype(np.float32)
    expected = [inspect_image(model, x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(3):
            got[i] = inspect_image(model, xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g.logits, e.logits)
        np.testing.assert_array_equal(g.saliency, e.saliency)
        np.testing.assert_array_equal(g.maps[0].output, e.maps[0].output)
    if backend == "numba":          # the kernels' answer is the reference's
        ref = mnist_cnn(seed=0, backend="numpy")
        for x, e in zip(xs[:2], expected):
            r = inspect_image(ref, x)
            assert_agree(e.logits.astype(np.float32), r.logits.astype(np.float32), "logits")
            assert_agree(e.saliency, r.saliency, "saliency")
