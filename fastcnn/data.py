"""Datasets in the IDX format: MNIST, Fashion-MNIST, or any folder of the same four files.

Where the files come from, in this order (the first folder that holds all four wins):

1. the ``data_dir`` argument (``--data-dir DIR`` on the command line);
2. the folder named by the environment variable ``FASTCNN_DATA_DIR``;
3. the per-user cache, ``$XDG_CACHE_HOME/fastcnn/<dataset>`` or ``~/.cache/fastcnn/<dataset>``.

A file counts whether it is gzipped (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``);
gzip is recognised by its magic bytes, not by the name. If no folder is complete, MNIST and
Fashion-MNIST are downloaded into the cache from their mirrors, one file at a time, each to a temporary
file that is verified and only then renamed into place, so an interrupted or corrupt download leaves
nothing behind. Offline, point ``FASTCNN_DATA_DIR`` (or ``--data-dir``) at a folder with the files.

Checksums: MNIST's are of the *decompressed* IDX bytes, so both the original downloads and re-gzipped
copies pass; Fashion-MNIST's are the published MD5s of the ``.gz`` files as downloaded (a decompressed
copy of a Fashion-MNIST file cannot be checked and is accepted on its structure alone).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field, replace
from http.client import HTTPException
from pathlib import Path

import numpy as np

__all__ = ["DataError", "FileSpec", "DatasetSpec", "Dataset", "MNIST", "FASHION_MNIST", "DATASETS",
           "read_idx", "find_data_dir", "candidate_dirs", "default_cache_dir", "load_dataset", "to_float"]

ENV_VAR = "FASTCNN_DATA_DIR"
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_CHUNK = 1 << 16


class DataError(ValueError):
    """A data file is missing, malformed, fails its checksum, or could not be downloaded."""


# ----------------------------------------------------------------------------------------- IDX files

def _read_file(path):
    """Return ``(raw_bytes, data_bytes)`` of ``path``: as stored, and decompressed if it is gzipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data: {exc}") from exc


def _parse_idx(data, path):
    """Parse the bytes of an unsigned-byte IDX file into a uint8 array, validating every field."""
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{data[:4].hex()}: the first two bytes must be zero "
                        "(not an IDX file?)")
    if data[2] != _IDX_UBYTE:
        raise DataError(f"{path}: unsupported IDX data type 0x{data[2]:02x} "
                        f"(only 0x{_IDX_UBYTE:02x} = unsigned byte is accepted)")
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{path}: bad magic number 0x{data[:4].hex()}: zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, "
                        f"found {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = 1
    for d in dims:
        expected *= d
    found = len(data) - header
    what = f"header says {'x'.join(map(str, dims))} = {expected} bytes of data, found {found}"
    if found < expected:
        raise DataError(f"{path}: truncated: {what}")
    if found > expected:
        raise DataError(f"{path}: trailing bytes: {what} ({found - expected} extra)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path):
    """Read an IDX file of unsigned bytes (gzipped or raw) into a ``uint8`` array of its declared shape.

    Raises :class:`DataError`, naming the file, for an unreadable file, corrupt gzip data, a bad magic
    number, a data type other than 0x08 (unsigned byte), or a byte count that differs from the product
    of the dimensions (truncated or trailing bytes)."""
    return _parse_idx(_read_file(path)[1], path)


# ------------------------------------------------------------------------------------ dataset specs

@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: its published name and, optionally, a checksum.

    ``digest_of`` says what ``digest`` is taken over: ``"data"`` = the decompressed IDX bytes (any gzip
    wrapper, or none, passes), ``"gz"`` = the gzipped file exactly as downloaded. ``digest=None`` means
    no checksum (structure checks only)."""
    name: str
    digest: str | None = None
    digest_of: str = "data"
    algorithm: str = "md5"

    def __post_init__(self):
        if self.digest_of not in ("data", "gz"):
            raise ValueError(f"digest_of must be 'data' or 'gz', got {self.digest_of!r}")
        hashlib.new(self.algorithm)  # fails early for an unknown algorithm


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of four IDX files: train images/labels, test images/labels, where to download them
    (``mirrors``: base URLs tried in order; empty = never download) and how many classes the labels
    may take (``num_classes=None``: any non-negative label)."""
    name: str
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    mirrors: tuple[str, ...] = ()
    num_classes: int | None = 10

    def __post_init__(self):
        object.__setattr__(self, "mirrors", tuple(self.mirrors))

    @property
    def files(self):
        """The four :class:`FileSpec` in the order train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _spec(name, mirrors, digests, digest_of, algorithm, num_classes=10):
    files = [FileSpec(n, d, digest_of, algorithm) for n, d in zip(_NAMES, digests)]
    return DatasetSpec(name, *files, mirrors=tuple(mirrors), num_classes=num_classes)


MNIST = _spec("mnist", ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/"),
              ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
               "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
               "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
               "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"), "data", "sha256")
FASHION_MNIST = _spec("fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                      ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                       "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"), "gz", "md5")
_CUSTOM = _spec("custom", (), (None,) * 4, "data", "md5", num_classes=None)
DATASETS = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset. Images are ``uint8`` of shape (N, 1, H, W) (28 x 28 for MNIST), labels are
    ``int64`` of shape (N,); ``source_dir`` is the folder the files were read from."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    source_dir: Path = field(default=None)

    @property
    def num_classes(self):
        """Largest label + 1 over train and test (10 for MNIST and Fashion-MNIST)."""
        return int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))) + 1


# ------------------------------------------------------------------------------------ where to look

def default_cache_dir(dataset):
    """``$XDG_CACHE_HOME/fastcnn/<dataset>``, or ``~/.cache/fastcnn/<dataset>`` when that is unset."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fastcnn" / dataset


def candidate_dirs(dataset="mnist", data_dir=None, cache_dir=None):
    """The folders searched, in order, as ``(path, where)`` pairs: ``data_dir``, ``$FASTCNN_DATA_DIR``,
    then the cache (``cache_dir`` or :func:`default_cache_dir`; never for ``"custom"``)."""
    name = dataset.name if isinstance(dataset, DatasetSpec) else dataset
    dirs = []
    if data_dir is not None:
        dirs.append((Path(data_dir).expanduser(), "data_dir argument"))
    if os.environ.get(ENV_VAR):
        dirs.append((Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR))
    if name != "custom":
        dirs.append((Path(cache_dir) if cache_dir is not None else default_cache_dir(name), "cache"))
    return dirs


def _locate(directory, name):
    """Path of ``name`` (gz) or of ``name`` without ``.gz`` (raw) in ``directory``, or None."""
    for candidate in (name, name[:-3] if name.endswith(".gz") else None):
        if candidate and (directory / candidate).is_file():
            return directory / candidate
    return None


def _missing(directory, spec):
    return [f.name for f in spec.files if _locate(directory, f.name) is None]


def find_data_dir(dataset="mnist", data_dir=None, cache_dir=None):
    """The first folder of :func:`candidate_dirs` that holds all four files of ``dataset`` (a name or
    a :class:`DatasetSpec`), or None."""
    spec = dataset if isinstance(dataset, DatasetSpec) else DATASETS.get(dataset, _CUSTOM)
    for directory, _ in candidate_dirs(spec, data_dir, cache_dir):
        if not _missing(directory, spec):
            return directory
    return None


# ----------------------------------------------------------------------------- verify and download

def _check_digest(fspec, path, raw, data, hint=" (delete the file to download it again)"):
    """Raise DataError if the file's checksum is wrong; skip when it cannot apply (no digest, or a
    ``.gz`` digest for a file stored decompressed)."""
    if fspec.digest is None or (fspec.digest_of == "gz" and raw[:2] != _GZIP_MAGIC):
        return
    actual = hashlib.new(fspec.algorithm, raw if fspec.digest_of == "gz" else data).hexdigest()
    if actual != fspec.digest.lower():
        what = "the gzipped file" if fspec.digest_of == "gz" else "the decompressed data"
        raise DataError(f"{path}: checksum mismatch: expected {fspec.algorithm} {fspec.digest} of {what}, "
                        f"got {actual}{hint}")


def _download(url, dest, fspec, timeout):
    """Stream ``url`` to a temp file beside ``dest``, verify it, and rename it into place atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    show = sys.stderr.isatty()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total, done = int(resp.headers.get("Content-Length") or 0), 0
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if show:
                    pct = f" {100 * done // total:3d}%" if total else ""
                    print(f"\rdownloading {url}{pct} ({done / 1e6:.1f} MB)", end="", file=sys.stderr)
        if show:
            print(file=sys.stderr)
        raw, data = _read_file(tmp)
        _check_digest(fspec, url, raw, data, hint="")
        _parse_idx(data, url)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def _download_missing(spec, directory, timeout):
    """Download every file of ``spec`` missing from ``directory``; return a list of failure reasons."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"cannot create {directory}: {exc.strerror or exc}"]
    for fspec in spec.files:
        if _locate(directory, fspec.name) is not None:
            continue
        reasons = []
        for base in spec.mirrors:
            url = base.rstrip("/") + "/" + fspec.name
            try:
                _download(url, directory / fspec.name, fspec, timeout)
                break
            except DataError as exc:  # already names the URL
                reasons.append(str(exc))
            except (OSError, HTTPException) as exc:
                reason = exc.reason if type(exc) is urllib.error.URLError else exc
                reasons.append(f"{url}: {reason or type(exc).__name__}")
        else:
            return [f"{fspec.name}: " + ("; ".join(reasons) or "no mirrors")]
    return []


def _not_found(spec, dirs, problem):
    looked = "\n".join(f"  {d} ({where}): " + (f"missing {', '.join(_missing(d, spec))}" if d.is_dir()
                                                 else "no such directory") for d, where in dirs)
    names = ", ".join(f.name for f in spec.files)
    return DataError(f"{spec.name}: {problem}\nLooked in:\n{looked or '  (nowhere)'}\n"
                     f"To use local files, pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR, where "
                     f"DIR is a folder with the four IDX files, gzipped or not: {names}")


# ------------------------------------------------------------------------------------------ loading

def load_dataset(name="mnist", data_dir=None, download=True, verify=True, timeout=30, *,
                 mirrors=None, cache_dir=None):
    """Load a dataset of four IDX files into a :class:`Dataset` (images (N, 1, H, W) uint8, labels int64).

    ``name``: ``"mnist"``, ``"fashion-mnist"``, ``"custom"`` or a :class:`DatasetSpec`. Folders are
    searched as in :func:`find_data_dir`; if none holds all four files and ``download`` is true, the
    missing ones are fetched from the mirrors (``mirrors`` overrides the spec's) into ``cache_dir``
    (default :func:`default_cache_dir`; this is the folder the files go in, no subfolder is added).
    ``verify`` checks each file's checksum. ``timeout`` is per network operation, in seconds.

    ``"custom"`` needs ``data_dir`` or ``$FASTCNN_DATA_DIR``, with MNIST's four file names; it is never
    downloaded or checksummed, and labels may be any non-negative integers (classes = largest + 1).
    Structure checks, always: images 3-D with the same H x W in train and test, labels 1-D, as many
    labels as images, and labels below ``num_classes`` (10 for MNIST and Fashion-MNIST).
    An explicit ``data_dir`` that does not exist is an error (it is not skipped).
    Every problem raises :class:`DataError` naming the file or the folders searched."""
    if isinstance(name, DatasetSpec):
        spec = name
    elif name == "custom":
        spec = _CUSTOM
    elif name in DATASETS:
        spec = DATASETS[name]
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['custom']}")
    if mirrors is not None:
        spec = replace(spec, mirrors=tuple(mirrors))
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        # An explicit folder that does not exist is a mistake to report, not a search miss to
        # paper over with $FASTCNN_DATA_DIR or the cache.
        raise DataError(f"{data_dir}: data folder not found (no such directory)")
    dirs = candidate_dirs(spec, data_dir, cache_dir)
    if not dirs:
        raise DataError(f"dataset 'custom' needs a folder: pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}")
    source = find_data_dir(spec, data_dir, cache_dir)
    if source is None:
        if not download or not spec.mirrors or dirs[-1][1] != "cache":
            raise _not_found(spec, dirs, "files not found" + ("" if download else " (download disabled)"))
        failures = _download_missing(spec, dirs[-1][0], timeout)
        if failures:
            raise _not_found(spec, dirs, "files not found, and the download failed:\n  " + "\n  ".join(failures))
        source = dirs[-1][0]
    arrays = []
    for fspec in spec.files:
        path = _locate(source, fspec.name)
        raw, data = _read_file(path)
        if verify:
            _check_digest(fspec, path, raw, data)
        arrays.append((path, _parse_idx(data, path)))
    (pxi, xi), (pyi, yi), (pxt, xt), (pyt, yt) = arrays
    for path, arr, ndim in ((pxi, xi, 3), (pyi, yi, 1), (pxt, xt, 3), (pyt, yt, 1)):
        if arr.ndim != ndim:
            raise DataError(f"{path}: expected {ndim}-D {'images' if ndim == 3 else 'labels'}, "
                            f"got shape {arr.shape}")
    for pi, x, pl, y in ((pxi, xi, pyi, yi), (pxt, xt, pyt, yt)):
        if len(x) != len(y):
            raise DataError(f"{pi}, {pl}: count mismatch: {len(x)} images but {len(y)} labels")
        if spec.num_classes is not None and y.size and y.max() >= spec.num_classes:
            raise DataError(f"{pl}: label {int(y.max())} out of range 0..{spec.num_classes - 1}")
    if xi.shape[1:] != xt.shape[1:]:
        raise DataError(f"{pxi}, {pxt}: image size mismatch: train {xi.shape[1:]} vs test {xt.shape[1:]}")
    return Dataset(xi[:, None], yi.astype(np.int64), xt[:, None], yt.astype(np.int64), spec.name, source)


def to_float(images, dtype=np.float32, *, mean=0.1307, std=0.3081):
    """uint8 images -> ``(images / 255 - mean) / std`` in ``dtype``, same shape.

    The defaults are MNIST's training-set pixel mean and standard deviation (after scaling to [0, 1]);
    pass ``mean=0.0, std=1.0`` for plain [0, 1] values."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    out = images.astype(dtype)
    out *= np.asarray(1.0 / (255.0 * std), dtype=out.dtype)
    out -= np.asarray(mean / std, dtype=out.dtype)
    return out
