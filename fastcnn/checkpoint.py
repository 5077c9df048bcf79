"""Checkpoints: one file with everything needed to resume a training run bit-identically, or to
evaluate the trained model.

File format (version 3)
-----------------------
A plain, uncompressed ``.npz`` archive (a zip of ``.npy`` files, see :func:`numpy.savez`) holding:

``__header__``
    a 1-D ``uint8`` array: UTF-8 JSON text (an object) with the keys

    ``format`` ``"fastcnn-checkpoint"`` and ``version`` ``3``;
    ``architecture`` ``{"config": [...], "input_shape": [C, H, W] or null, "params": {name:
        {"shape": [...], "dtype": "float32"}}}``: ``config`` is :meth:`fastcnn.model.Sequential.config`
        (one ``{"type": ..., **arguments}`` object per layer), which rebuilds the network;
    ``dtype`` the model's floating-point type (``"float32"`` or ``"float64"``);
    ``data`` facts about the data the model takes (an object: :attr:`fastcnn.model.Sequential.data`):
        ``normalization`` ``{"mean": [...], "std": [...]}`` per channel and ``classes`` (names), read
        by :func:`fastcnn.normalization.data_facts` (absent: MNIST's constants, no names);
    ``optimizer`` ``null`` (model only) or ``{"name": "sgd" | "adamw", "hparams": {...}, "t": steps}``;
    ``epoch`` the number of completed epochs; ``history`` a list of per-epoch metric dicts
        (non-finite floats are written as NaN/Infinity, which Python's ``json`` reads back);
    ``config`` the run's settings (a dict given by the caller); ``extra`` anything else the caller
    adds (a dict);
    ``rngs`` ``{name: bit_generator.state}`` for every random generator of the run (``"shuffle"``,
        ``"dropout/<layer index>"``, ...): NumPy's own state dicts, whose 128-bit integers JSON
        stores exactly;
    ``versions`` of python, numpy, numba and fastcnn; ``backend`` and ``threads`` (Numba threads,
        or null) of the run that wrote the file; ``created`` (UTC, ISO 8601);
    ``arrays`` the sorted names of the ``param/`` and ``optim/`` arrays.

``__sha256__``
    a 1-D ``uint8`` array: the hex SHA-256 of the whole content, header included (see
    :func:`content_hash`): ``fastcnn-checkpoint NUL``, the header's byte count (8 bytes, big-endian)
    and its bytes, then for each other array in sorted name order ``name NUL dtype.str NUL shape NUL``
    and its C-order bytes. Editing any byte of the header or of an array makes the file refused.

``param/<name>``
    each parameter and buffer of :meth:`fastcnn.model.Sequential.state_arrays`, e.g.
    ``param/0.weight``, ``param/1.running_mean``;
``optim/<key>``
    each array of the optimizer's ``state_dict()``, e.g. ``optim/velocity/0.weight`` (SGD),
    ``optim/m/0.weight`` and ``optim/v/0.weight`` (AdamW); the step count ``t`` is in the header.

Loading never unpickles anything (an archive holding an object array is refused), and never
allocates more than the file holds: every member must be stored uncompressed and its ``.npy`` header
must declare exactly the bytes the member holds, checked before an array is read. Then the content
hash is checked, then every header field by type and range (sizes bounded before a model is built
from them; the parameter shapes the config implies must be the stored ones). Version 2 files
(written before models described themselves: ``architecture`` held each layer's ``repr`` and the
:func:`~fastcnn.model.mnist_cnn` arguments ``model_kwargs``) are read as the config those arguments
build. Version 1 files (whose header the hash did not cover) are refused. Any other reader of
``.npz`` files (and any JSON parser) can read a checkpoint.

Writes are atomic: the file is written to a temporary file in the same folder, flushed, fsynced and
renamed over the target (:func:`os.replace`), so a crash at any moment leaves the previous checkpoint
intact. Every problem on loading or restoring raises :class:`CheckpointError` (a ``ValueError``) with
a one-line message naming the file and what is wrong; :func:`restore` checks everything before it
changes anything.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastcnn._atomic import atomic_write
from fastcnn._checkpoint_format import _is_int, _read_archive, _validate_header
from fastcnn._checkpoint_match import _check_model, _check_optimizer, _check_rngs
from fastcnn._cli import versions

if TYPE_CHECKING:
    from fastcnn.model import Sequential
    from fastcnn.optim import Optimizer
from fastcnn._files import InputFileError, open_input

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "architecture_of",
    "build_model",
    "content_hash",
    "load_checkpoint",
    "model_rngs",
    "optimizer_info",
    "payload_hash",
    "restore",
    "save_checkpoint",
]

FORMAT_NAME = "fastcnn-checkpoint"
FORMAT_VERSION = 3
#: The oldest version still read (its architecture is converted, see the module docstring).
_OLDEST_VERSION = 2
HEADER_KEY = "__header__"
DIGEST_KEY = "__sha256__"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"


class CheckpointError(ValueError):
    """A checkpoint cannot be read (missing, not a checkpoint, damaged) or does not fit the model,
    optimizer or generators it is restored into. The message is one line and names the file."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the JSON ``header`` and the ``arrays`` by name (``param/...``,
    ``optim/...``)."""
    path: Path
    header: dict
    arrays: dict = field(repr=False)

    @property
    def epoch(self) -> int:
        return self.header["epoch"]

    @property
    def history(self) -> list[dict]:
        return self.header["history"]

    @property
    def config(self) -> dict:
        return self.header["config"]

    @property
    def model_config(self) -> list[dict]:
        """The saved :meth:`~fastcnn.model.Sequential.config` (a list of layer dicts)."""
        return self.header["architecture"]["config"]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) of the images the model takes, or None when it was saved without one."""
        shape = self.header["architecture"].get("input_shape")
        return None if shape is None else tuple(shape)

    @property
    def model_kwargs(self) -> dict:
        """The input's channels and size and the number of classes under :func:`~fastcnn.model.mnist_cnn`'s
        argument names (``in_channels``, ``image_size``, ``num_classes``, ``dtype``), for callers that read
        them before models were saved as configs; {} for what the model does not fix."""
        out = {"dtype": self.header["dtype"]}
        if self.input_shape is not None:
            out.update(in_channels=self.input_shape[0], image_size=self.input_shape[1])
        last = next((e for e in reversed(self.model_config) if e.get("type") == "Linear"), None)
        if last is not None:
            out["num_classes"] = last["out_features"]
        return out

    @property
    def data(self) -> dict:
        """The saved ``data`` object (facts about the model's input data; {} when none)."""
        return self.header.get("data") or {}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{name: array}`` of the model's parameters and buffers."""
        return {k[len("param/"):]: v for k, v in self.arrays.items() if k.startswith("param/")}

    @property
    def optimizer_state(self) -> dict | None:
        """The optimizer's ``state_dict()`` as saved (``t`` plus its arrays), or None."""
        if self.header.get("optimizer") is None:
            return None
        state = {"t": self.header["optimizer"]["t"]}
        state.update({k[len("optim/"):]: v for k, v in self.arrays.items() if k.startswith("optim/")})
        return state


# ----------------------------------------------------------------------------------------- helpers

def _one_line(text):
    return " ".join(str(text).split())


def _jsonable(obj):
    """``default=`` hook for json.dumps: paths, numpy scalars/arrays, tuples/sets, dtypes."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (np.dtype, type)) and not isinstance(obj, bool):
        try:
            return np.dtype(obj).name
        except TypeError:
            pass
    raise TypeError(f"cannot store {type(obj).__name__} {obj!r} in a checkpoint header")


def _hash_arrays(h, arrays):
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{','.join(map(str, a.shape))}\0".encode())
        h.update(np.ascontiguousarray(a).data if a.size else b"")
    return h


def payload_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) over ``arrays`` (name -> array), in sorted name order: for each array
    ``name NUL dtype.str NUL shape NUL`` (UTF-8, shape as a comma-separated list) then its C-order
    bytes."""
    return _hash_arrays(hashlib.sha256(), arrays).hexdigest()


def content_hash(header_bytes: bytes, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) of a checkpoint's whole content: ``fastcnn-checkpoint NUL``, the header's length
    (8 bytes, big-endian) and bytes, then ``arrays`` as in :func:`payload_hash`."""
    h = hashlib.sha256(FORMAT_NAME.encode() + b"\0" + len(header_bytes).to_bytes(8, "big"))
    h.update(header_bytes)
    return _hash_arrays(h, arrays).hexdigest()


def model_rngs(model: Sequential) -> dict[str, np.random.Generator]:
    """``{"dropout/<i>": layer.rng}`` for every layer of ``model`` as built (its unfused layers: a
    fused layer's Dropout keeps its name) that owns a random generator."""
    layers = model.unfused_layers() if hasattr(model, "unfused_layers") else model.layers
    return {f"{type(layer).__name__.lower()}/{i}": layer.rng
            for i, layer in enumerate(layers) if isinstance(getattr(layer, "rng", None), np.random.Generator)}


def _model_dtype(model):
    dtypes = {a.dtype.name for a in model.state_arrays().values()}
    return dtypes.pop() if len(dtypes) == 1 else ",".join(sorted(dtypes))


def architecture_of(model: Sequential) -> dict:
    """The architecture stored in (and compared against) a checkpoint: the model's config, input
    shape and parameter shapes."""
    return {"config": model.config(),
            "input_shape": None if model.input_shape is None else list(model.input_shape),
            "params": {name: {"shape": list(a.shape), "dtype": a.dtype.name}
                       for name, a in model.state_arrays().items()}}


def optimizer_info(optimizer: Optimizer) -> dict:
    """``{"name", "hparams"}`` of an optimizer (name: class name, lower case)."""
    hparams = {"lr": optimizer.lr}
    for key in ("momentum", "betas", "eps", "weight_decay"):
        if hasattr(optimizer, key):
            value = getattr(optimizer, key)
            hparams[key] = list(value) if isinstance(value, tuple) else value
    return {"name": type(optimizer).__name__.lower(), "hparams": hparams}


def _numba_threads():
    numba = sys.modules.get("numba")
    try:
        return int(numba.get_num_threads()) if numba is not None else None
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------------ saving

def save_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer | None, *, epoch: int,
                    history: list[dict] | None, config: Mapping[str, Any] | None,
                    rngs: Mapping[str, np.random.Generator] | None, extra: Mapping[str, Any] | None = None,
                    threads: int | None = None, data: Mapping[str, Any] | None = None,
                    model_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint of ``model`` (params and buffers), ``optimizer`` (its state and
    hyper-parameters; None saves the model alone) and the generators ``rngs`` (name ->
    ``np.random.Generator``, e.g. ``{"shuffle": g, **model_rngs(model)}``) to ``path``, atomically.

    ``epoch`` (completed epochs), ``history`` (list of per-epoch metric dicts), ``config`` (the run's
    settings) and ``extra`` must be JSON-serialisable (paths and numpy scalars are converted).
    ``data``: facts about the model's input data (JSON object; default: ``model.data``).
    Any :class:`~fastcnn.model.Sequential` of fastcnn's layers can be saved: its config rebuilds it
    (``model_kwargs``, which described mnist_cnn models before, is accepted for older callers and unused).
    ``threads``: recorded as-is; None records Numba's thread count if Numba is loaded.
    Returns the path written (a :class:`~pathlib.Path`)."""
    path = Path(path)
    arrays = {f"param/{name}": np.ascontiguousarray(a) for name, a in model.state_arrays().items()}
    opt_header = None
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_header = {**optimizer_info(optimizer), "t": int(state.get("t", 0))}
        for key, value in state.items():
            if key == "t":
                continue
            if not isinstance(value, np.ndarray):
                raise TypeError(f"optimizer state {key!r} is not an array; only 't' may be a scalar")
            arrays[f"optim/{key}"] = np.ascontiguousarray(value)
    rng_states = {}
    for name, gen in (rngs or {}).items():
        if not isinstance(gen, np.random.Generator):
            raise TypeError(f"rngs[{name!r}] must be a numpy Generator, got {type(gen).__name__}")
        rng_states[str(name)] = gen.bit_generator.state
    header = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "architecture": architecture_of(model),
        "dtype": _model_dtype(model),
        "data": dict(getattr(model, "data", {}) if data is None else data),
        "optimizer": opt_header,
        "epoch": int(epoch), "history": list(history or []), "config": dict(config or {}),
        "extra": dict(extra or {}), "rngs": rng_states,
        "versions": versions(),
        "backend": getattr(model, "backend_name", None),
        "threads": _numba_threads() if threads is None else threads,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arrays": sorted(arrays),
    }
    text = json.dumps(header, default=_jsonable, sort_keys=True)   # fails here, before any file exists
    header_bytes = text.encode("utf-8")
    digest = content_hash(header_bytes, arrays)
    arrays[HEADER_KEY] = np.frombuffer(header_bytes, dtype=np.uint8)
    arrays[DIGEST_KEY] = np.frombuffer(digest.encode("ascii"), dtype=np.uint8)

    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return path


# ----------------------------------------------------------------------------------------- loading

def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint file -> :class:`Checkpoint`.

    Raises :class:`CheckpointError` (one line, naming the file) for a missing or unreadable file,
    a file that is not an ``.npz`` archive, a damaged or truncated archive, an array whose ``.npy``
    header declares more than its member holds, a missing or malformed header, another format, an
    older or newer version, a content SHA-256 that does not match (any edited byte of the header or
    of an array), a header field of the wrong type or out of range, and arrays missing from or added
    to the archive. Never unpickles, and never allocates more than the file holds."""
    path = Path(path)

    def fail(why):
        return CheckpointError(_one_line(f"{path}: {why}"))

    try:
        with open_input(path) as f:              # a regular file: a FIFO or a device would block or never end
            magic = f.read(4)
    except InputFileError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    if not magic:
        raise fail("empty file, not a checkpoint")
    if magic not in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        raise fail("not a checkpoint: not an .npz (zip) archive; give the file fastcnn-train wrote with --checkpoint "
                   "or --save-model")
    arrays = _read_archive(path, fail)

    raw = arrays.pop(HEADER_KEY, None)
    if raw is None:
        raise fail(f"not a fastcnn checkpoint: no {HEADER_KEY} array")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise fail(f"malformed header: expected 1-D uint8, got {raw.dtype} of shape {raw.shape}")
    header_bytes = raw.tobytes()
    digest = arrays.pop(DIGEST_KEY, None)
    if digest is not None:      # checked first: an edited byte anywhere is reported as such
        if digest.dtype != np.uint8 or digest.ndim != 1:
            raise fail(f"malformed {DIGEST_KEY}: expected 1-D uint8, got {digest.dtype} of shape {digest.shape}")
        if digest.tobytes() != content_hash(header_bytes, arrays).encode("ascii"):
            raise fail("damaged or modified: the SHA-256 of its content (header and arrays) does not match "
                       "the one stored in it")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:   # ValueError: JSON, or a 5000-digit number
        raise fail(f"malformed header: not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise fail("malformed header: not a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise fail(f"not a fastcnn checkpoint: format {header.get('format')!r:.40}, expected {FORMAT_NAME!r}")
    version = header.get("version")
    if not _is_int(version, 1):
        raise fail(f"malformed header: bad format version {version!r:.40}")
    if version > FORMAT_VERSION:
        raise fail(f"format version {version} is newer than this fastcnn supports ({FORMAT_VERSION}); "
                   "upgrade fastcnn")
    if version < _OLDEST_VERSION:
        raise fail(f"format version {version} is no longer read: its header is not covered by a checksum, "
                   "so it cannot be verified; train the model again")
    if digest is None:
        raise fail(f"damaged: no {DIGEST_KEY} array (the content checksum)")
    _validate_header(header, arrays, fail)
    for name, arr in arrays.items():             # the digest has no key: it proves no one edited the values
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise fail(f"use a checkpoint of a run that trained normally: array {name!r} holds NaN or infinite "
                       "values (a diverged or tampered model)")
    return Checkpoint(path, header, arrays)


# ---------------------------------------------------------------------------------------- restoring

def restore(checkpoint: Checkpoint | str | os.PathLike, model: Sequential, optimizer: Optimizer | None = None,
            rngs: Mapping[str, np.random.Generator] | None = None, *, check_hparams: bool = True) -> list[str]:
    """Put the state of ``checkpoint`` (a :class:`Checkpoint` or a path) into ``model`` (params
    and BatchNorm buffers, copied in place), ``optimizer`` (its ``load_state_dict``) and ``rngs``
    (name -> Generator; each gets its saved ``bit_generator.state``).

    Everything is checked first; on any mismatch :class:`CheckpointError` says why (dtype,
    architecture, optimizer type, optimizer hyper-parameters when ``check_hparams``, a generator
    missing from the checkpoint) and nothing has been modified. Returns a list of notes (strings)
    about differences that do not prevent restoring but break bit-identical resumption: another
    backend, or generators saved in the checkpoint but not restored."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)

    def fail(why):
        return CheckpointError(_one_line(f"{ckpt.path}: {why}"))

    rngs = dict(rngs or {})
    live = _check_model(ckpt, model, fail)
    if optimizer is not None:
        _check_optimizer(ckpt, optimizer, fail, check_hparams)
    _check_rngs(ckpt, rngs, fail)
    # Prepare the new generator states on copies: a malformed state raises here, before any change.
    states = {}
    for name, gen in rngs.items():
        probe = type(gen.bit_generator)()
        try:
            probe.state = ckpt.header["rngs"][name]
        except (TypeError, ValueError, KeyError) as exc:
            raise fail(f"bad state for random generator {name!r}: {exc}") from None
        states[name] = probe.state

    for name, a in live.items():
        a[...] = ckpt.arrays[f"param/{name}"]
    if optimizer is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
    for name, gen in rngs.items():
        gen.bit_generator.state = states[name]

    notes = []
    saved_backend = ckpt.header.get("backend")
    if saved_backend and saved_backend != getattr(model, "backend_name", saved_backend):
        notes.append(f"checkpoint was written with backend {saved_backend}, the model uses "
                     f"{model.backend_name}: results will not be bit-identical to an uninterrupted run")
    unused = sorted(set(ckpt.header["rngs"]) - set(rngs))
    if unused and optimizer is not None:
        notes.append(f"random generators saved but not restored: {', '.join(unused)}")
    return notes


def build_model(checkpoint: Checkpoint | str | os.PathLike, backend: str | None = None) -> Sequential:
    """Rebuild the network of ``checkpoint`` (a :class:`Checkpoint` or a path) from its saved config
    and restore its parameters, buffers and ``data``. ``backend`` is the one to run on (None:
    ``$FASTCNN_BACKEND`` or the default); the backend the model was trained with is not reused,
    since both compute the same numbers."""
    from fastcnn.model import Sequential

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    try:      # parameter shapes were checked against the stored arrays: the build is bounded by the file
        model = Sequential.from_config(ckpt.model_config, dtype=ckpt.header["dtype"], backend=backend,
                                       input_shape=ckpt.input_shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(_one_line(f"{ckpt.path}: cannot rebuild the model from its config: {exc}")) from None
    restore(ckpt, model)
    model.data = json.loads(json.dumps(ckpt.data))
    return model
