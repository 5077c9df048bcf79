"""Data found once is found again: files verified against their published checksums in a folder
given with ``--data-dir`` are placed in fastcnn's cache (hard links where the file system allows,
else copies), so later commands of any kind find them without the flag."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["remember_files"]


def remember_files(paths, cache) -> list[Path]:
    """Place each of ``paths`` (verified files) in the folder ``cache`` under its own name, unless a
    file of that name (or ``name`` without ``.gz``, or with it) is there already. Each is linked or
    copied to a temporary name and renamed into place, so the cache never holds half a file. Best
    effort: a file that cannot be placed is left out (it is looked for again next time). Returns the
    files placed."""
    cache = Path(cache)
    placed = []
    for path in map(Path, paths):
        names = {path.name, path.name[:-3] if path.name.endswith(".gz") else path.name + ".gz"}
        try:
            if cache.exists() and (cache.resolve() == path.parent.resolve()
                                   or any((cache / n).exists() for n in names)):
                continue
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=cache)
            os.close(fd)
            try:
                os.unlink(tmp)
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
                os.replace(tmp, cache / path.name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            placed.append(cache / path.name)
        except OSError:
            continue
    return placed
