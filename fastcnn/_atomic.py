"""Atomic file writes: every output fastcnn writes (plots, metrics, checkpoints, evaluation PNGs)
goes through :func:`atomic_write`, so a crash, kill or Ctrl-C never leaves a half-written file, and
an existing file is either the old one or the new one. (Downloads in :mod:`fastcnn.data` follow the
same pattern but verify the temporary file before the rename.)

The temporary file is named ``.<name>.<8 random characters>.tmp`` (:data:`TEMP_PATTERN`); a process
killed with SIGKILL leaves it behind, and :func:`remove_stale_temps` clears such files once the
caller knows no other writer of ``path`` is running (``fastcnn-train`` holds a lock per output).
An OSError names the caller's ``path``, never the temporary file."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

#: The temporary files of :func:`atomic_write` (``tempfile.mkstemp``'s random part: 8 characters).
TEMP_PATTERN = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SPECIAL_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a symbolic link", "a character
    device", ...), else None. A rename over it would replace the link or device itself (as root,
    /dev/null), so :func:`atomic_write` refuses such paths."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")


def atomic_write(path: str | os.PathLike, write: Callable, mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, flush and fsync it, give it the
    permissions of a normally created file, and rename it over ``path``; then fsync the folder so
    the rename itself is durable (best effort). On any error, KeyboardInterrupt included, the
    temporary file is removed and the error re-raised (an OSError with ``filename`` = ``path``).
    Returns ``path`` as a Path. A ``path`` that exists and is not a regular file (a link, a device,
    a pipe) is never replaced: OSError (EEXIST) before anything is written."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    kind = special_file(path)
    if kind is not None:
        raise OSError(errno.EEXIST, f"is {kind}, not a regular file, and is never replaced: give the path of a "
                                    "new or regular file", str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` leaves beside ``path`` when its process is
    killed; call it only while no other process writes ``path``. Returns the files removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(TEMP_PATTERN.format(name=re.escape(path.name)))
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if pattern.fullmatch(name):
            try:
                os.unlink(directory / name)
                removed.append(directory / name)
            except OSError:
                pass
    return removed


def write_json(path: str | os.PathLike, document, default: Callable | None = None) -> Path:
    """``document`` as indented JSON (NaN allowed, as Python writes it), atomically."""
    text = json.dumps(document, indent=2, allow_nan=True, default=default) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
