"""Saving, loading and naming whole models: :func:`save` / :func:`load` for any
:class:`~fastcnn.model.Sequential` of fastcnn's layers (a verified checkpoint file, see
:mod:`fastcnn.checkpoint`), :func:`read_model_file` for a model file (JSON, the architecture
only) and :func:`build` for what ``fastcnn-train --model`` takes: a built-in name or a file.

A model file is UTF-8 JSON holding either a :meth:`~fastcnn.model.Sequential.config` list::

    [{"type": "Conv2D", "in_channels": 1, "out_channels": 6, "kernel_size": 5, "padding": 2}, ...]

or an object ``{"layers": [...], "input_shape": [C, H, W]}`` (``input_shape`` optional). A
checkpoint (``.npz``) is a model file too: its architecture, with fresh weights.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fastcnn.architecture import ConfigError
from fastcnn.checkpoint import _ZIP_MAGIC, build_model, load_checkpoint, save_checkpoint

__all__ = ["save", "load", "read_model_file", "build", "open_model", "ModelFileError", "MAX_MODEL_FILE_BYTES",
           "MAX_PARAMS"]

#: A model file larger than this is refused before it is read (a hand-written config is a few KiB).
MAX_MODEL_FILE_BYTES = 1 << 20
#: Most parameters a model built from a name or file may have (4 GiB of float64): a config whose
#: sizes ask for more is refused before anything is allocated.
MAX_PARAMS = 1 << 29


class ModelFileError(ConfigError):
    """A model file or name that cannot be used: the message is one line and leads with the fix."""


def save(model, path, *, data: dict | None = None, history: list | None = None, epoch: int = 0,
         extra: dict | None = None) -> Path:
    """Write ``model`` (any :class:`~fastcnn.model.Sequential` of fastcnn's layers: its config,
    input shape, parameters and buffers) to ``path`` atomically, as a model-only checkpoint that
    :func:`load` and ``fastcnn-eval`` read. ``data``: facts about its input data (JSON object;
    default ``model.data``); ``history``/``epoch``/``extra``: as in
    :func:`~fastcnn.checkpoint.save_checkpoint`. Returns the path written."""
    return save_checkpoint(path, model, None, epoch=epoch, history=history, config={}, rngs=None, extra=extra,
                           data=data)


def load(path, *, backend: str | None = None):
    """The model saved in ``path`` (by :func:`save`, ``fastcnn-train --save-model`` or
    ``--checkpoint``, in this or the previous format), its weights, buffers, ``input_shape`` and
    ``data`` restored; raises :class:`~fastcnn.checkpoint.CheckpointError` (one line) otherwise."""
    return build_model(load_checkpoint(path), backend=backend)


def read_model_file(path) -> tuple[list, tuple[int, ...] | None]:
    """``(config, input_shape or None)`` from a model file (see the module docstring). Raises
    :class:`ModelFileError` for a missing, non-regular, too large, non-UTF-8 or non-JSON file, or
    JSON of another form; the layers themselves are checked when the model is built."""
    path = Path(path)
    where = f"model file {path}"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelFileError(f"give a built-in model name or an existing model file: {path} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"give a regular file: {where} is not one")
    if info.st_size > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(f"give a model file of at most {MAX_MODEL_FILE_BYTES >> 10} KiB: {where} has "
                             f"{info.st_size} bytes")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_MODEL_FILE_BYTES + 1)
    if raw[:4] == _ZIP_MAGIC:
        ckpt = load_checkpoint(path)
        return ckpt.model_config, ckpt.input_shape
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"write {where} as JSON (a list of layers or {{\"layers\": [...]}}): {first}") from None
    shape = None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"layers", "input_shape"})
        if "layers" not in doc or unknown:
            what = f"remove {unknown[0]!r}" if unknown else "add a \"layers\" list"
            raise ModelFileError(f"{what} in {where}: it holds {{\"layers\": [...], \"input_shape\": [C, H, W]}}")
        shape = doc.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 16 for d in shape)):
            raise ModelFileError(f"write input_shape in {where} as [C, H, W], e.g. [1, 28, 28], got {shape!r:.40}")
        doc = doc["layers"]
    if not isinstance(doc, list):
        raise ModelFileError(f"write {where} as a list of layers or {{\"layers\": [...]}}, not a JSON "
                             f"{type(doc).__name__}")
    return doc, None if shape is None else tuple(shape)


def _check_size(config, where: str) -> None:
    from fastcnn.summary import param_shapes
    try:
        total = sum(int(np.prod(s)) for s in param_shapes(config).values())
    except ConfigError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    if total > MAX_PARAMS:
        raise ModelFileError(f"make the layers of {where} smaller: they hold {total:,} parameters, more than "
                             f"{MAX_PARAMS:,}")


def build(spec, *, seed: int = 0, dtype: npt.DTypeLike = np.float32, backend: str | None = None,
          num_classes: int | None = None, fuse: bool = True):
    """The network ``spec`` names: a built-in name (:data:`fastcnn.zoo.MODELS`, built with
    ``num_classes`` when given), a model file path (:func:`read_model_file`), a config list or a
    ``{"layers": ...}`` dict. Weights come from ``seed``. Raises :class:`ModelFileError` / ConfigError."""
    from fastcnn.model import Sequential
    from fastcnn.zoo import MODELS

    if isinstance(spec, str) and spec in MODELS:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return MODELS[spec](seed=seed, dtype=dtype, backend=backend, fuse=fuse, **kwargs)
    shape = None
    if isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, str) and not spec.lower().endswith((".json", ".npz")) and not Path(spec).exists():
            raise ModelFileError(f"choose a built-in model ({', '.join(MODELS)}) or a model file (.json, or a "
                                 f"checkpoint): {spec!r:.60} is neither")
        where = f"model file {spec}"
        config, shape = read_model_file(spec)
    elif isinstance(spec, dict):
        where, config, shape = "the model", spec.get("layers"), spec.get("input_shape")
    else:
        where, config = "the model", spec
    if isinstance(config, list):
        _check_size(config, where)
    try:
        return Sequential.from_config(config, seed=seed, dtype=dtype, backend=backend, fuse=fuse, input_shape=shape)
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def open_model(spec: str, *, backend: str | None = None):
    """``(display name, model)`` for a command's MODEL argument: a built-in name (weights from seed
    0), a checkpoint (its trained weights, :func:`load`) or a JSON model file (weights from seed 0).
    Raises :class:`ModelFileError`, :class:`~fastcnn.checkpoint.CheckpointError` or ConfigError."""
    from fastcnn.zoo import MODELS

    if spec in MODELS:
        return spec, build(spec, backend=backend)
    path = Path(spec)
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
                return path.name, load(path, backend=backend)
    return path.name, build(spec, backend=backend)
