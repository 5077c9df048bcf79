"""The built-in networks, by the names the commands take (``--model NAME``).

Each builder returns a :class:`~fastcnn.model.Sequential` from a written-out config, so
``model.config()`` shows the architecture and a model file can start from it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fastcnn.model import Sequential, mnist_cnn


def lenet5(*, seed: int = 0, dtype: npt.DTypeLike = np.float32, backend: str | None = None, in_channels: int = 1,
           num_classes: int = 10, fuse: bool = True) -> Sequential:
    """LeNet-5 (LeCun et al. 1998) as commonly rebuilt for 28x28 input: Conv 6 5x5 pad 2, ReLU,
    MaxPool 2, Conv 16 5x5, ReLU, MaxPool 2, Flatten, Linear 400->120, ReLU, Linear 120->84, ReLU,
    Linear 84->classes (ReLU and max-pooling where the paper had tanh and subsampling)."""
    config = [
        {"type": "Conv2D", "in_channels": in_channels, "out_channels": 6, "kernel_size": 5, "padding": 2},
        {"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2},
        {"type": "Conv2D", "in_channels": 6, "out_channels": 16, "kernel_size": 5},
        {"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2},
        {"type": "Flatten"},
        {"type": "Linear", "in_features": 16 * 5 * 5, "out_features": 120}, {"type": "ReLU"},
        {"type": "Linear", "in_features": 120, "out_features": 84}, {"type": "ReLU"},
        {"type": "Linear", "in_features": 84, "out_features": num_classes},
    ]
    return Sequential.from_config(config, seed=seed, dtype=dtype, backend=backend, fuse=fuse,
                                  input_shape=(in_channels, 28, 28))


def cifar_cnn(*, seed: int = 0, dtype: npt.DTypeLike = np.float32, backend: str | None = None,
              in_channels: int = 3, num_classes: int = 10, dropout: float = 0.5, fuse: bool = True) -> Sequential:
    """A small network for 3x32x32 images (CIFAR-10): three stages of Conv 3x3 pad 1, BatchNorm,
    ReLU, Conv 3x3 pad 1, BatchNorm, ReLU, MaxPool 2 with 32, 64 and 128 channels, then Flatten,
    Dropout(p) and Linear 2048->classes."""
    config: list[dict] = []
    channels = in_channels
    for width in (32, 64, 128):
        for _ in range(2):
            config += [{"type": "Conv2D", "in_channels": channels, "out_channels": width, "kernel_size": 3,
                        "padding": 1},
                       {"type": "BatchNorm2D", "num_features": width}, {"type": "ReLU"}]
            channels = width
        config.append({"type": "MaxPool2D", "kernel_size": 2})
    config += [{"type": "Flatten"}, {"type": "Dropout", "p": dropout},
               {"type": "Linear", "in_features": 128 * 4 * 4, "out_features": num_classes}]
    return Sequential.from_config(config, seed=seed, dtype=dtype, backend=backend, fuse=fuse,
                                  input_shape=(in_channels, 32, 32))


#: Built-in networks by command-line name; each takes seed, dtype, backend, fuse and num_classes.
MODELS: dict[str, Callable[..., Sequential]] = {"mnist-cnn": mnist_cnn, "lenet5": lenet5, "cifar-cnn": cifar_cnn}
