"""Atomic file writes: every output fastcnn writes (plots, metrics, checkpoints, evaluation PNGs)
goes through :func:`atomic_write`, so a crash, kill or Ctrl-C never leaves a half-written file, and
an existing file is either the old one or the new one. (Downloads in :mod:`fastcnn.data` follow the
same pattern but verify the temporary file before the rename.)"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write, mode="wb"):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, flush and fsync it, give it the
    permissions of a normally created file, and rename it over ``path``; then fsync the folder so
    the rename itself is durable (best effort). On any error, KeyboardInterrupt included, the
    temporary file is removed and the error re-raised. Returns ``path`` as a Path."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
