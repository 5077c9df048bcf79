"""Plumbing shared by the command-line tools (``fastcnn-train``, ``-eval``, ``-bench``, ``-sweep``):
the parser, usage errors, argument types, the one-line error format and the exit codes.

Every error a command prints is ``PROG: error: <first line>``: the fix first, at most about
:data:`FIRST_LINE_MAX` characters; any detail (each mirror's error, a path list) goes on further
lines, printed only with ``FASTCNN_VERBOSE=1``.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
FIRST_LINE_MAX = 200
#: The name of ``fastcnn-train``, shared by fastcnn.cli and the modules of its parts.
TRAIN_PROG = "fastcnn-train"


class UsageError(Exception):
    """An invalid argument, found by the parser or after it (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises :class:`UsageError` (one line, exit code 2) instead of
    printing the usage block and exiting."""

    def error(self, message):
        raise UsageError(message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; appends "(default: X)" to an option's help unless the help
    already names its default or there is nothing to show (None, or a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


# ------------------------------------------------------------------------------ argument types

def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum`` (and ``<= maximum`` when given)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:                      # also a 5000-digit number (Python refuses to convert it)
            raise argparse.ArgumentTypeError(f"expected an integer, got {str(text)[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)


def float_in(lo: float, hi: float = math.inf, lo_open: bool = False,
             hi_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number in the interval from ``lo`` to ``hi`` (open or closed ends)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_lo = value <= lo if lo_open else value < lo
        bad_hi = value >= hi if hi_open else value > hi
        if not math.isfinite(value) or bad_lo or bad_hi:
            lo_txt = f"> {lo:g}" if lo_open else f">= {lo:g}"
            hi_txt = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {lo_txt}{hi_txt}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def check_data_dir(value) -> None:
    """``--data-dir`` must name a folder: otherwise a :class:`UsageError` (exit 2 in every command)."""
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such directory"
        raise UsageError(f"--data-dir {str(value)!r}: {what}; pass the folder that holds the IDX files")


def probe_writable(directory, what: str, *, create: bool = True) -> None:
    """Check a file can really be created in ``directory`` (os.access says yes to root even on
    read-only mounts); a :class:`UsageError` naming ``what`` otherwise. With ``create`` the folder
    is made now; without, nothing is written and its nearest existing parent is probed instead."""
    directory = Path(directory)
    probed = directory if create else next(p for p in (directory, *directory.parents, Path(".")) if p.exists())
    if probed.exists() and not probed.is_dir():
        raise UsageError(f"choose another {what}: {str(probed)!r} is a file, not a folder")
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=probed):
            pass
    except OSError as exc:
        raise UsageError(f"choose a writable {what}: {str(directory)!r} is not writable: "
                         f"{exc.strerror or exc}") from None


# ------------------------------------------------------------------------------ errors

def one_line(message) -> str:
    """Collapse a multi-line message into one line ("Looked in:\\n  a\\n  b" -> "Looked in: a; b")."""
    out = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if not part:
            continue
        out = part if not out else out + (" " if out.endswith(":") else "; ") + part
    return out or "unknown error"


def write_line(text: object = "", stream=None) -> None:
    """Print ``text`` on ``stream`` (stdout by default) and flush. A closed pipe (``fastcnn-x | head
    -1``) silences that stream for the rest of the process instead of failing the command: its file
    descriptor then points at /dev/null, so no later write or the exit flush fails either."""
    stream = sys.stdout if stream is None else stream
    try:
        print(text, file=stream, flush=True)
    except UnicodeEncodeError:
        # A file name the terminal's encoding cannot show (PYTHONIOENCODING=ascii) is shown escaped,
        # never dropped: only a closed pipe silences a stream.
        encoding = getattr(stream, "encoding", None) or "ascii"
        safe = str(text).encode(encoding, "backslashreplace").decode(encoding, "replace")
        write_line(safe, stream)
    except (BrokenPipeError, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
            raise
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def verbose_requested() -> bool:
    return os.environ.get("FASTCNN_VERBOSE", "") not in ("", "0")


def print_error(prog: str, message, *, verbose: bool | None = None) -> None:
    """Print ``PROG: error: <first line>`` on stderr; the message's further lines (details) follow,
    indented, only when ``verbose`` (default: ``$FASTCNN_VERBOSE``)."""
    lines = [line.rstrip() for line in str(message).splitlines() if line.strip()] or ["unknown error"]
    verbose = verbose_requested() if verbose is None else verbose
    text = f"{prog}: error: {' '.join(lines[0].split())}"
    if verbose and len(lines) > 1:
        text += "\n" + "\n".join("  " + line.strip() for line in lines[1:])
    write_line(text, sys.stderr)


def versions() -> dict:
    """Versions of Python, NumPy, Numba and fastcnn, for metrics and benchmark reports."""
    from importlib import metadata

    import numpy

    import fastcnn

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": version("numba"),
            "fastcnn": fastcnn.__version__}
