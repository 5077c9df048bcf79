"""What a network computes, from its config alone: each layer's output shape, parameters, forward
FLOPs and activation memory (:func:`walk`, :meth:`fastcnn.model.Sequential.summary`), the
parameter shapes a config allocates (:func:`param_shapes`), and the check that data of a given
image shape flows through every layer (:func:`check_input`), all without building a layer, so a
model that does not fit its data is refused before any weight is allocated or kernel compiled.

Shapes are per image: ``(C, H, W)`` for images, ``(F,)`` for feature vectors. FLOPs count a
multiply-add as two, as :func:`fastcnn.convmath.conv_flops` does; elementwise layers count one per
element (BatchNorm in evaluation mode: two, a scale and a shift).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastcnn.architecture import ConfigError
from fastcnn.convmath import conv_flops, conv_output_size, pair, pool_output_size

__all__ = ["ShapeError", "LayerSummary", "Summary", "walk", "param_shapes", "check_input", "format_shape"]

#: Largest channel, feature or kernel size a config may name (bounds the arithmetic on hostile files).
MAX_SIZE = 1 << 24


class ShapeError(ConfigError):
    """Data of some shape cannot flow through the network: the message names the layer and sizes."""


@dataclass(frozen=True)
class LayerSummary:
    """One layer: its index and type, its output shape per image, its trainable parameters, its
    forward FLOPs per image and the bytes of its output for the summary's batch."""
    index: int
    type: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    activation_bytes: int


@dataclass(frozen=True)
class Summary:
    """Per-layer rows and totals; ``str(summary)`` is a table."""
    input_shape: tuple[int, ...]
    batch_size: int
    dtype: str
    layers: tuple[LayerSummary, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def flops(self) -> int:
        """Forward FLOPs per image."""
        return sum(r.flops for r in self.layers)

    @property
    def activation_bytes(self) -> int:
        """Bytes of every layer's output for ``batch_size`` images (what a training step keeps)."""
        return sum(r.activation_bytes for r in self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

    def __str__(self) -> str:
        head = ("layer", "type", "output", "params", "FLOPs", "activations")
        rows = [(str(r.index), r.type, format_shape(r.output_shape), f"{r.params:,}", _si(r.flops),
                 _bytes(r.activation_bytes)) for r in self.layers]
        rows.append(("", "total", "", f"{self.params:,}", _si(self.flops), _bytes(self.activation_bytes)))
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = [f"input {format_shape(self.input_shape)}, {self.dtype}; FLOPs: forward, per image; activations: "
                 f"outputs of a batch of {self.batch_size}"]
        for row in [head, *rows]:
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        return "\n".join(lines)


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _size(entry: dict, key: str, where: str, default: object = None) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SIZE:
        raise ConfigError(f"fix {where}: {key} must be an integer in 1..{MAX_SIZE}, got {value!r:.40}")
    return int(value)


def _pair(entry: dict, key: str, where: str, default: object, minimum: int) -> tuple[int, int]:
    try:
        a, b = pair(entry.get(key, default), key, minimum)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fix {where}: {exc}") from None
    if max(a, b) > MAX_SIZE:
        raise ConfigError(f"fix {where}: {key} must be at most {MAX_SIZE}, got {(a, b)}")
    return a, b


def _layer_params(entry: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of one config entry, by name."""
    kind = entry.get("type")
    if kind == "Conv2D":
        c, k = _size(entry, "in_channels", where), _size(entry, "out_channels", where)
        r, s = _pair(entry, "kernel_size", where, None, 1)
        return {"weight": (k, c, r, s), "bias": (k,)}
    if kind == "Linear":
        f, k = _size(entry, "in_features", where), _size(entry, "out_features", where)
        return {"weight": (k, f), "bias": (k,)}
    if kind == "BatchNorm2D":
        c = _size(entry, "num_features", where)
        return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,)}
    return {}


def param_shapes(config: Sequence[dict]) -> dict[str, tuple[int, ...]]:
    """``{"0.weight": (32, 1, 3, 3), ...}``: the parameters and buffers a config allocates, named as
    :meth:`~fastcnn.model.Sequential.state_arrays` names them; computed, nothing allocated."""
    out: dict[str, tuple[int, ...]] = {}
    for i, entry in enumerate(config):
        if not isinstance(entry, dict):
            raise ConfigError(f"write layer {i} as an object such as {{\"type\": \"ReLU\"}}")
        out.update({f"{i}.{k}": v for k, v in _layer_params(entry, f"layer {i} ({entry.get('type')})").items()})
    return out


def _from(i: int, config: Sequence[dict], source: str) -> str:
    return source if i == 0 else f"layer {i - 1} {config[i - 1].get('type')}"


def walk(config: Sequence[dict], input_shape: Sequence[int], *, batch_size: int = 1, itemsize: int = 4,
         source: str = "the input") -> list[LayerSummary]:
    """Follow one image of ``input_shape`` (C, H, W) through ``config``; raises :class:`ShapeError`
    at the first layer it does not fit, naming that layer and what the one before gives
    (``source`` names the data for layer 0, e.g. "mnist's 1x28x28 images")."""
    shape = tuple(int(d) for d in input_shape)
    rows = []
    for i, entry in enumerate(config):
        kind = entry.get("type") if isinstance(entry, dict) else None
        where = f"layer {i} ({kind})"
        before = _from(i, config, source)
        gives = f"{before} gives {format_shape(shape)}"
        params = sum(math.prod(s) for name, s in _layer_params(entry, where).items()
                     if name in ("weight", "bias"))
        size = math.prod(shape)
        if kind in ("Conv2D", "MaxPool2D", "AvgPool2D", "BatchNorm2D") and len(shape) != 3:
            raise ShapeError(f"layer {i} {kind} needs images (C, H, W) but {gives}: move it before the Flatten")
        if kind == "Conv2D":
            c, k = _size(entry, "in_channels", where), _size(entry, "out_channels", where)
            (r, s), stride = _pair(entry, "kernel_size", where, None, 1), _pair(entry, "stride", where, 1, 1)
            padding = _pair(entry, "padding", where, 0, 0)
            if shape[0] != c:
                raise ShapeError(f"layer {i} Conv2D expects {c} channels, {gives}")
            p, q = conv_output_size(shape[1], shape[2], r, s, stride, padding)
            if p < 1 or q < 1:
                raise ShapeError(f"layer {i} Conv2D: its {r}x{s} kernel does not fit the {format_shape(shape)} "
                                 f"that {before} gives (padding {padding[0]}x{padding[1]})")
            flops = conv_flops(1, c, shape[1], shape[2], k, r, s, stride, padding)
            shape = (k, p, q)
        elif kind in ("MaxPool2D", "AvgPool2D"):
            kernel = _pair(entry, "kernel_size", where, None, 1)
            stride = _pair(entry, "stride", where, kernel, 1)
            if kernel[0] > shape[1] or kernel[1] > shape[2]:
                raise ShapeError(f"layer {i} {kind}: its {kernel[0]}x{kernel[1]} window does not fit the "
                                 f"{format_shape(shape)} that {before} gives")
            shape = (shape[0], *pool_output_size(shape[1], shape[2], kernel, stride))
            flops = math.prod(shape) * kernel[0] * kernel[1]
        elif kind == "BatchNorm2D":
            c = _size(entry, "num_features", where)
            if shape[0] != c:
                raise ShapeError(f"layer {i} BatchNorm2D expects {c} channels, {gives}")
            flops = 2 * size
        elif kind == "Linear":
            f, k = _size(entry, "in_features", where), _size(entry, "out_features", where)
            if len(shape) != 1:
                raise ShapeError(f"layer {i} Linear expects {f} features, {gives}: add a Flatten before it")
            if shape[0] != f:
                raise ShapeError(f"layer {i} Linear expects {f} features, {before} gives {shape[0]}")
            flops, shape = 2 * f * k, (k,)
        elif kind == "Flatten":
            flops, shape = 0, (size,)
        elif kind == "ReLU":
            flops = size
        elif kind == "Dropout":
            flops = 0
        else:
            raise ConfigError(f"{where} has no shape rule: give a layer type fastcnn knows")
        rows.append(LayerSummary(i, str(kind), shape, params, flops, math.prod(shape) * batch_size * itemsize))
    return rows


def check_input(model, image_shape: Sequence[int], source: str = "the data") -> LayerSummary:
    """Raise :class:`ShapeError` unless images of ``image_shape`` (C, H, W) fit ``model`` (a
    :class:`~fastcnn.model.Sequential`): its ``input_shape`` when it has one, else every layer in
    turn. ``source`` names the data ("mnist"). Returns the last layer's row (its output shape)."""
    image_shape = tuple(int(d) for d in image_shape)
    if model.input_shape is not None and tuple(model.input_shape) != image_shape:
        raise ShapeError(f"the model expects {format_shape(model.input_shape)} images, {source} gives "
                         f"{format_shape(image_shape)}")
    return walk(model.config(), image_shape, source=f"{source} ({format_shape(image_shape)} images)")[-1]
