"""``fastcnn-train``'s output files: checked before any data is loaded, locked while the run writes
them, cleaned of temporary files that a killed run left.

Which existing files are replaced, and when: see :mod:`fastcnn.cli`. Each output is locked with an
advisory ``fcntl`` lock on a ``.<name>.lock`` file beside it, removed on release; ``fcntl`` is
imported only when locking, so that the command runs (unlocked, after a warning) where it is absent.

Unlike :class:`fastcnn._files.FolderLock` (one lock file kept in a sweep's folder, ``fcntl``
required), a lock here is one file per output, removed on release, and re-taken when its holder
removed the file meanwhile.
"""
from __future__ import annotations

import json
import os
import shlex
import zipfile
from pathlib import Path

from fastcnn._atomic import remove_stale_temps, special_file
from fastcnn._cli import TRAIN_PROG as PROG
from fastcnn._cli import UsageError, probe_writable

__all__ = ["OutputBusy", "OutputFailed"]


class OutputBusy(Exception):
    """Another process holds the lock of an output file (exit code 1)."""


class OutputFailed(Exception):
    """Writing an output failed (exit code 1); the message names the user's path and what is safe."""


_KIND_NAMES = {"checkpoint": "fastcnn checkpoint", "metrics": "fastcnn metrics file", "png": "PNG image"}


def _kind_of(path: Path) -> str:
    """What an existing file is: "empty", "checkpoint", "metrics", "png" or "other"."""
    from fastcnn.checkpoint import HEADER_KEY
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head == b"\x89PNG\r\n\x1a\n":
            return "png"
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return "checkpoint" if f"{HEADER_KEY}.npy" in zf.namelist() else "other"
        if head.lstrip()[:1] == b"{" and size < 64 << 20:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return "metrics" if isinstance(doc, dict) and {"status", "config"} <= doc.keys() else "other"
    except (OSError, ValueError, zipfile.BadZipFile):
        pass
    return "other"


class _Lock:
    """An advisory ``fcntl`` lock on ``.<name>.lock`` beside an output, removed on release."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self.fd = None

    def acquire(self, fcntl) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise OutputBusy(f"wait for it or choose another path: another {PROG} (pid {holder}) is writing "
                                 f"{self.target}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:                      # else the holder removed the file meanwhile: lock the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


class _Outputs:
    """The run's output files: checked, locked, cleaned of stale temporary files."""

    def __init__(self, args):
        from fastcnn.plots import PLOT_FILES
        self.args = args
        self.checkpoint = args.checkpoint or args.resume
        # option -> (path, kind it must be)
        self.targets = {"--checkpoint": (self.checkpoint, "checkpoint"), "--save-model": (args.save_model,
                                                                                         "checkpoint"),
                        "--metrics": (args.metrics, "metrics")}
        # Path() drops a trailing slash, so whether an option names a folder is read as typed
        self.typed = {k: str(p) for k, (p, _) in self.targets.items() if p is not None}
        self.targets = {k: (Path(p), kind) for k, (p, kind) in self.targets.items() if p is not None}
        self.plots = [Path(args.plots_dir) / name for name in PLOT_FILES]
        self.locks = []

    def check(self) -> None:
        """Before any data is loaded: folders writable, no two outputs on one file, existing files
        replaceable (UsageError otherwise)."""
        args = self.args
        probe_writable(args.plots_dir, "--plots-dir")
        for option, (path, _) in self.targets.items():
            if path.is_dir() or self.typed[option].endswith(("/", os.sep)):
                raise UsageError(f"give {option} a file path: {self.typed[option]!r} is a directory")
            probe_writable(path.parent if str(path.parent) else Path("."), f"{option} folder")
        seen = {str(p.resolve()): "--plots-dir" for p in self.plots}
        for option, (path, _) in self.targets.items():
            key = str(path.resolve())
            if key in seen:
                raise UsageError(f"{option} and {seen[key]} name the same file {str(path)!r}")
            seen[key] = option
        if args.data_dir is not None:                  # other data folders: check_inputs, after loading
            self.check_inputs(Path(args.data_dir).expanduser())
        resume = Path(args.resume).resolve() if args.resume else None
        for option, (path, kind) in self.targets.items():
            if option != "--checkpoint" and path.resolve() == resume:
                raise UsageError(f"choose another path: {option} {str(path)!r} is the --resume file, an input of "
                                 "this run")
            self._check_existing(option, path, kind)
        for path in self.plots:
            self._check_existing("--plots-dir", path, "png")

    def _check_existing(self, option, path, kind):
        special = special_file(path)
        if special is not None:
            raise UsageError(f"choose another path: {option} {str(path)!r} is {special}, not a regular file "
                             "(never replaced, even with --overwrite)")
        if not path.is_file():
            return
        found = _kind_of(path)
        if found not in (kind, "empty"):
            raise UsageError(f"choose another path: {option} {str(path)!r} exists and is not a {_KIND_NAMES[kind]} "
                             "(never replaced, even with --overwrite)")
        args = self.args
        if found == "empty" or kind == "png" or args.overwrite:
            return
        if option == "--checkpoint":
            if args.resume is not None and path.resolve() == Path(args.resume).resolve():
                return
            raise UsageError(f"--checkpoint {str(path)!r} already exists: continue it with --resume "
                             f"{shlex.quote(str(path))}, replace it with --overwrite, or choose another path")
        if args.resume is None:
            raise UsageError(f"{option} {str(path)!r} already exists: replace it with --overwrite or choose "
                             "another path")

    def check_inputs(self, source) -> None:
        """No output may be one of the files in the data folder ``source``."""
        if source is None:
            return
        try:
            inputs = {p.resolve() for p in Path(source).iterdir() if p.is_file()}
        except OSError:
            return
        for option, (path, _) in [*self.targets.items(), *(("--plots-dir", (p, "png")) for p in self.plots)]:
            if path.resolve() in inputs:
                raise UsageError(f"choose another path: {option} {str(path)!r} is a data file this run reads "
                                 f"(in {source})")

    def lock(self, say, warn) -> None:
        """Lock every output, then remove what killed runs left beside them.

        Without ``fcntl`` (not POSIX) nothing is locked and nothing removed: a stale temporary file
        cannot be told from one another run is writing."""
        try:
            import fcntl
        except ImportError:
            warn(f"{PROG}: warning: this platform has no fcntl, so outputs are not locked: run one {PROG} per "
                 f"output file at a time")
            return
        for path in [p for p, _ in self.targets.values()] + self.plots:
            lock = _Lock(path)
            lock.acquire(fcntl)
            self.locks.append(lock)
            removed = remove_stale_temps(path)
            if removed:
                say(f"note: removed {len(removed)} temporary file{'s' if len(removed) != 1 else ''} an interrupted "
                    f"run left beside {path}")

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []
