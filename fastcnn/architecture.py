"""A network as plain data: the layer list a :class:`~fastcnn.model.Sequential` is built from.

``Sequential.config()`` is a list of ``{"type": "Conv2D", "in_channels": 1, ...}`` dicts, one per
layer as built (fused layers appear as their parts). It is what a checkpoint stores and what a
model file written by hand holds; :func:`layers_from_config` builds the layers again. The layer
types are the ones in :data:`LAYER_TYPES`, written out here: a config names a class, it never
imports or evaluates anything.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fastcnn.layerbase import Layer
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU

LAYER_TYPES: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    Conv2D, MaxPool2D, AvgPool2D, ReLU, Flatten, Dropout, Linear, BatchNorm2D)}

#: Constructor arguments that are not architecture: they come from the model's seed, dtype and backend.
_RUNTIME_ARGS = frozenset({"self", "rng", "dtype", "backend"})


class ConfigError(ValueError):
    """A model config that cannot be built: the message names the layer and what to change."""


def _arguments(cls: type[Layer]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in _RUNTIME_ARGS]


def _plain(value: object) -> object:
    """JSON lists arrive where constructors take tuples; both are accepted by the layers."""
    return tuple(value) if isinstance(value, list) else value


def layer_from_config(entry: object, *, index: int = 0, rng: np.random.Generator | None = None,
                      dropout_rng: np.random.Generator | None = None, dtype: npt.DTypeLike = np.float32,
                      backend: str | None = None) -> Layer:
    """Build one layer from its config dict (``index`` only names it in errors). ``rng`` initialises
    weights, ``dropout_rng`` drives a Dropout layer."""
    where = f"layer {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"write {where} as an object such as {{\"type\": \"ReLU\"}}, got {type(entry).__name__}")
    kind = entry.get("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"give {where} a \"type\" among {', '.join(LAYER_TYPES)}, got {kind!r}")
    known = _arguments(cls)
    kwargs = {k: _plain(v) for k, v in entry.items() if k != "type"}
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"remove {unknown[0]!r} from {where} ({kind}): it takes "
                          f"{', '.join(known) if known else 'no arguments'}")
    extra: dict[str, object] = {}
    params = inspect.signature(cls.__init__).parameters
    if "rng" in params:
        extra["rng"] = dropout_rng if cls is Dropout else rng
    if "dtype" in params:
        extra["dtype"] = dtype
    if "backend" in params:
        extra["backend"] = backend
    try:
        return cls(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"fix {where} ({kind}): {e}") from None


def layers_from_config(config: object, *, seed: int = 0, dtype: npt.DTypeLike = np.float32,
                       backend: str | None = None) -> list[Layer]:
    """The layers of ``config`` (a list of layer dicts), initialised from ``seed`` as
    :func:`~fastcnn.model.mnist_cnn` does: child 0 of ``SeedSequence(seed)`` initialises every
    weight in layer order, child 1 drives dropout."""
    if not isinstance(config, Sequence) or isinstance(config, (str, bytes)) or not config:
        raise ConfigError("write a model config as a non-empty list of layers such as "
                          "[{\"type\": \"Flatten\"}, {\"type\": \"Linear\", \"in_features\": 784, "
                          "\"out_features\": 10}]")
    init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
    rng, dropout_rng = np.random.default_rng(init_seq), np.random.default_rng(dropout_seq)
    return [layer_from_config(entry, index=i, rng=rng, dropout_rng=dropout_rng, dtype=dtype, backend=backend)
            for i, entry in enumerate(config)]
