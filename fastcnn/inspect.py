"""Look inside a trained network: its convolution filters, every layer's output maps for one image,
the saliency of the prediction, and the most probable classes. Pure functions returning arrays;
the pictures are drawn by :mod:`fastcnn.inspect_plots`, the web page by :mod:`fastcnn.serve`.

Every function here runs a *private copy* of the model's layers, unfused (conv, ReLU and pool each
visible), which shares the parameter arrays but none of the per-call state the layers keep for
backward. The model passed in is never modified, so inspecting cannot slow or disturb training, and
calls from several threads never see each other's activations. The runs themselves take turns on
one lock: the Numba kernels already use every core for one image.

    >>> import numpy as np, fastcnn
    >>> from fastcnn.inspect import inspect_image
    >>> model = fastcnn.mnist_cnn(seed=0, backend="numpy")
    >>> result = inspect_image(model, np.zeros((1, 28, 28), np.float32))
    >>> [m.name for m in result.maps][:3], result.saliency.shape
    (['Conv2D', 'ReLU', 'MaxPool2D'], (1, 28, 28))
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np

from fastcnn.layerbase import Layer
from fastcnn.layers import BatchNorm2D, Conv2D, Dropout, Identity
from fastcnn.losses import log_softmax

__all__ = ["Filters", "Inspection", "LayerMaps", "conv_filters", "feature_maps", "inspect_image", "saliency",
           "top_k"]

_RUN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Filters:
    """One convolution layer's filters: ``index`` in the unfused layer list, ``name`` (its repr) and
    ``weight`` (K, C, R, S), a copy."""
    index: int
    name: str
    weight: np.ndarray


@dataclass(frozen=True)
class LayerMaps:
    """One layer's output for one image: ``index`` in the unfused layer list, ``name`` (the layer's
    class name), ``layer`` (its repr) and ``output``: (K, P, Q) maps, or (F,) for a flat layer."""
    index: int
    name: str
    layer: str
    output: np.ndarray


@dataclass(frozen=True)
class Inspection:
    """Everything :func:`inspect_image` computes for one image.

    ``input``: the network input (C, H, W); ``maps``: every layer's output in order (Identity and
    Dropout, which change nothing at evaluation, left out); ``logits`` and ``probs`` (classes,),
    float64; ``top``: the most probable classes as (class, probability), most probable first;
    ``saliency``: (C, H, W), the gradient of the predicted class's logit with respect to the input."""
    input: np.ndarray
    maps: list[LayerMaps]
    logits: np.ndarray
    probs: np.ndarray
    top: list[tuple[int, float]]
    saliency: np.ndarray

    @property
    def predicted(self) -> int:
        return self.top[0][0]


def _layers_of(model) -> list[Layer]:
    layers = model.unfused_layers() if hasattr(model, "unfused_layers") else getattr(model, "layers", None)
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"expected a fastcnn Sequential model, got {type(model).__name__}")
    return list(layers)


def _private_copy(model) -> list[Layer]:
    """Shallow copies of the unfused layers: the parameter and buffer arrays are shared (inference
    only reads them), the gradient dicts and everything forward stores are the copies' own."""
    out = []
    for layer in _layers_of(model):
        twin = copy.copy(layer)
        twin.grads = {}
        out.append(twin)
    return out


def _image_batch(model, x) -> np.ndarray:
    """One image (C, H, W) or a batch of one (1, C, H, W), in the dtype of the model's parameters."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (C, H, W) or a batch of one (1, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"convert images with fastcnn.to_float(x) first: x must be float, got {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    dtype = next((p.dtype for layer in _layers_of(model) for p in layer.params.values()), x.dtype)
    shape = getattr(model, "input_shape", None)
    if shape is not None and x.shape[1:] != tuple(shape):
        raise ValueError(f"the model expects one image of shape {tuple(shape)}, got {x.shape[1:]}")
    return np.ascontiguousarray(x, dtype=dtype)


def _backward(layers: list[Layer], dy: np.ndarray) -> np.ndarray:
    """Backpropagate ``dy`` through evaluation-mode ``layers``. BatchNorm2D at evaluation is the
    per-channel affine map x * g / sqrt(var + eps) + const, whose input gradient is written here
    (its own backward differentiates training-mode forwards only)."""
    for layer in reversed(layers):
        if isinstance(layer, BatchNorm2D):
            scale = layer.params["weight"] / np.sqrt(layer.buffers["running_var"] + layer.eps)
            dy = (dy * scale[:, None, None]).astype(dy.dtype)
        else:
            dy = layer.backward(dy)
    return dy


def _run(model, x, *, with_saliency: bool):
    """(batch input, [(layer, output)], logits (classes,), saliency or None) of one image."""
    x = _image_batch(model, x)
    layers = _private_copy(model)
    for layer in layers[:1]:
        if hasattr(layer, "need_input_grad"):
            layer.need_input_grad = with_saliency      # the model itself skips it: training never pays for it
    outputs = []
    with _RUN_LOCK:
        h = x
        for layer in layers:
            h = layer.forward(h, training=False)
            outputs.append((layer, h))
        logits = h
        if logits.ndim != 2 or logits.shape[0] != 1:
            raise ValueError(f"the model's last layer must give (1, classes) logits, got shape {logits.shape}")
        grad = None
        if with_saliency:
            dy = np.zeros_like(logits)
            dy[0, int(np.argmax(logits[0]))] = 1
            grad = _backward(layers, dy)[0]
    return x, outputs, np.asarray(logits[0], np.float64), grad


def conv_filters(model) -> list[Filters]:
    """Every Conv2D layer's weights (K, C, R, S), in order, as copies."""
    return [Filters(i, repr(layer), layer.params["weight"].copy())
            for i, layer in enumerate(_layers_of(model)) if isinstance(layer, Conv2D)]


def _maps(outputs) -> list[LayerMaps]:
    return [LayerMaps(i, type(layer).__name__, repr(layer), np.array(out[0]))
            for i, (layer, out) in enumerate(outputs) if not isinstance(layer, (Identity, Dropout))]


def feature_maps(model, x: np.ndarray) -> list[LayerMaps]:
    """Every layer's output for one image ``x`` (C, H, W) (network input, e.g. ``to_float``'s),
    run unfused at evaluation: conv, ReLU and pool maps alike, then the flat layers."""
    _, outputs, _, _ = _run(model, x, with_saliency=False)
    return _maps(outputs)


def top_k(logits: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` most probable classes of one image's ``logits`` as (class, softmax probability),
    most probable first (ties: the lower class first)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    probs = np.exp(log_softmax(np.asarray(logits, np.float64).reshape(1, -1)))[0]
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(c), float(probs[c])) for c in order]


def saliency(model, x: np.ndarray) -> np.ndarray:
    """The gradient (C, H, W) of the predicted class's logit with respect to the input ``x``
    (C, H, W): how much each input pixel moves that score. The model is not modified."""
    return _run(model, x, with_saliency=True)[3]


def inspect_image(model, x: np.ndarray, k: int = 3, *, with_saliency: bool = True) -> Inspection:
    """One forward (and, for the saliency, one backward) pass over one image ``x`` (C, H, W), the
    network input: every layer's maps, the logits and probabilities, the top ``k`` classes, the
    saliency (zeros when ``with_saliency`` is False)."""
    batch, outputs, logits, grad = _run(model, x, with_saliency=with_saliency)
    probs = np.exp(log_softmax(logits.reshape(1, -1)))[0]
    return Inspection(input=batch[0].copy(), maps=_maps(outputs), logits=logits, probs=probs,
                      top=top_k(logits, min(k, len(logits))),
                      saliency=np.zeros_like(batch[0]) if grad is None else grad)
