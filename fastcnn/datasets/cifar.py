"""CIFAR-10, the binary version (``cifar-10-binary.tar.gz`` from the dataset's own site).

The archive holds ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (training),
``test_batch.bin`` and ``batches.meta.txt`` (the class names, one a line). Each ``.bin`` file is
records of 3073 bytes: the label (0..9), then the 32 x 32 red plane, the green plane and the blue
plane, row by row; the published files hold 10,000 records each.

Where it comes from, as for MNIST (:mod:`fastcnn.data`): ``data_dir`` alone when given (the
``.tar.gz``, a folder holding it, the extracted ``cifar-10-batches-bin`` folder or a folder holding
that); otherwise ``$FASTCNN_DATA_DIR``, then the cache ``$XDG_CACHE_HOME/fastcnn/cifar10``, and if
none holds it, a download into the cache. The archive is verified by its published MD5 (an
extracted folder has none to check: its files' structure is checked); a download goes to a
temporary file, is verified and only then renamed into place. Members are read straight from the
archive, never extracted, so no member name can write anywhere, and only the expected members of
the expected sizes are read."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from fastcnn.data import ENV_VAR, DataError, default_cache_dir
from fastcnn.datasets.common import make_dataset
from fastcnn.datasets.remember import place_file

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"       # published on the dataset's page
CIFAR10_BYTES = 170_052_171                              # the published archive's size
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 3 * 32 * 32
MAX_RECORDS = 10_000                                     # per file, as published
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
META_FILE = "batches.meta.txt"
_MAX_META = 4096
_MAX_MEMBERS = 1000                                      # an archive listing more is not CIFAR-10's
_CHUNK = 1 << 20


def _parse_records(data: bytes, where: str):
    if len(data) == 0 or len(data) % RECORD or len(data) > MAX_RECORDS * RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
                        f"(1..{MAX_RECORDS}): damaged or not CIFAR-10's binary version")
    rec = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{where}: label {int(labels.max())} out of range 0..9: damaged or not CIFAR-10")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _parse_meta(text: bytes | None, where: str):
    if text is None:
        return CIFAR10_CLASSES
    names = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    if len(names) != 10 or max(map(len, names)) > 100:
        raise DataError(f"{where}: expected 10 class names, one a line, found {len(names)}")
    return tuple(names)


def _read_folder(folder: Path):
    """{file name: bytes} of the batch files in an extracted folder (meta optional)."""
    out = {}
    for name in (*TRAIN_FILES, *TEST_FILES, META_FILE):
        path = folder / name
        if not path.is_file():
            if name == META_FILE:
                continue
            raise DataError(f"{folder} lacks {name}: pass the extracted {CIFAR10_FOLDER} folder or the "
                            f"{CIFAR10_ARCHIVE} archive")
        limit = _MAX_META if name == META_FILE else MAX_RECORDS * RECORD
        if path.stat().st_size > limit:
            raise DataError(f"{path}: {path.stat().st_size} bytes, more than CIFAR-10's {limit}: not CIFAR-10's file")
        out[name] = path.read_bytes()
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_archive(path: Path, md5):
    """{file name: bytes} of the wanted members of the archive, after checking its MD5 (``md5=None``:
    structure checks only)."""
    if md5 is not None:
        actual = _md5(path)
        if actual != md5:
            raise DataError(f"{path}: checksum mismatch (not the published {CIFAR10_ARCHIVE}; delete it or "
                            f"download it again): md5 {actual}, expected {md5}")
    wanted = {*TRAIN_FILES, *TEST_FILES, META_FILE}
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for count, member in enumerate(tf):
                if count >= _MAX_MEMBERS:
                    break
                name = member.name.rsplit("/", 1)[-1]
                if name not in wanted or name in out or not member.isfile():
                    continue
                limit = _MAX_META if name == META_FILE else MAX_RECORDS * RECORD
                if member.size > limit:
                    raise DataError(f"{path}: member {member.name} declares {member.size} bytes, more than "
                                    f"CIFAR-10's {limit}: not CIFAR-10's archive")
                out[name] = tf.extractfile(member).read()
                if len(out) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read the archive: {' '.join(str(exc).split()) or type(exc).__name__}") \
            from None
    missing = [n for n in (*TRAIN_FILES, *TEST_FILES) if n not in out]
    if missing:
        raise DataError(f"{path}: the archive lacks {', '.join(missing)}: not CIFAR-10's binary version")
    return out


def _source_in(folder: Path):
    """(kind, path) of CIFAR-10 inside or at ``folder``: ("archive", file) or ("folder", batches folder)."""
    if folder.is_file():
        return ("archive", folder)
    for candidate in (folder / CIFAR10_ARCHIVE,):
        if candidate.is_file():
            return ("archive", candidate)
    for candidate in (folder, folder / CIFAR10_FOLDER):
        if (candidate / TRAIN_FILES[0]).is_file():
            return ("folder", candidate)
    return None


def _download(cache: Path, url: str, md5, timeout):
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / CIFAR10_ARCHIVE
    fd, tmp = tempfile.mkstemp(prefix=f".{CIFAR10_ARCHIVE}.", suffix=".part", dir=cache)
    show = sys.stderr.isatty()
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            done = 0
            while chunk := resp.read(_CHUNK):
                done += len(chunk)
                if done > CIFAR10_BYTES:
                    raise DataError(f"{url}: refused: more than the published {CIFAR10_BYTES} bytes")
                h.update(chunk)
                out.write(chunk)
                if show:
                    print(f"\rdownloading {url} {100 * done // CIFAR10_BYTES:3d}%", end="", file=sys.stderr)
        if show:
            print(file=sys.stderr)
        if md5 is not None and h.hexdigest() != md5:
            raise DataError(f"{url}: checksum mismatch (the site serves other data): md5 {h.hexdigest()}, "
                            f"expected {md5}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest


def remember_archive(archive: Path, cache: Path) -> Path | None:
    """Make a verified archive found elsewhere available in ``cache`` (a hard link, else a copy, placed
    atomically), so later commands find it without ``--data-dir``. Returns the cached path, or None when
    it could not be placed (the data is then simply looked for again next time)."""
    dest = cache / CIFAR10_ARCHIVE
    if dest.exists():
        return dest
    try:
        place_file(archive, dest)
    except OSError:
        return None
    return dest


def load_cifar10(data_dir=None, download=True, timeout=30, *, cache_dir=None, md5=CIFAR10_MD5, url=CIFAR10_URL,
                 remember=True):
    """Load CIFAR-10 (see the module docstring) -> :class:`fastcnn.data.Dataset` named ``"cifar10"``:
    50,000 training and 10,000 test images (N, 3, 32, 32) uint8, the class names from
    ``batches.meta.txt``. ``md5``: the archive's expected MD5 (None: structure checks only).
    ``remember``: an archive verified from ``data_dir`` is also placed in the cache. Every problem
    is a :class:`fastcnn.data.DataError` whose first line says what to do."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("cifar10")
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        if not given.exists():
            raise DataError(f"--data-dir {data_dir}: no such file or directory: pass {CIFAR10_ARCHIVE} or the "
                            f"extracted {CIFAR10_FOLDER} folder")
        found = _source_in(given)
        if found is None:
            raise DataError(f"--data-dir {data_dir} holds neither {CIFAR10_ARCHIVE} nor {CIFAR10_FOLDER}/: pass "
                            "the archive or the extracted folder")
    else:
        looked = []
        if os.environ.get(ENV_VAR):
            looked.append(Path(os.environ[ENV_VAR]).expanduser())
        looked.append(cache)
        found = next((f for f in map(_source_in, (d for d in looked if d.exists())) if f is not None), None)
        if found is None:
            where = ", ".join(map(str, looked))
            if not download:
                raise DataError(f"CIFAR-10 not found (download disabled): pass --data-dir DIR (the {CIFAR10_ARCHIVE} "
                                f"or its extracted folder) or set {ENV_VAR} (looked in: {where})")
            try:
                found = ("archive", _download(cache, url, md5, timeout))
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc.strerror or exc
                raise DataError(f"CIFAR-10 not found and its download failed: pass --data-dir DIR (the "
                                f"{CIFAR10_ARCHIVE} or its extracted folder) or set {ENV_VAR} (looked in: {where})"
                                f"\n{url}: {reason}") from None
    kind, path = found
    path = path.absolute()
    files = _read_archive(path, md5) if kind == "archive" else _read_folder(path)
    classes = _parse_meta(files.get(META_FILE), str(path))
    splits = []
    for names in (TRAIN_FILES, TEST_FILES):
        parts = [_parse_records(files[n], f"{path}: {n}" if kind == "archive" else str(path / n)) for n in names]
        splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    (x_train, y_train), (x_test, y_test) = splits
    if data_dir is not None and kind == "archive" and md5 is not None and remember:
        remember_archive(path, cache)
    return make_dataset(x_train, y_train, x_test, y_test, "cifar10", path, classes)
