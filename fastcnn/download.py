"""Downloading the IDX files of a dataset (:data:`fastcnn.data.MNIST`, Fashion-MNIST) into a
folder, and checking a file's digest: each file comes from the first of its mirrors that serves it,
streamed to a temporary ``.part`` file beside its place, refused as soon as its first bytes are
neither gzip nor IDX or it grows past what an IDX file may hold, verified, and only then renamed into
place. A killed download's ``.part`` file is removed by the next download into that folder once it
is :data:`_STALE_PART_SECONDS` old. :func:`fastcnn.data.load_dataset` calls these.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPException

from fastcnn.data import DataError, _locate
from fastcnn.idx import _CHUNK, _GZIP_MAGIC, MAX_IDX_BYTES, _load_idx

_STALE_PART_SECONDS = 3600       # a download's temporary file not written for this long was left by a killed one


def _check_digest(fspec, path, actual, fix):
    """Raise DataError if the decompressed bytes' digest ``actual`` differs from ``fspec``'s: the first
    line short, with ``fix``; the full digests on the next."""
    if fspec.digest is not None and actual != fspec.digest.lower():
        raise DataError(f"{path}: checksum mismatch ({fix}): {fspec.algorithm} {actual[:12]}..., expected "
                        f"{fspec.digest[:12]}...\nexpected {fspec.algorithm} {fspec.digest} of the decompressed "
                        f"data, got {actual}")


def _download(url, dest, fspec, timeout):
    """Stream ``url`` to a temp file beside ``dest``, verify it, and rename it into place atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    show = sys.stderr.isatty()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length") or ""
            total, done = int(length) if length.isdigit() else 0, 0
            while chunk := resp.read(_CHUNK):
                if done == 0 and not chunk.startswith((_GZIP_MAGIC, b"\x00\x00")):
                    raise DataError(f"{url}: not an IDX file, gzipped or raw (it starts with {chunk[:16]!r})")
                if done + len(chunk) > MAX_IDX_BYTES + _CHUNK:
                    raise DataError(f"{url}: refused: more than {MAX_IDX_BYTES} bytes, larger than an IDX file may be")
                out.write(chunk)
                done += len(chunk)
                if show:
                    pct = f" {100 * done // total:3d}%" if total else ""
                    print(f"\rdownloading {url}{pct} ({done / 1e6:.1f} MB)", end="", file=sys.stderr)
        if show:
            print(file=sys.stderr)
        try:
            _, digest = _load_idx(tmp, fspec.algorithm if fspec.digest else None)
        except DataError as exc:                       # name the URL, not the temporary file
            raise DataError(str(exc).replace(tmp, url, 1)) from None
        _check_digest(fspec, url, digest, "the mirror serves other data")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def _is_network_error(exc) -> bool:
    """True for "the network or the server cannot be reached", as opposed to an answer (HTTP 404)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, socket.timeout, ConnectionError, HTTPException))


def _download_missing(spec, files, directory, timeout) -> tuple[list[str], bool]:
    """Download every one of ``files`` missing from ``directory`` -> (failure reasons, all of them
    network errors)."""
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"cannot create {directory}: {exc.strerror or exc}"], False
    failures, network = _download_each(spec, files, directory, timeout)
    if failures and created:
        with contextlib.suppress(OSError):      # leave no empty cache folder behind; keep any file
            directory.rmdir()
    return failures, network


def _remove_stale_parts(directory, name):
    """Remove the temporary files of downloads of ``name`` into ``directory`` that were killed: those
    not written for :data:`_STALE_PART_SECONDS` (a running download writes every chunk)."""
    for part in directory.glob(f".{name}.*.part"):
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > _STALE_PART_SECONDS:
                part.unlink()


def _download_each(spec, files, directory, timeout):
    try:                                               # a local problem, not every mirror's
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return [f"cannot write to {directory}: {exc.strerror or exc}"], False
    for fspec in files:
        _remove_stale_parts(directory, fspec.name)
        if _locate(directory, fspec.name) is not None:
            continue
        reasons, network = [], True
        for base in spec.mirrors:
            url = base.rstrip("/") + "/" + fspec.name
            try:
                _download(url, directory / fspec.name, fspec, timeout)
                break
            except DataError as exc:  # already names the URL
                reasons.append(str(exc))
                network = False
            except (OSError, HTTPException) as exc:
                reason = exc.reason if type(exc) is urllib.error.URLError else exc
                reasons.append(f"{url}: {reason or type(exc).__name__}")
                network = network and _is_network_error(exc)
        else:
            return [f"{fspec.name}: {r}" for r in reasons] or [f"{fspec.name}: no mirrors"], network and bool(reasons)
    return [], False
