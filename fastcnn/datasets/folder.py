"""Image folders: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, the layout image tools write
and torchvision's ``ImageFolder`` reads.

Class names are the folder names of ``train/``, sorted; ``test/`` may lack a class but may not add
one. Files are found recursively below each class folder, sorted, hidden ones (``.name``) skipped;
those ending in ``.png``, ``.jpg``/``.jpeg``, ``.bmp`` or ``.gif`` (any case) are read, the first
frame of a GIF. Transparency is dropped (as ``Image.convert`` does). The dataset is greyscale (one
channel) when every pixel of every image is grey, else RGB (grey images then repeat their channel).
Each split is stored in a fixed shuffled order (seed 0), so its first N images mix the classes.

Decoding happens once, in parallel threads, into a cache file
(``$XDG_CACHE_HOME/fastcnn/folders/<key>.npz``) whose key is a SHA-256 over every file's relative
path, class and contents (and the decoding options), written atomically: a changed, added or removed
image makes a new key, and an interrupted run leaves no cache file. The files' digests are themselves
remembered with their sizes and modification times, so a later run only lists the files (a file
rewritten with the same size and time to the nanosecond is taken as unchanged, as by git and make)."""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fastcnn._atomic import atomic_write
from fastcnn.data import DataError, DataWarning, default_cache_dir
from fastcnn.datasets.common import make_dataset
from fastcnn.normalization import Normalization

__all__ = ["FOLDER_SUFFIXES", "is_folder_layout", "load_folder", "parse_image_size"]

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_FOLDER_BYTES = 16 << 30      # decoded pixels of one dataset, at most: the cache and training hold them
_CACHE_FORMAT = 2                # part of the key: a new decoding rule makes old cache files unused
_GREY_MODES = ("1", "L", "LA", "La")
_CHUNK_FILES = 256               # files per task of the thread pool


def parse_image_size(text) -> tuple[int, int]:
    """``"HxW"`` (or ``"N"`` for N x N) -> (H, W); ValueError otherwise."""
    parts = str(text).lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1 or max(dims) > 4096:
        raise ValueError(f"image size must be HxW with 1..4096 pixels per side (e.g. 32x32), got {text!r}")
    return dims


def is_folder_layout(path) -> bool:
    """Whether ``path`` is a folder with ``train/`` and ``test/`` subfolders, ``train/`` holding folders."""
    path = Path(path)
    try:
        return ((path / "test").is_dir() and (path / "train").is_dir()
                and any(d.is_dir() for d in (path / "train").iterdir()))
    except OSError:
        return False


def _image_files(folder: str, rel: str) -> list[tuple[str, int, int]]:
    """The image files below ``folder`` (``rel`` is its path relative to the dataset folder), sorted,
    as (relative path, size, mtime_ns). Plain strings: this runs for every file on every start."""
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list: {exc.strerror or exc}") from None
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            found += _image_files(e.path, f"{rel}/{e.name}")
        elif e.name.lower().endswith(FOLDER_SUFFIXES):
            st = e.stat()
            found.append((f"{rel}/{e.name}", st.st_size, st.st_mtime_ns))
    return found


def _scan(root: Path):
    """-> (class names, {split: [(path, label), ...]})."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such directory"
        raise DataError(f"{root}: {what}: pass a folder holding train/<class>/ and test/<class>/ image folders")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder: an image folder dataset is DIR/train/<class>/* "
                            f"and DIR/test/<class>/*")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root / 'train'} holds no class folders: put each class's images in train/<class>/")
    extra = sorted(d.name for d in (root / "test").iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in classes)
    if extra:
        raise DataError(f"{root / 'test'}: class folder {extra[0]!r} has no counterpart in train/: "
                        f"rename it or add training images for it")
    files = {}
    for split in ("train", "test"):
        items = []
        for label, name in enumerate(classes):
            folder = root / split / name
            found = _image_files(str(folder), f"{split}/{name}") if folder.is_dir() else []
            if split == "train" and not found:
                raise DataError(f"{folder}: no images ({', '.join(FOLDER_SUFFIXES)}): add some or remove the folder")
            items += [(rel, label, size, mtime) for rel, size, mtime in found]
        if not items:
            raise DataError(f"{root / split}: no images in any class folder")
        files[split] = items
    return classes, files


def _hash_chunk(paths):
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                out.append(hashlib.sha256(f.read()).digest())
        except OSError as exc:
            raise DataError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return out


def _digests(root, files, cache, pool):
    """SHA-256 of every file's contents, by split. Digests are remembered per folder in
    ``cache/manifest-<folder hash>.npz`` with each file's size and modification time (nanoseconds),
    and reused while both are unchanged, as git and make do; other files are read and hashed."""
    manifest = cache / f"manifest-{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.npz"
    known = {}
    try:
        with np.load(manifest, allow_pickle=False) as z:
            digests = z["digests"]
            known = dict(zip(zip(z["names"].tolist(), z["sizes"].tolist(), z["mtimes"].tolist()),
                             np.ascontiguousarray(digests).view(f"S{digests.shape[1]}")[:, 0].tolist()))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    rows = [(rel, size, mtime) for split in ("train", "test") for rel, _, size, mtime in files[split]]
    # A NumPy bytes array drops a digest's trailing zero bytes: put them back.
    found = [None if d is None else d.ljust(32, b"\0") for d in map(known.get, rows)]
    todo = [i for i, d in enumerate(found) if d is None]
    fresh = [d for chunk in pool.map(_hash_chunk, _chunks([os.path.join(root, rows[i][0]) for i in todo]))
             for d in chunk]
    for i, d in zip(todo, fresh):
        found[i] = d
    if todo:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            columns = {"names": np.array([r[0] for r in rows], dtype=str),
                       "sizes": np.array([r[1] for r in rows], np.int64),
                       "mtimes": np.array([r[2] for r in rows], np.int64),
                       "digests": np.frombuffer(b"".join(found), np.uint8).reshape(-1, 32)}
            atomic_write(manifest, lambda f: np.savez(f, **columns))
        except OSError:
            pass                     # only a speed-up: the digests are computed again next time
    n_train = len(files["train"])
    return {"train": found[:n_train], "test": found[n_train:]}


def _chunks(seq, n=_CHUNK_FILES):
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def _decode(path: Path, size):
    """-> (H, W, 1 or 3) uint8, or a string saying why the file cannot be used."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
                return (f"declares {w}x{h} pixels, more than Pillow's decompression-bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS}")
            im.seek(0)
            if im.mode.startswith("I;16"):
                im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
            im = im.convert("L" if im.mode in _GREY_MODES else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        return " ".join(str(exc).split())
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        return f"cannot decode: {' '.join(str(exc).split()) or type(exc).__name__}"
    if arr.ndim == 2:
        return arr[:, :, None]
    if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        return arr[:, :, :1].copy()
    return arr


def _decode_chunk(paths, size):
    return [_decode(p, size) for p in paths]


def _pool(workers):
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))


def _cache_key(root, files, digests, size, skip_bad):
    h = hashlib.sha256(f"fastcnn image folder {_CACHE_FORMAT} size={size} skip_bad={skip_bad}\n".encode())
    for split in ("train", "test"):
        h.update(f"{split} {len(files[split])}\n".encode())
        h.update("\0".join(f"{rel}\0{label}" for rel, label, *_ in files[split]).encode())
        h.update(b"".join(digests[split]))
    return h.hexdigest()


def _decode_all(root, files, size, skip_bad, workers):
    """-> ({split: (x, y)}, bad files as "path: why")."""
    from PIL import Image

    decoded, bad, total = {}, [], 0
    with warnings.catch_warnings(), _pool(workers) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # refused by _decode instead
        for split in ("train", "test"):
            paths = [root / rel for rel, *_ in files[split]]
            arrays = [a for chunk in pool.map(_decode_chunk, _chunks(paths), [size] * len(paths))
                      for a in chunk]
            keep = []
            for (rel, label, *_), arr in zip(files[split], arrays):
                path = root / rel
                if isinstance(arr, str):
                    if not skip_bad:
                        raise DataError(f"{path}: {arr}: replace or remove the file, or pass --skip-bad")
                    bad.append(f"{path}: {arr}")
                    continue
                total += arr.nbytes
                if total > MAX_FOLDER_BYTES:
                    raise DataError(f"{root}: the decoded images exceed {MAX_FOLDER_BYTES >> 30} GiB: pass a "
                                    "smaller --image-size")
                keep.append((path, label, arr))
            if not keep:
                raise DataError(f"{root / split}: no image could be decoded ({len(arrays)} tried)")
            decoded[split] = keep
    shapes = {}
    for split in ("train", "test"):
        for path, _, arr in decoded[split]:
            shapes.setdefault(arr.shape[:2], path)
    if len(shapes) > 1:
        (s1, p1), (s2, p2) = list(shapes.items())[:2]
        raise DataError(f"images differ in size ({p1}: {s1[0]}x{s1[1]}, {p2}: {s2[0]}x{s2[1]}): pass --image-size "
                        f"HxW to resize them all")
    channels = max(arr.shape[2] for split in decoded.values() for _, _, arr in split)
    out = {}
    for split, items in decoded.items():
        # A fixed shuffle (seed 0), not class by class: --limit-train N then takes a mix of classes.
        order = np.random.default_rng(0).permutation(len(items))
        x = np.empty((len(items), channels, *items[0][2].shape[:2]), np.uint8)
        for i, k in enumerate(order):
            x[i] = items[k][2].transpose(2, 0, 1)          # a grey image broadcasts over three channels
        out[split] = (x, np.array([items[k][1] for k in order], np.int64))
    return out, bad


def _warn_bad(bad):
    shown = "; ".join(bad[:5]) + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
    warnings.warn(f"skipped {len(bad)} unreadable image file{'s' if len(bad) != 1 else ''}: {shown}",
                  DataWarning, stacklevel=3)


def load_folder(root, image_size=None, *, skip_bad=False, cache_dir=None, workers=None, use_cache=True):
    """Load an image folder dataset (see the module docstring) -> :class:`fastcnn.data.Dataset` named
    ``"folder"`` with the folder names as ``class_names``.

    ``image_size`` (H, W) or "HxW": resize every image that differs (bilinear); without it, images of
    different sizes are a :class:`DataError` naming two of them. A file Pillow cannot decode, or whose
    header declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, is a DataError naming it; with
    ``skip_bad`` it is left out and a :class:`DataWarning` lists them with their count. ``cache_dir``:
    where decoded arrays are kept (default ``$XDG_CACHE_HOME/fastcnn/folders``); a cache that cannot
    be written is a warning, not an error. ``workers``: decoding threads (default: the CPUs, at most 8)."""
    root = Path(root).expanduser().absolute()
    size = parse_image_size(image_size) if isinstance(image_size, str) else (
        tuple(int(s) for s in image_size) if image_size is not None else None)
    classes, files = _scan(root)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("folders")
    with _pool(workers) as pool:
        digests = _digests(root, files, cache, pool)
    key = _cache_key(root, files, digests, size, skip_bad)
    cached = cache / f"{key[:40]}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
                bad = [str(b) for b in z["bad"]]
                norm = Normalization(tuple(z["mean"]), tuple(z["std"])) if "mean" in z.files else None
            if bad:
                _warn_bad(bad)
            return make_dataset(x_train, y_train, x_test, y_test, "folder", root, classes, norm)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass                                      # a damaged cache file: decode again and replace it
    splits, bad = _decode_all(root, files, size, skip_bad, workers)
    if bad:
        _warn_bad(bad)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    norm = Normalization.from_images(x_train)
    if use_cache:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, lambda f: np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test,
                                                    y_test=y_test, bad=np.array(bad, dtype=str),
                                                    mean=np.array(norm.mean), std=np.array(norm.std)))
        except OSError as exc:
            warnings.warn(f"{cached}: cannot cache the decoded images ({exc.strerror or exc}); they are decoded "
                          "again next time", DataWarning, stacklevel=2)
    return make_dataset(x_train, y_train, x_test, y_test, "folder", root, classes, norm)
