"""The Sequential container, its fusion rewrite and the MNIST network."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fastcnn.architecture import layers_from_config
from fastcnn.backend import get_backend, resolve_backend_name
from fastcnn.layerbase import Layer, _BackendLayer, _float_dtype
from fastcnn.layers import (
    Conv2D,
    ConvReLUMaxPool2D,
    Dropout,
    DropoutLinear,
    FusedLayer,
    Identity,
    Linear,
    MaxPool2D,
    ReLU,
    ReLUMaxPool2D,
)
from fastcnn.losses import log_softmax
from fastcnn.optim import Optimizer
from fastcnn.profiling import Profile
from fastcnn.summary import Summary, format_shape, walk


def fuse_layers(layers: Sequence[Layer]) -> list[Layer]:
    """``layers`` with runs that one op computes replaced by a fused layer, each freed slot holding
    an :class:`~fastcnn.layers.Identity` so every other layer keeps its index:

    * Conv2D, then ReLU, then MaxPool2D -> :class:`~fastcnn.layers.ConvReLUMaxPool2D` (with a 2x2
      pool, the convolution's output is never stored);
    * ReLU then MaxPool2D -> :class:`~fastcnn.layers.ReLUMaxPool2D` (one pass instead of two);
    * Dropout then Linear -> :class:`~fastcnn.layers.DropoutLinear` (in the Linear's place, so its
      parameters keep their names).

    Outputs and gradients are those of the unfused layers; the parameters are the same arrays.
    """
    out = list(layers)
    for i in range(len(out) - 2):
        conv, relu, pool = out[i:i + 3]
        if isinstance(conv, Conv2D) and isinstance(relu, ReLU) and isinstance(pool, MaxPool2D):
            out[i:i + 3] = [ConvReLUMaxPool2D(conv, relu, pool), Identity(), Identity()]
    for i in range(len(out) - 1):
        relu, pool = out[i], out[i + 1]
        if isinstance(relu, ReLU) and isinstance(pool, MaxPool2D):
            out[i:i + 2] = [ReLUMaxPool2D(relu, pool), Identity()]
    for i in range(len(out) - 1):
        dropout, linear = out[i], out[i + 1]
        if isinstance(dropout, Dropout) and isinstance(linear, Linear):
            out[i:i + 2] = [Identity(), DropoutLinear(dropout, linear)]
    return out


def fuse(model: Sequential) -> Sequential:
    """Rewrite ``model.layers`` in place with :func:`fuse_layers`; returns ``model``."""
    model.layers = fuse_layers(model.layers)
    model.set_backend(model.backend_name)
    return model


class Sequential:
    """Layers applied in order.

    The first layer is told it needs no input gradient (the data never needs one), which saves
    the first convolution's dx. With ``fuse=True`` (default) the layer list is rewritten by
    :func:`fuse`: same outputs, gradients and parameter names, fewer passes over the largest
    activations. :meth:`unfused_layers` gives the layers as built.
    """

    def __init__(self, layers: Iterable[Layer], *, backend: str | None = None, fuse: bool = True,
                 input_shape: Sequence[int] | None = None) -> None:
        layers = list(layers)
        if not layers or not all(isinstance(layer, Layer) for layer in layers):
            raise TypeError("Sequential needs a non-empty list of Layer objects")
        if hasattr(layers[0], "need_input_grad"):
            layers[0].need_input_grad = False
        self.layers: list[Layer] = fuse_layers(layers) if fuse else layers
        #: (C, H, W) of one input image when known: checked by forward, named in its error.
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        #: What the model knows about its input data (e.g. normalisation, class names), plain JSON
        #: types: saved in and loaded from a checkpoint's ``"data"`` object, otherwise not used here.
        self.data: dict = {}
        #: The attached :class:`~fastcnn.profiling.Profile`, or None (see :meth:`start_profile`).
        self.profile: Profile | None = None
        self.set_backend(backend)

    def set_backend(self, backend: str | None) -> None:
        """Use 'numpy' or 'numba' for every convolution and pooling layer."""
        self.backend_name = resolve_backend_name(backend)
        for layer in self.layers:
            if isinstance(layer, _BackendLayer):
                layer.set_backend(self.backend_name)

    def unfused_layers(self) -> list[Layer]:
        """The layers as built: each fused layer replaced by its parts, which fill its own slot and
        those of the Identity placeholders around it (its ``slot`` is its part's place among
        them). This is the architecture a checkpoint stores."""
        out: list[Layer] = list(self.layers)
        for i, layer in enumerate(self.layers):
            if isinstance(layer, FusedLayer):
                start = i - layer.slot
                out[start:start + len(layer.parts)] = layer.parts
        return out

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if (self.input_shape is not None and isinstance(x, np.ndarray)
                and (x.ndim != 4 or x.shape[1:] != self.input_shape)):
            raise ValueError(f"the model expects input of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        profile = self.profile if training else None
        if profile is None:
            for layer in self.layers:
                x = layer.forward(x, training)
            return x
        clock = time.perf_counter
        for i, layer in enumerate(self.layers):
            t0 = clock()
            x = layer.forward(x, training)
            profile.forward_s[i] += clock() - t0
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """Backpropagate the loss gradient ``dy`` of the last training forward; returns the input
        gradient, None when the first layer skips it."""
        grad: Any = dy                  # None only after the first layer, which nothing follows
        profile = self.profile
        if profile is None:
            for layer in reversed(self.layers):
                grad = layer.backward(grad)
            return grad
        clock = time.perf_counter
        for i in reversed(range(len(self.layers))):
            t0 = clock()
            grad = self.layers[i].backward(grad)
            profile.backward_s[i] += clock() - t0
        return grad

    def start_profile(self) -> Profile:
        """Attach a new :class:`~fastcnn.profiling.Profile`: from now on every training step adds
        its per-layer forward/backward and optimizer times to it. Returns it."""
        names = [None if isinstance(layer, Identity) else f"{i} {type(layer).__name__}"
                 for i, layer in enumerate(self.layers)]
        self.profile = Profile(names)
        return self.profile

    def stop_profile(self) -> Profile | None:
        """Detach the profile (timing stops) and return it, or None if none was attached."""
        profile, self.profile = self.profile, None
        return profile

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (name, parameter, gradient) for every trainable array, e.g. '0.weight'."""
        for i, layer in enumerate(self.layers):
            for key, w in layer.params.items():
                yield f"{i}.{key}", w, layer.grads[key]

    def weights_and_grads(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(parameter, gradient) of every trainable array, in :meth:`named_parameters`' order."""
        return [(w, layer.grads[key]) for layer in self.layers for key, w in layer.params.items()]

    def config(self) -> list[dict]:
        """The architecture as plain JSON types: one dict per layer as built (see
        :mod:`fastcnn.architecture`). ``Sequential.from_config(model.config())`` builds the same network."""
        return [layer.config() for layer in self.unfused_layers()]

    @classmethod
    def from_config(cls, config: object, *, seed: int = 0, dtype: npt.DTypeLike = np.float32,
                    backend: str | None = None, fuse: bool = True,
                    input_shape: Sequence[int] | None = None) -> Sequential:
        """Build the network that ``config`` (a :meth:`config` list) describes, its weights drawn from
        ``seed``; raises :class:`~fastcnn.architecture.ConfigError` naming the first bad layer."""
        backend = resolve_backend_name(backend)
        layers = layers_from_config(config, seed=seed, dtype=_float_dtype(dtype), backend=backend)
        model = cls(layers, backend=backend, fuse=fuse, input_shape=input_shape)
        if input_shape is not None:
            walk(model.config(), model.input_shape, source=f"the input ({format_shape(model.input_shape)})")
        return model

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by name (views of the live arrays)."""
        out = {}
        for i, layer in enumerate(self.layers):
            out.update({f"{i}.{k}": v for k, v in layer.params.items()})
            out.update({f"{i}.{k}": v for k, v in layer.buffers.items()})
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer by name ('0.weight', '1.running_mean', ...)."""
        return {name: a.copy() for name, a in self.state_arrays().items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` (name -> array, as :meth:`state_dict` gives) into the model. Names, shapes
        and dtypes must match exactly and every value be finite; else ValueError naming the first
        mismatch, and nothing is changed."""
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict needs a dict of arrays by name, got {type(state).__name__}")
        live = self.state_arrays()
        missing, unexpected = [k for k in live if k not in state], sorted(k for k in state if k not in live)
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise ValueError(f"state dict does not fit the model: {what} (the model has {', '.join(live)})")
        for name, a in live.items():
            value = state[name]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"state dict entry {name!r} must be a numpy array, got {type(value).__name__}")
            if value.shape != a.shape or value.dtype != a.dtype:
                raise ValueError(f"state dict entry {name!r} is {value.dtype}{list(value.shape)}, the model's is "
                                 f"{a.dtype}{list(a.shape)}")
            if not np.isfinite(value).all():
                raise ValueError(f"state dict entry {name!r} has NaN or infinite values")
        for name, a in live.items():
            a[...] = state[name]

    def _outputs(self) -> int | None:
        """Number of outputs (classes): the last Linear's ``out_features``, None without one."""
        for layer in reversed(self.unfused_layers()):
            if hasattr(layer, "out_features"):
                return int(layer.out_features)
        return None

    def predict_proba(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Softmax probabilities (N, classes), float64, in evaluation mode, ``batch_size`` images at
        a time (``x``: float images (N, C, H, W) as the model was trained on)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        out = [np.exp(log_softmax(np.asarray(self.forward(x[i:i + batch_size], training=False), np.float64)))
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self._outputs() or 0))

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Predicted class (int64, (N,)) of each image of ``x``, in evaluation mode."""
        return self.predict_proba(x, batch_size).argmax(axis=1).astype(np.int64)

    def summary(self, input_shape: Sequence[int] | None = None, batch_size: int = 1) -> Summary:
        """Per layer (as built): output shape, parameters, forward FLOPs per image, output bytes for
        ``batch_size`` images; totals (see :mod:`fastcnn.summary`; ``str()`` of it is a table).
        ``input_shape`` (C, H, W) defaults to the model's; ShapeError when it does not fit."""
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None:
            raise ValueError("give summary an input_shape (C, H, W): the model was built without one")
        dtype = next(iter(self.state_arrays().values()), np.zeros(0, np.float32)).dtype
        rows = walk(self.config(), shape, batch_size=batch_size, itemsize=dtype.itemsize,
                    source=f"the input ({format_shape(shape)})")
        return Summary(tuple(int(d) for d in shape), batch_size, dtype.name, tuple(rows))

    def _check_batch(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Typed errors for data the layers cannot catch: NaN/inf images (they would silently
        poison every weight), non-integer labels, mismatched lengths, an empty batch."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
        y = np.asarray(y)
        if y.dtype.kind not in "iu":              # dtype.kind, not np.issubdtype: cheaper, and this runs every step
            raise TypeError(f"y (labels) must be integers, got dtype {y.dtype}")
        if len(x) == 0 or y.shape != (len(x),):
            raise ValueError(f"need a non-empty batch with one label per image: x has {len(x)} images, "
                             f"y has shape {y.shape}")
        if x.dtype.kind == "f" and not self._step_ops()[1](x):
            raise ValueError("x contains NaN or infinite values")
        return y if y.dtype == np.int64 else y.astype(np.int64)      # the loss and the count take int64 as is

    def _step_ops(self) -> tuple[Callable, Callable, Callable]:
        """The backend's softmax_cross_entropy, all_finite and count_correct, looked up when the
        backend changes (functions, not the module: a model stays copyable and picklable)."""
        cached = self.__dict__.get("_ops")
        if cached is None or cached[0] != self.backend_name:
            ops = get_backend(self.backend_name)
            cached = self._ops = (self.backend_name, (ops.softmax_cross_entropy, ops.all_finite, ops.count_correct))
        return cached[1]

    def train_step(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer) -> tuple[float, int]:
        """One forward/backward/update on a batch; returns (loss, number of correct predictions)."""
        profile = self.profile
        start = time.perf_counter() if profile is not None else 0.0
        y = self._check_batch(x, y)
        logits = self.forward(x, training=True)
        softmax_cross_entropy, _, count_correct = self._step_ops()
        loss, dlogits = softmax_cross_entropy(logits, y)
        self.backward(dlogits)
        if profile is None:
            optimizer.step()
        else:
            t0 = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            profile.add_step(end - t0, end - start)
        return loss, count_correct(logits, y)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
        """Mean loss and accuracy of the model over (x, y) in evaluation mode."""
        y = self._check_batch(x, y)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        total_loss, correct = 0.0, 0
        softmax_cross_entropy, _, count_correct = self._step_ops()
        for i in range(0, len(x), batch_size):
            logits = self.forward(x[i:i + batch_size], training=False)
            loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size])
            total_loss += loss * len(logits)
            correct += count_correct(logits, y[i:i + batch_size])
        return total_loss / len(x), correct / len(x)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(backend={self.backend_name!r}\n{inner}\n)"


def mnist_cnn_config(*, dropout: float = 0.5, batchnorm: bool = False, in_channels: int = 1, image_size: int = 28,
                     num_classes: int = 10) -> list[dict]:
    """The config (:meth:`Sequential.config`) of :func:`mnist_cnn` with these settings."""
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 4:
        raise ValueError(f"images of {image_size}x{image_size} pixels are too small for this network: its two "
                         "2x2 max-poolings need at least 4x4 pixels (MNIST's are 28x28)")
    side = image_size // 4
    config: list[dict] = [{"type": "Conv2D", "in_channels": in_channels, "out_channels": 32, "kernel_size": 3,
                           "padding": 1}]
    config += [{"type": "BatchNorm2D", "num_features": 32}] if batchnorm else []
    config += [{"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2},
               {"type": "Conv2D", "in_channels": 32, "out_channels": 64, "kernel_size": 3, "padding": 1}]
    config += [{"type": "BatchNorm2D", "num_features": 64}] if batchnorm else []
    config += [{"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}, {"type": "Flatten"},
               {"type": "Dropout", "p": dropout},
               {"type": "Linear", "in_features": 64 * side * side, "out_features": num_classes}]
    return config


def mnist_cnn(*, seed: int = 0, dropout: float = 0.5, batchnorm: bool = False, dtype: npt.DTypeLike = np.float32,
              backend: str | None = None, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
              fuse: bool = True) -> Sequential:
    """The MNIST network: Conv 1->32 3x3 pad 1, ReLU, MaxPool 2, Conv 32->64 3x3 pad 1, ReLU,
    MaxPool 2, Flatten, Dropout(p), Linear 3136->10 (``batchnorm`` adds BatchNorm after each conv).
    ``fuse``: as in :class:`Sequential`.

    All randomness comes from ``seed``: one stream initialises the weights, another drives dropout.
    """
    config = mnist_cnn_config(dropout=dropout, batchnorm=batchnorm, in_channels=in_channels, image_size=image_size,
                              num_classes=num_classes)
    return Sequential.from_config(config, seed=seed, dtype=dtype, backend=backend, fuse=fuse,
                                  input_shape=(in_channels, image_size, image_size))
