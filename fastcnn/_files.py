"""Input files and output folders, checked the same way by every command.

* :func:`open_input` opens a file only when it is a regular file of bounded size: a named pipe, a
  device (``/dev/zero``), a directory, a socket or a symbolic-link loop gives a one-line
  :class:`InputFileError` at once, before a byte is read. The file is opened with ``O_NONBLOCK``
  and checked with ``fstat`` on the open descriptor, so opening a FIFO never waits for a writer
  and nothing can be swapped in between the check and the read.
* :class:`FolderLock` is an advisory ``fcntl`` lock that one process at a time holds on an output
  folder (``fastcnn-sweep --out``): a second process is refused at once, naming the holder's pid.
* :func:`check_output_file` refuses an output path that names one of the command's inputs, a link,
  a device, or an existing file of another kind than the output (``fastcnn-eval``'s PNGs).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

try:
    import fcntl
except ImportError:            # not POSIX (Windows): no FIFOs to open without blocking, no advisory locks
    fcntl = None

__all__ = ["PNG_SIGNATURE", "FolderBusy", "FolderLock", "InputFileError", "OutputRefused", "check_output_file",
           "describe_mode", "open_input", "read_input", "shown"]

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))

# Opening a FIFO blocks until a writer comes; with O_NONBLOCK it opens at once and is refused.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class InputFileError(ValueError):
    """An input path is not a readable regular file of acceptable size; the message (one line, no
    path: callers prefix their own) says what it is instead."""


def describe_mode(mode: int) -> str:
    """What a file of ``st_mode`` is, in words ("a regular file", "a named pipe (FIFO)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def open_input(path: str | os.PathLike, max_bytes: int | None = None):
    """Open ``path`` for reading (a binary file object) when it is a regular file of at most
    ``max_bytes`` bytes; :class:`InputFileError` otherwise (missing, unreadable, a symbolic-link
    loop, a FIFO, a device, a directory, too large)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputFileError("is a symbolic-link loop (or a chain of too many links): point it at a real "
                                 "file") from None
        if exc.errno == errno.ENOENT:
            raise InputFileError("no such file") from None
        if exc.errno == errno.EISDIR:
            raise InputFileError("is a directory, not a file") from None
        raise InputFileError(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"is {describe_mode(st.st_mode)}, not a regular file: give a file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise InputFileError(f"is {_size_text(st.st_size)}, more than the {_size_text(max_bytes)} read from "
                                 "such a file: give the right file")
        if fcntl is not None and _NONBLOCK:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_npy_header(fh) -> tuple[tuple[int, ...], object]:
    """(shape, dtype) from the header of the .npy stream ``fh`` (left at the start of the data),
    read without allocating the array; ValueError for another format version or a bad header."""
    import numpy as np

    version = np.lib.format.read_magic(fh)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"format version {version[0]}.{version[1]} is not read")
    shape, _, dtype = read(fh)
    return shape, dtype


def read_input(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` bytes (see :func:`open_input`);
    never reads more than ``max_bytes + 1`` bytes, even from a file that grows meanwhile."""
    with open_input(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputFileError(f"grew past the {_size_text(max_bytes)} read from such a file while it was read")
    return data


class FolderBusy(Exception):
    """Another process holds the lock of an output folder."""


class FolderLock:
    """An advisory lock on ``FOLDER/<name>`` held for a ``with`` block; the file holds the holder's
    pid. The lock file stays (removing it would race with a process about to lock it); it is empty
    of meaning once its holder has exited, since the kernel releases the lock with the process."""

    def __init__(self, folder: str | os.PathLike, name: str, owner: str):
        self.path = Path(folder) / name
        self.owner = owner
        self.fd = None

    def __enter__(self) -> FolderLock:  # noqa: PYI034 -- typing.Self needs Python 3.11
        return self if self.fd is not None else self.acquire()

    def acquire(self) -> FolderLock:
        """Take the lock now (:class:`FolderBusy` when another process holds it); returns self."""
        if fcntl is None:
            raise OSError(f"cannot lock {self.path}: this platform has no fcntl (advisory locks need POSIX)")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise FolderBusy(f"another {self.owner} (pid {holder}) is writing {self.path.parent}") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class OutputRefused(ValueError):
    """An output path names a file that must not be replaced; the message leads with the fix."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_output_file(path: str | os.PathLike, option: str, *, inputs=(), signature: bytes = PNG_SIGNATURE,
                      kind: str = "PNG image") -> None:
    """Refuse (:class:`OutputRefused`) an output ``path`` that would replace one of the command's
    ``inputs`` (the same file, by any name or link), something other than a regular file (a link,
    a device, a pipe), or an existing non-empty file that is not a ``kind`` (its first bytes are not
    ``signature``): a command replaces only its own kind of output."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None:
        for other in inputs:
            try:
                if _same_file(st, os.stat(other)):
                    raise OutputRefused(f"choose another path: {option} {str(path)!r} is {str(other)!r}, an input of "
                                        "this command")
            except FileNotFoundError:
                continue
            except OSError:
                continue
    try:
        lst = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISREG(lst.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(lst.st_mode) else describe_mode(lst.st_mode)
        raise OutputRefused(f"choose another path: {option} {str(path)!r} is {what}, not a regular file, and is "
                            "never replaced")
    if lst.st_size == 0:
        return
    try:
        with open_input(path) as fh:
            head = fh.read(len(signature))
    except InputFileError:
        head = b""
    if head != signature:
        raise OutputRefused(f"choose another path: {option} {str(path)!r} exists and is not a {kind}; only a "
                            f"{kind} written before is replaced")


def shown(text) -> str:
    """``text`` (a path) for a one-line message: control characters (a newline in a file name) are
    escaped as Python writes them, so the name can neither split a message nor fake a line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
