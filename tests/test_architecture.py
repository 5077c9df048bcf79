"""A network as data: every layer's config builds an equal layer, and bad configs name the layer."""
import json

import numpy as np
import pytest

from fastcnn.architecture import LAYER_TYPES, ConfigError, layer_from_config
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.zoo import MODELS

LAYERS = [
    {"type": "Conv2D", "in_channels": 3, "out_channels": 4, "kernel_size": [3, 2], "stride": [2, 1],
     "padding": [1, 0]},
    {"type": "MaxPool2D", "kernel_size": [2, 2], "stride": [1, 2]},
    {"type": "AvgPool2D", "kernel_size": [3, 3], "stride": [3, 3]},
    {"type": "ReLU"},
    {"type": "Flatten"},
    {"type": "Dropout", "p": 0.25},
    {"type": "Linear", "in_features": 7, "out_features": 3},
    {"type": "BatchNorm2D", "num_features": 5, "eps": 1e-3, "momentum": 0.2},
]


def test_every_layer_type_has_a_config_case():
    assert {entry["type"] for entry in LAYERS} == set(LAYER_TYPES)


@pytest.mark.parametrize("entry", LAYERS, ids=[e["type"] for e in LAYERS])
def test_layer_config_round_trip(entry):
    layer = layer_from_config(entry)
    assert layer.config() == entry
    assert json.loads(json.dumps(layer.config())) == entry


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("fuse", [True, False])
def test_model_from_its_config_is_the_same_network(name, fuse):
    model = MODELS[name](seed=5, backend="numpy", fuse=fuse)
    again = Sequential.from_config(json.loads(json.dumps(model.config())), seed=5, backend="numpy", fuse=fuse)
    assert again.config() == model.config()
    a, b = model.state_arrays(), again.state_arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), again.forward(x))


def test_config_lists_fused_layers_as_their_parts():
    assert [e["type"] for e in mnist_cnn(fuse=True).config()] == [e["type"] for e in mnist_cnn(fuse=False).config()]


@pytest.mark.parametrize("config, message", [
    ([{"type": "Conv3D"}], r"layer 0 a \"type\" among Conv2D"),
    ([{"type": "ReLU"}, {"type": "Linear", "in_features": 3, "out_features": 2, "units": 4}],
     r"remove 'units' from layer 1 \(Linear\)"),
    ([{"type": "Linear", "in_features": 0, "out_features": 2}], r"fix layer 0 \(Linear\): in_features must be >= 1"),
    ([{"type": "Dropout", "p": 1.5}], r"fix layer 0 \(Dropout\)"),
    ([["Conv2D"]], r"write layer 0 as an object"),
    ([], "non-empty list"),
    ({"type": "ReLU"}, "non-empty list"),
])
def test_bad_config_names_the_layer(config, message):
    with pytest.raises(ConfigError, match=message):
        Sequential.from_config(config)
