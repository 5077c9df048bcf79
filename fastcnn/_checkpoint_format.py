"""The checks behind :func:`fastcnn.checkpoint.load_checkpoint`: reading a checkpoint's ``.npz``
archive without allocating more than the file holds or unpickling anything (:func:`_read_archive`),
validating every header field by type and range (:func:`_validate_header`), and converting a
version 2 architecture to version 3's (:func:`_upgrade_architecture`). Each raises the
``fail(why)`` it is given, a :class:`~fastcnn.checkpoint.CheckpointError` naming the file.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

from fastcnn.architecture import ConfigError, layers_from_config
from fastcnn.normalization import data_facts
from fastcnn.summary import param_shapes

_MAX_LAYERS = 10_000
_REQUIRED = {"format": str, "version": int, "architecture": dict, "dtype": str, "epoch": int,
             "history": list, "config": dict, "rngs": dict, "arrays": list}
_FLOAT_DTYPES = ("float32", "float64")
_MAX_ARRAYS = 10_000
_MAX_EPOCHS = 10_000_000
# Bounds of mnist_cnn's settings in version 2 headers, checked before their config is computed.
_KWARG_RANGES = {"in_channels": (1, 4096), "image_size": (4, 1 << 16), "num_classes": (1, 1 << 20)}
_METRIC_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second",
                "eval_seconds")


def _read_archive(path, fail) -> dict:
    """The arrays of the ``.npz`` at ``path``, each checked before it is read: stored uncompressed,
    a plain ``.npy`` header that declares exactly the bytes the member holds, no object dtype. So
    nothing larger than the file is ever allocated, and nothing is unpickled."""
    from fastcnn.checkpoint import CheckpointError  # what fail() makes (fastcnn.checkpoint imports this module)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_ARRAYS:
                raise fail(f"damaged: {len(infos)} members, more than a checkpoint holds")
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise fail(f"refused: member {info.filename!r} is compressed (checkpoints are stored "
                               "uncompressed)")
            if sum(info.file_size for info in infos) > size:
                raise fail("damaged: the archive declares more bytes than the file holds")
            arrays = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else None
                if name is None or name in arrays:
                    raise fail(f"damaged: unexpected archive member {info.filename!r}")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise fail(f"damaged: array {name!r} has .npy format version {version}")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(f)
                    if dtype.hasobject:
                        raise fail("refused: the archive holds an object (pickled) array")
                    nbytes = math.prod(shape) * dtype.itemsize
                    offset = f.tell()
                    if offset + nbytes != info.file_size:
                        raise fail(f"damaged: array {name!r} declares {nbytes} bytes, its member holds "
                                   f"{info.file_size - offset}")
                    buf = bytearray(nbytes)
                    if f.readinto(buf) != nbytes or f.read(1):     # reading to the end checks the CRC
                        raise fail(f"damaged: array {name!r} is truncated")
                arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            return arrays
    except CheckpointError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise fail("refused: the archive holds an object (pickled) array") from None
        raise fail(f"damaged archive: {exc}") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as exc:
        raise fail(f"damaged or truncated archive: {exc or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - any other parse failure of damaged bytes
        raise fail(f"damaged archive: {type(exc).__name__}: {exc}") from None


def _is_int(value, lo=None, hi=None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and (lo is None or value >= lo) and (hi is None or value <= hi))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_header(header, arrays, fail) -> None:
    """Check every header field that anything reads, by type and range, and that the listed arrays
    are the ones present; raise ``fail(...)`` for the first problem."""
    def bad(what):
        return fail(f"malformed header: {what}")

    for key, typ in _REQUIRED.items():
        if not isinstance(header.get(key), typ) or isinstance(header.get(key), bool):
            raise bad(f"{key!r} missing or not a {typ.__name__}")
    for key, typ in (("extra", dict), ("versions", dict), ("created", str), ("backend", str)):
        if header.get(key) is not None and not isinstance(header[key], typ):
            raise bad(f"{key!r} is not a {typ.__name__}")
    if header.get("threads") is not None and not _is_int(header["threads"], 1, 1 << 16):
        raise bad(f"'threads' must be null or a thread count, got {header['threads']!r}")
    if header["dtype"] not in _FLOAT_DTYPES:
        raise bad(f"'dtype' must be one of {', '.join(_FLOAT_DTYPES)}, got {header['dtype']!r}")
    if not _is_int(header["epoch"], 0, _MAX_EPOCHS):
        raise bad(f"'epoch' must be a count of epochs, got {header['epoch']!r}")
    for i, entry in enumerate(header["history"], 1):
        if not isinstance(entry, dict):
            raise bad(f"history entry {i} is {type(entry).__name__} {entry!r:.40}, not an object")
        if "epoch" in entry and not _is_int(entry["epoch"], 0, _MAX_EPOCHS):
            raise bad(f"history entry {i}: 'epoch' is {entry['epoch']!r:.40}, not an epoch number")
        for key in _METRIC_KEYS:
            if entry.get(key) is not None and not _is_number(entry[key]):
                raise bad(f"history entry {i}: {key!r} is {entry[key]!r:.40}, not a number")
    for name, state in header["rngs"].items():
        if not isinstance(state, dict):
            raise bad(f"the state of random generator {name!r} is not an object")

    if header.get("data") is not None and not isinstance(header["data"], dict):
        raise bad("'data' is not an object")
    try:
        data_facts(header.get("data"))
    except ValueError as exc:
        raise bad(f"'data': {exc}") from None
    arch = header["architecture"]
    if header["version"] == 2:
        arch = header["architecture"] = _upgrade_architecture(arch, header["dtype"], bad)
    config, shape = arch.get("config"), arch.get("input_shape")
    if not (isinstance(config, list) and 0 < len(config) <= _MAX_LAYERS and isinstance(arch.get("params"), dict)):
        raise bad(f"architecture needs a 'config' list of 1..{_MAX_LAYERS} layers and a 'params' object")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d, 1, 1 << 16)
                                                                                    for d in shape)):
        raise bad(f"architecture 'input_shape' must be null or [C, H, W], got {shape!r:.40}")
    for name, info in arch["params"].items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d, 0) for d in shape)
                and info.get("dtype") in _FLOAT_DTYPES):
            raise bad(f"parameter {name!r} needs a 'shape' list and a float 'dtype'")
    try:
        implied = param_shapes(config)
    except ConfigError as exc:
        raise bad(f"architecture: {exc}") from None
    saved = {name: tuple(info["shape"]) for name, info in arch["params"].items()}
    if implied != saved:
        name = next(n for n in [*implied, *saved] if implied.get(n) != saved.get(n))
        raise bad(f"architecture: its config implies parameter {name} of shape {implied.get(name)}, its params "
                  f"say {saved.get(name)}")
    if header["version"] == 2:        # as Sequential.config() writes it (pairs as lists, defaults filled in)
        arch["config"] = [layer.config() for layer in layers_from_config(config, dtype=header["dtype"],
                                                                         backend="numpy")]
    opt = header.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and isinstance(opt.get("name"), str)
                                and isinstance(opt.get("hparams"), dict) and _is_int(opt.get("t"), 0)):
        raise fail("malformed header: 'optimizer' must be null or an object with name, hparams and t")
    if opt is not None:
        for key, value in opt["hparams"].items():
            values = value if isinstance(value, list) else [value]
            if not all(_is_number(v) and math.isfinite(v) for v in values):
                raise bad(f"optimizer setting {key}={value!r:.40} is not a finite number")

    if not all(isinstance(n, str) for n in header["arrays"]):
        raise bad("'arrays' must list array names")
    listed, present = set(header["arrays"]), set(arrays)
    if listed - present:
        missing = sorted(listed - present)
        raise fail(f"damaged: missing arrays {', '.join(missing[:5])}"
                   + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if present - listed:
        raise fail(f"damaged: unexpected arrays {', '.join(sorted(present - listed)[:5])}")
    for name, info in arch["params"].items():
        a = arrays.get(f"param/{name}")
        if a is None:
            raise fail(f"damaged: missing parameter array param/{name}")
        if list(a.shape) != info["shape"] or a.dtype.name != info["dtype"]:
            raise fail(f"damaged: parameter {name} is {a.dtype}{list(a.shape)}, the header says "
                       f"{info['dtype']}{info['shape']}")


def _upgrade_architecture(arch, dtype, bad):
    """A version 2 ``architecture`` (layer reprs and :func:`~fastcnn.model.mnist_cnn` arguments) as
    version 3 has it: the config those arguments build, the input shape, the same params."""
    from fastcnn.model import mnist_cnn_config

    kwargs = arch.get("model_kwargs", {})
    if not isinstance(arch.get("params"), dict) or not isinstance(kwargs, dict):
        raise bad("architecture needs a 'params' object and 'model_kwargs'")
    for key, (lo, hi) in _KWARG_RANGES.items():
        if key in kwargs and not _is_int(kwargs[key], lo, hi):
            raise bad(f"model setting {key}={kwargs[key]!r:.40} is not an integer in {lo}..{hi}")
    if "dropout" in kwargs and not (_is_number(kwargs["dropout"]) and 0 <= kwargs["dropout"] < 1):
        raise bad(f"model setting dropout={kwargs['dropout']!r:.40} is not a number in [0, 1)")
    if "batchnorm" in kwargs and not isinstance(kwargs["batchnorm"], bool):
        raise bad(f"model setting batchnorm={kwargs['batchnorm']!r:.40} is not true or false")
    if kwargs.get("dtype", dtype) != dtype:
        raise bad(f"model setting dtype={kwargs['dtype']!r:.40} is not the file's dtype {dtype}")
    settings = {k: kwargs[k] for k in ("dropout", "batchnorm", "in_channels", "image_size", "num_classes")
                if k in kwargs}
    config = mnist_cnn_config(**settings)
    side = settings.get("image_size", 28)
    return {"config": config, "input_shape": [settings.get("in_channels", 1), side, side],
            "params": arch["params"]}
