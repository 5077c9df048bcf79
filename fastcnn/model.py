"""The Sequential container and the mission's MNIST network."""
from __future__ import annotations

import numpy as np

from fastcnn.backend import blas_guard, resolve_backend_name
from fastcnn.layers import (
    BatchNorm2D,
    Conv2D,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2D,
    ReLU,
    _BackendLayer,
    _float_dtype,
)
from fastcnn.losses import softmax_cross_entropy


class Sequential:
    """Layers applied in order.

    The first layer is told it needs no input gradient (the data never needs one), which saves
    the first convolution's dx. With ``fuse=True`` (default) a ReLU directly followed by a
    MaxPool2D is computed by the pool in one pass (``MaxPool2D(relu=True)``; the ReLU layer then
    passes through): same outputs and gradients, two fewer passes over the largest activations.
    And a first layer Conv2D -> ReLU -> MaxPool2D runs as one fused op
    (``Conv2D.fused_pool``), so its convolution output is never stored.
    """

    def __init__(self, layers, *, backend=None, fuse=True, input_shape=None):
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError("Sequential needs a non-empty list of Layer objects")
        self.layers = layers
        #: (C, H, W) of one input image when known: checked by forward, named in its error.
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        if hasattr(layers[0], "need_input_grad"):
            layers[0].need_input_grad = False
        if fuse:
            for first, second in zip(layers, layers[1:]):
                if isinstance(first, ReLU) and isinstance(second, MaxPool2D) and not second.relu:
                    first.fused_into_next, second.relu = True, True
            conv, relu, pool = (layers + [None, None])[:3]
            if (isinstance(conv, Conv2D) and not conv.need_input_grad and isinstance(relu, ReLU)
                    and relu.fused_into_next and isinstance(pool, MaxPool2D) and pool.relu):
                conv.fused_pool, pool.fused_into_prev = pool, True
        self.set_backend(backend)

    def set_backend(self, backend):
        """Use 'numpy' or 'numba' for every convolution and pooling layer."""
        self.backend_name = resolve_backend_name(backend)
        for layer in self.layers:
            if isinstance(layer, _BackendLayer):
                layer.set_backend(self.backend_name)

    def forward(self, x, training=False):
        if (self.input_shape is not None and isinstance(x, np.ndarray)
                and (x.ndim != 4 or x.shape[1:] != self.input_shape)):
            raise ValueError(f"the model expects input of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        with blas_guard(self.backend_name):
            for layer in self.layers:
                x = layer.forward(x, training)
        return x

    __call__ = forward

    def backward(self, dy):
        with blas_guard(self.backend_name):
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
        return dy

    def named_parameters(self):
        """Yield (name, parameter, gradient) for every trainable array, e.g. '0.weight'."""
        for i, layer in enumerate(self.layers):
            for key, w in layer.params.items():
                yield f"{i}.{key}", w, layer.grads[key]

    def state_arrays(self):
        """Parameters and buffers by name (views of the live arrays)."""
        out = {}
        for i, layer in enumerate(self.layers):
            out.update({f"{i}.{k}": v for k, v in layer.params.items()})
            out.update({f"{i}.{k}": v for k, v in layer.buffers.items()})
        return out

    @staticmethod
    def _check_batch(x, y):
        """Typed errors for data the layers cannot catch: NaN/inf images (they would silently
        poison every weight), non-integer labels, mismatched lengths, an empty batch."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y (labels) must be integers, got dtype {y.dtype}")
        if len(x) == 0 or y.shape != (len(x),):
            raise ValueError(f"need a non-empty batch with one label per image: x has {len(x)} images, "
                             f"y has shape {y.shape}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values")
        return y

    def train_step(self, x, y, optimizer):
        """One forward/backward/update on a batch; returns (loss, number of correct predictions)."""
        y = self._check_batch(x, y)
        logits = self.forward(x, training=True)
        loss, dlogits = softmax_cross_entropy(logits, y)
        self.backward(dlogits)
        optimizer.step()
        return loss, int((logits.argmax(axis=1) == y).sum())

    def evaluate(self, x, y, batch_size=1000):
        """Mean loss and accuracy of the model over (x, y) in evaluation mode."""
        y = self._check_batch(x, y)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        total_loss, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            logits = self.forward(x[i:i + batch_size], training=False)
            loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size])
            total_loss += loss * len(logits)
            correct += int((logits.argmax(axis=1) == y[i:i + batch_size]).sum())
        return total_loss / len(x), correct / len(x)

    def __repr__(self):
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(backend={self.backend_name!r}\n{inner}\n)"


def mnist_cnn(*, seed=0, dropout=0.5, batchnorm=False, dtype=np.float32, backend=None,
              in_channels=1, image_size=28, num_classes=10):
    """The mission's network: Conv 1->32 3x3 pad 1, ReLU, MaxPool 2, Conv 32->64 3x3 pad 1, ReLU,
    MaxPool 2, Flatten, Dropout(p), Linear 3136->10 (``batchnorm`` adds BatchNorm after each conv).

    All randomness comes from ``seed``: one stream initialises the weights, another drives dropout.
    """
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 4:
        raise ValueError(f"images of {image_size}x{image_size} pixels are too small for this network: its two "
                         "2x2 max-poolings need at least 4x4 pixels (MNIST's are 28x28)")
    dtype = _float_dtype(dtype)
    init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
    init_rng = np.random.default_rng(init_seq)
    side = image_size // 4
    backend = resolve_backend_name(backend)
    layers = [Conv2D(in_channels, 32, 3, padding=1, rng=init_rng, dtype=dtype, backend=backend)]
    layers += [BatchNorm2D(32, dtype=dtype)] if batchnorm else []
    layers += [ReLU(backend=backend), MaxPool2D(2, backend=backend),
               Conv2D(32, 64, 3, padding=1, rng=init_rng, dtype=dtype, backend=backend)]
    layers += [BatchNorm2D(64, dtype=dtype)] if batchnorm else []
    layers += [ReLU(backend=backend), MaxPool2D(2, backend=backend), Flatten(),
               Dropout(dropout, rng=np.random.default_rng(dropout_seq)),
               Linear(64 * side * side, num_classes, rng=init_rng, dtype=dtype)]
    return Sequential(layers, backend=backend, input_shape=(in_channels, image_size, image_size))
