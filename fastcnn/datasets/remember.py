"""Data found once is found again: files verified against their published checksums in a folder
given with ``--data-dir`` are placed in fastcnn's cache (hard links where the file system allows,
else copies), so later commands of any kind find them without the flag."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["place_file", "remember_files"]


def place_file(source: Path, dest: Path) -> None:
    """Put ``source`` at ``dest``: a hard link where the file system allows, else a copy, made under a
    temporary name in ``dest``'s folder and renamed into place, so ``dest`` is never half a file.
    Raises OSError when it cannot be placed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
            place_file(path, cache / path.name)
            placed.append(cache / path.name)
        except OSError:
            continue
    return placed
