"""Arrays in a ``.npz`` file: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and, optionally,
``classes``: one name per class).

Images are (N, C, H, W) or (N, H, W, C) (channels last is recognised when the last axis has 1, 3 or
4 entries and the second does not), or (N, H, W) for one channel; ``uint8`` (0..255) or float (on
the [0, 1] scale, finite). Labels are integers 0..classes-1, one per image. The file is read without
pickle, and each member's ``.npy`` header is checked against the member's size (and
:data:`MAX_ARRAY_BYTES`) before anything is allocated, so a forged header is refused at once."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fastcnn._files import read_npy_header
from fastcnn.data import DataError
from fastcnn.datasets.common import make_dataset

__all__ = ["ARRAY_KEYS", "MAX_ARRAY_BYTES", "load_arrays"]

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_ARRAY_BYTES = 16 << 30


def _check_headers(path: Path) -> set[str]:
    """The member names (without ``.npy``); DataError for a member whose header declares more data
    than it holds, more than MAX_ARRAY_BYTES, or a dtype that needs pickle."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set()
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                names.add(key)
                with zf.open(info) as f:
                    try:
                        shape, dtype = read_npy_header(f)
                    except ValueError as exc:
                        raise DataError(f"{path}: member {key!r} is not a valid .npy array ({exc})") from None
                if dtype.hasobject:
                    raise DataError(f"{path}: member {key!r} holds Python objects: save plain numeric arrays "
                                    "(it is never unpickled)")
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared > MAX_ARRAY_BYTES or declared > info.file_size:
                    raise DataError(f"{path}: member {key!r} declares {declared} bytes of shape {shape}, "
                                    f"more than it holds ({info.file_size}) or than {MAX_ARRAY_BYTES}: damaged file")
            return names
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a .npz file (not a zip archive): save it with numpy.savez") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _images(path, key, x) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: {key} must be (N, C, H, W), (N, H, W, C) or (N, H, W), got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{path}: {key} holds NaN or infinite pixels")
        return np.ascontiguousarray(x, dtype=np.float32 if x.dtype.itemsize <= 4 else np.float64)
    if x.dtype != np.uint8:
        raise DataError(f"{path}: {key} is {x.dtype}: images must be uint8 (0..255) or float ([0, 1] scale)")
    return np.ascontiguousarray(x)


def load_arrays(path) -> object:
    """Load a ``.npz`` dataset (see the module docstring) -> :class:`fastcnn.data.Dataset` named
    ``"npz"``. Every problem is a :class:`fastcnn.data.DataError` naming the file and the array."""
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise DataError(f"{path}: {'is a folder' if path.exists() else 'no such file'}: pass a .npz file "
                        f"holding {', '.join(ARRAY_KEYS)}")
    names = _check_headers(path)
    missing = [k for k in ARRAY_KEYS if k not in names]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}: a .npz dataset holds {', '.join(ARRAY_KEYS)} "
                        f"(it has: {', '.join(sorted(names)) or 'nothing'})")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ARRAY_KEYS}
            classes = z["classes"] if "classes" in names else None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read its arrays: {' '.join(str(exc).split())}") from None
    x_train, x_test = _images(path, "x_train", arrays["x_train"]), _images(path, "x_test", arrays["x_test"])
    if x_train.dtype != x_test.dtype:
        raise DataError(f"{path}: x_train is {x_train.dtype} but x_test {x_test.dtype}: store both alike")
    labels = []
    for key in ("y_train", "y_test"):
        y = arrays[key]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dtype.kind not in "iu":
            raise DataError(f"{path}: {key} is {y.dtype}: labels must be integers 0..classes-1")
        labels.append(y)
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DataError(f"{path}: classes must be a 1-D array of names, got {classes.dtype} {classes.shape}")
        classes = [str(c) for c in classes]
    return make_dataset(x_train, labels[0], x_test, labels[1], "npz", path, classes)
