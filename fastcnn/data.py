"""Datasets in the IDX format: MNIST, Fashion-MNIST, or any folder of the same four files.

Where the files come from:

1. an explicit ``data_dir`` (``--data-dir DIR`` on the command line) is binding: the files are read
   from there or the load fails; nothing else is searched and nothing is downloaded. Files of MNIST
   or Fashion-MNIST that pass their checksums there are also placed in the cache (linked, else
   copied; :mod:`fastcnn.datasets.remember`), so later commands find them without the flag;
2. otherwise the folder named by the environment variable ``FASTCNN_DATA_DIR``, then the per-user
   cache ``$XDG_CACHE_HOME/fastcnn/<dataset>`` (or ``~/.cache/fastcnn/<dataset>``): the first that
   holds the files wins.

A file counts whether it is gzipped (``train-images-idx3-ubyte.gz``) or not (``train-images-idx3-ubyte``);
gzip is recognised by its magic bytes, not by the name. If no folder holds the files, MNIST and
Fashion-MNIST are downloaded into the cache from their mirrors, one file at a time, each to a temporary
file that is verified and only then renamed into place, so an interrupted or corrupt download leaves
nothing in use (a killed download's temporary file is removed by the next download into that folder
once it is an hour old). A download stops as soon as its first bytes are neither gzip nor IDX (an
HTML page, say) or it grows past what an IDX file may hold. Offline, point ``FASTCNN_DATA_DIR`` (or
``--data-dir``) at a folder with the files.

Checksums are SHA-256 digests of the *decompressed* IDX bytes, for MNIST and Fashion-MNIST alike, so
the original downloads, copies re-gzipped by a distribution and raw (decompressed) copies are all
verified, and all pass when their content is right.

Reading is streamed and bounded, so a forged header or a gzip bomb is refused before anything large
is allocated: see :mod:`fastcnn.idx`.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fastcnn.idx import MAX_IDX_BYTES, MAX_IDX_ITEM_BYTES, _load_idx, read_idx
from fastcnn.normalization import MNIST_NORMALIZATION, Normalization

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MAX_IDX_BYTES",
    "MAX_IDX_ITEM_BYTES",
    "MNIST",
    "DataError",
    "DataWarning",
    "Dataset",
    "DatasetSpec",
    "FileSpec",
    "candidate_dirs",
    "default_cache_dir",
    "find_data_dir",
    "load_dataset",
    "load_mnist",
    "read_idx",
    "to_float",
]

ENV_VAR = "FASTCNN_DATA_DIR"


class DataError(ValueError):
    """A data file is missing, malformed, fails its checksum, or could not be downloaded. The first
    line of the message says what to do; further lines (if any) give the details."""


class DataWarning(UserWarning):
    """Data that loads but is probably not what was meant (e.g. a label file holding one class)."""


# ------------------------------------------------------------------------------------ dataset specs

@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: its published name and, optionally, the checksum of its decompressed
    IDX bytes (``digest``, hex, under hashlib's ``algorithm``; None = structure checks only). The
    checksum holds whatever the container: the original ``.gz``, any other gzip wrapper, or raw."""
    name: str
    digest: str | None = None
    algorithm: str = "sha256"

    def __post_init__(self):
        hashlib.new(self.algorithm)  # fails early for an unknown algorithm


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of four IDX files: train images/labels, test images/labels, where to download them
    (``mirrors``: base URLs tried in order; empty = never download), how many classes the labels
    may take (``num_classes=None``: any non-negative label), the name to show (``title``) and the
    class names (``classes``, None: the classes are numbered)."""
    name: str
    train_images: FileSpec
    train_labels: FileSpec
    test_images: FileSpec
    test_labels: FileSpec
    mirrors: tuple[str, ...] = ()
    num_classes: int | None = 10
    title: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        if self.title is None:
            object.__setattr__(self, "title", self.name)

    @property
    def files(self) -> tuple[FileSpec, ...]:
        """The four :class:`FileSpec` in the order train images, train labels, test images, test labels."""
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def split_files(self, splits: Sequence[str] = ("train", "test")) -> tuple[FileSpec, ...]:
        """The files of the given splits ("train", "test"), in :attr:`files` order."""
        return tuple(f for f, s in zip(self.files, ("train", "train", "test", "test")) if s in splits)


_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _spec(name, mirrors, digests, num_classes=10, **kw):
    files = [FileSpec(n, d) for n, d in zip(_NAMES, digests)]
    return DatasetSpec(name, *files, mirrors=tuple(mirrors), num_classes=num_classes, **kw)


# SHA-256 of the decompressed IDX bytes. Fashion-MNIST's were computed from Debian's
# dataset-fashion-mnist files after checking that their deflate streams, given back the original gzip
# headers, reproduce the published MD5s of the original .gz files (8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...) byte for byte.
MNIST = _spec("mnist", ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/"),
              ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
               "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
               "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
               "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"), title="MNIST")
FASHION_MNIST = _spec("fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                      ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                       "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                       "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                       "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
                      title="Fashion-MNIST",
                      classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                               "Sneaker", "Bag", "Ankle boot"))
_CUSTOM = _spec("custom", (), (None,) * 4, num_classes=None, title="custom dataset")
DATASETS = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


def dataset_spec(name) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``"mnist"``, ``"fashion-mnist"`` or ``"custom"`` (a spec passes
    through); :class:`DataError` for any other name."""
    if isinstance(name, DatasetSpec):
        return name
    if name == "custom":
        return _CUSTOM
    if name in DATASETS:
        return DATASETS[name]
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS) + ['custom']}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset, whatever its source. Images are (N, C, H, W), ``uint8`` (or float on the
    [0, 1] scale, from an array file), 1 x 28 x 28 for MNIST; labels are ``int64`` of shape (N,);
    ``source_dir`` is the (absolute) folder or file the data was read from. A split that was not asked
    for (``load_dataset(..., splits=("test",))``) is None. ``class_names``: names read with the data
    (folder names, CIFAR-10's), else None. ``normalization``: the per-channel statistics
    :func:`to_float` uses for this data (MNIST's constants for MNIST, else computed from the
    training split; None when no training split was loaded)."""
    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    name: str
    source_dir: Path = field(default=None)
    class_names: tuple[str, ...] | None = None
    normalization: Normalization | None = None

    @property
    def num_classes(self) -> int:
        """Largest label + 1 over the loaded splits (10 for MNIST and Fashion-MNIST)."""
        tops = [int(y.max(initial=-1)) for y in (self.y_train, self.y_test) if y is not None]
        return max(tops, default=-1) + 1

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names (of a known dataset such as Fashion-MNIST, or read with the data), or None
        (classes are numbered)."""
        if self.class_names is not None:
            return self.class_names
        spec = DATASETS.get(self.name)
        return spec.classes if spec is not None else None


# ------------------------------------------------------------------------------------ where to look

def default_cache_dir(dataset) -> Path:
    """``$XDG_CACHE_HOME/fastcnn/<dataset>``, or ``~/.cache/fastcnn/<dataset>`` when that is unset."""
    name = dataset.name if isinstance(dataset, DatasetSpec) else dataset
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fastcnn" / name


def candidate_dirs(dataset="mnist", data_dir=None, cache_dir=None) -> list[tuple[Path, str]]:
    """The folders searched, in order, as ``(path, where)`` pairs: ``data_dir`` alone when it is given
    (it is binding); else ``$FASTCNN_DATA_DIR``, then the cache (``cache_dir`` or
    :func:`default_cache_dir`; never for ``"custom"``)."""
    name = dataset.name if isinstance(dataset, DatasetSpec) else dataset
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "--data-dir")]
    dirs = []
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


def _missing(directory, files):
    return [f.name for f in files if _locate(directory, f.name) is None]


def find_data_dir(dataset="mnist", data_dir=None, cache_dir=None, splits=("train", "test")) -> Path | None:
    """The first folder of :func:`candidate_dirs` that holds the files of ``splits`` of ``dataset`` (a
    name or a :class:`DatasetSpec`), or None."""
    spec = dataset if isinstance(dataset, DatasetSpec) else DATASETS.get(dataset, _CUSTOM)
    files = spec.split_files(splits)
    for directory, _ in candidate_dirs(spec, data_dir, cache_dir):
        if not _missing(directory, files):
            return directory
    return None


def _count(missing, files) -> str:
    """The missing files, shortly: their names when one or two, else how many."""
    if len(missing) <= 2:
        return ", ".join(missing)
    count = f"all {len(files)}" if len(missing) == len(files) else f"{len(missing)} of {len(files)}"
    return f"{count} IDX files ({missing[0]}, ...)"


def _subfolder_with(directory, files) -> Path | None:
    """A folder right inside ``directory`` that holds every one of ``files``, or None."""
    try:
        subfolders = sorted(d for d in directory.iterdir() if d.is_dir())
    except OSError:
        return None
    return next((d for d in subfolders if not _missing(d, files)), None)


def _not_found(spec, files, dirs, problem, details=()):
    """The error for data found nowhere: the fix on the first line, the folders and reasons below.
    A ``$FASTCNN_DATA_DIR`` that is set is the first place to mend, so the fix names it."""
    short = ", ".join(str(d) for d, _ in dirs) or "nowhere"
    fix = f"pass --data-dir DIR or set {ENV_VAR}"
    env = next((d for d, where in dirs if where == ENV_VAR), None)
    if env is not None:
        inside = _subfolder_with(env, files) if env.is_dir() else None
        now = ("no such directory" if not env.exists() else "not a folder" if not env.is_dir() else
               f"a folder missing {len(_missing(env, files))} of {len(files)}")
        fix = (f"set {ENV_VAR}={inside}, the subfolder that holds the files" if inside is not None else
               f"set {ENV_VAR} to the folder that holds the IDX files (now: {now}) or pass --data-dir DIR")
    first = f"{spec.title} {problem}: {fix} (looked in: {short})"
    if len(first) > 200:
        first = f"{spec.title} {problem}: {fix} (looked in {len(dirs)} folders; FASTCNN_VERBOSE=1 lists them)"
    looked = [f"  {d} ({where}): " + (f"missing {', '.join(_missing(d, files))}" if d.is_dir()
                                       else "no such directory") for d, where in dirs]
    lines = [first, "Looked in:", *looked]
    if details:
        lines += ["Download:", *(f"  {line}" for line in details)]
    lines.append("DIR must hold the IDX files, gzipped or not: " + ", ".join(f.name for f in files))
    return DataError("\n".join(lines))


# ------------------------------------------------------------------------------------------ loading

def load_dataset(name="mnist", data_dir=None, download=True, verify=True, timeout=30, *,
                 mirrors=None, cache_dir=None, splits=("train", "test")) -> Dataset:
    """Load a dataset of IDX files into a :class:`Dataset` (images (N, 1, H, W) uint8, labels int64).

    ``name``: ``"mnist"``, ``"fashion-mnist"``, ``"custom"`` or a :class:`DatasetSpec`. ``data_dir``,
    when given, is the only folder used: it must hold the files (else :class:`DataError`; nothing is
    downloaded). Otherwise folders are searched as in :func:`candidate_dirs`; if none holds the files
    and ``download`` is true, the missing ones are fetched from the mirrors (``mirrors`` overrides the
    spec's) into ``cache_dir`` (default :func:`default_cache_dir`; the files go in that very folder).
    ``verify`` checks each file's SHA-256 (of its decompressed bytes). ``timeout`` is per network
    operation, in seconds. ``splits``: which of ``"train"`` and ``"test"`` to load (only their files
    are needed; the other split is None in the result).

    ``"custom"`` needs ``data_dir`` or ``$FASTCNN_DATA_DIR``, with MNIST's four file names; it is never
    downloaded or checksummed, and labels may be any non-negative integers (classes = largest + 1).
    Structure checks, always: images 3-D with at least one image of at least 1x1 pixels and the same
    H x W in train and test, labels 1-D, as many labels as images in each split, labels below
    ``num_classes`` (10 for MNIST and Fashion-MNIST). A label file holding a single class loads with
    a :class:`DataWarning`. Every problem raises :class:`DataError`: its first line says what to do
    and names the file or folders; further lines give details."""
    from fastcnn.download import _check_digest, _download_missing  # fastcnn.download imports this module
    spec = dataset_spec(name)
    splits = tuple(splits)
    if not splits or set(splits) - {"train", "test"}:
        raise ValueError(f"splits must be a non-empty subset of ('train', 'test'), got {splits!r}")
    if mirrors is not None:
        spec = replace(spec, mirrors=tuple(mirrors))
    files = spec.split_files(splits)
    if data_dir is not None:
        # An explicit folder is binding: a mistake in it is reported, never papered over with
        # $FASTCNN_DATA_DIR, the cache or a download.
        source = Path(data_dir).expanduser()
        if not source.is_dir():
            what = "is a file, not a folder" if source.exists() else "no such directory"
            raise DataError(f"--data-dir {data_dir}: {what}: pass the folder that holds the {spec.title} IDX files")
        missing = _missing(source, files)
        if missing:
            inside = _subfolder_with(source, files)
            fix = (f"pass --data-dir {inside}, the subfolder that holds them" if inside is not None else
                   f"put the {spec.title} files there (gzipped or not) or pass another folder")
            raise DataError(f"--data-dir {data_dir} lacks {_count(missing, files)}: {fix}\n"
                            f"missing: {', '.join(missing)}")
    else:
        dirs = candidate_dirs(spec, None, cache_dir)
        if not dirs:
            raise DataError(f"{spec.title} needs a folder: pass --data-dir DIR or set {ENV_VAR}")
        source = find_data_dir(spec, None, cache_dir, splits)
        if source is None:
            if not spec.mirrors or dirs[-1][1] != "cache":
                raise _not_found(spec, files, dirs, "not found")
            if not download:
                raise _not_found(spec, files, dirs, "not found (download disabled)")
            failures, network = _download_missing(spec, files, dirs[-1][0], timeout)
            if failures:
                raise _not_found(spec, files, dirs, "not found and no network" if network
                                 else "not found and its download failed", failures)
            source = dirs[-1][0]
    in_cache = dirs[-1][1] == "cache" and source == dirs[-1][0] if data_dir is None else False
    fix = ("delete it to download it again" if in_cache else
           f"not {spec.title}'s file; for other data use --dataset custom" if spec.name in DATASETS else
           f"not {spec.title}'s file")
    source = source.absolute()
    loaded = {}
    for fspec in files:
        path = _locate(source, fspec.name)
        try:
            arr, digest = _load_idx(path, fspec.algorithm if verify and fspec.digest else None)
        except DataError as exc:
            if not in_cache:
                raise
            first, _, rest = str(exc).partition("\n")       # a damaged download: fetching it again fixes it
            raise DataError(f"{first} ({fix})" + (f"\n{rest}" if rest else "")) from None
        if digest is not None:
            _check_digest(fspec, path, digest, fix)
        loaded[fspec.name] = (path, arr)
    if data_dir is not None and verify and spec.name in DATASETS and all(f.digest for f in files):
        from fastcnn.datasets.remember import remember_files  # found once, found again
        remember_files([p for p, _ in loaded.values()], cache_dir if cache_dir is not None else default_cache_dir(spec))
    result = {}
    for split, (fi, fl) in (("train", spec.files[:2]), ("test", spec.files[2:])):
        if split in splits:
            result[split] = _check_split(spec, split, *loaded[fi.name], *loaded[fl.name])
    if len(result) == 2:
        (pxi, xi), (pxt, xt) = (loaded[f.name] for f in (spec.train_images, spec.test_images))
        if xi.shape[1:] != xt.shape[1:]:
            raise DataError(f"{pxi}, {pxt}: image size mismatch: train {xi.shape[1:]} vs test {xt.shape[1:]}")
    (xi, yi), (xt, yt) = result.get("train", (None, None)), result.get("test", (None, None))
    norm = (MNIST_NORMALIZATION if spec.name == "mnist" else
            Normalization.from_images(xi) if xi is not None else None)
    return Dataset(xi, yi, xt, yt, spec.name, source, normalization=norm)


def _check_split(spec, split, pi, x, pl, y):
    """Structure checks of one split -> (images (N, 1, H, W), labels int64)."""
    if x.ndim != 3:
        raise DataError(f"{pi}: expected 3-D images (count x height x width), got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{pl}: expected 1-D labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{pi}, {pl}: count mismatch: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{pi}: holds no images (the {split} split is empty)")
    if 0 in x.shape[1:]:
        raise DataError(f"{pi}: images are {x.shape[1]}x{x.shape[2]} pixels: an image needs at least 1x1")
    if spec.num_classes is not None and y.max() >= spec.num_classes:
        raise DataError(f"{pl}: label {int(y.max())} out of range 0..{spec.num_classes - 1}")
    if len(y) > 1 and y.min() == y.max():
        warnings.warn(f"{pl}: all {len(y)} {split} labels are {int(y[0])}: a single class "
                      "(a wrong or truncated label file?)", DataWarning, stacklevel=3)
    return x[:, None], y.astype(np.int64)


def load_mnist(data_dir=None, **kwargs) -> Dataset:
    """``load_dataset("mnist", data_dir, **kwargs)``: MNIST's 60000 training and 10000 test digits."""
    return load_dataset("mnist", data_dir, **kwargs)


def to_float(images, dtype=np.float32, *, mean=0.1307, std=0.3081):
    """Images -> ``(images / 255 - mean) / std`` in ``dtype``, same shape.

    The defaults are MNIST's training-set pixel mean and standard deviation (after scaling to [0, 1]);
    pass ``mean=0.0, std=1.0`` for plain [0, 1] values, or a :class:`fastcnn.normalization.Normalization`'s
    ``kwargs()``. ``mean`` and ``std`` may be sequences with one value per channel (axis 1 of (N, C, H, W)
    images). uint8 images are divided by 255; float images are taken as already on the [0, 1] scale."""
    images = np.asarray(images)
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise TypeError(f"to_float expects uint8 or float images, got {images.dtype}")
    mean_a, std_a = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if mean_a.ndim or std_a.ndim:          # per channel: broadcast over (N, C, H, W)
        if images.ndim != 4 or mean_a.shape != (images.shape[1],) or std_a.shape != mean_a.shape:
            raise ValueError(f"per-channel mean/std of shapes {mean_a.shape}, {std_a.shape} do not fit images "
                             f"of shape {images.shape} (N, C, H, W)")
        mean_a, std_a = mean_a[:, None, None], std_a[:, None, None]
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    out = images.astype(dtype)
    out *= np.asarray(1.0 / (scale * std_a), dtype=out.dtype)
    out -= np.asarray(mean_a / std_a, dtype=out.dtype)
    return out
