"""The IDX file format's reader: unsigned-byte IDX files, gzipped or raw (recognised by their
magic bytes), streamed header first.

The data buffer is never larger than the header declares, than the file can hold (its size when
raw; 1032 times its size when gzipped, deflate's largest expansion) and than :data:`MAX_IDX_BYTES`,
with no image larger than :data:`MAX_IDX_ITEM_BYTES`; only regular files are opened. The data is
then read in chunks, so a forged header or a gzip bomb is refused at once and Ctrl-C is honoured
while a file is read. Every problem is a :class:`fastcnn.data.DataError` naming the file.
:mod:`fastcnn.data` re-exports :func:`read_idx` and the two limits.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from fastcnn._files import InputFileError, open_input

__all__ = ["MAX_IDX_BYTES", "MAX_IDX_ITEM_BYTES", "read_idx"]

MAX_IDX_BYTES = 1 << 30          # the largest IDX data one file may declare (MNIST's largest: 47 MB)
MAX_IDX_ITEM_BYTES = 1 << 20     # the largest image (one item of a file) of them: 1024 x 1024 pixels (MNIST's: 784)
_DEFLATE_MAX_RATIO = 1032        # deflate expands at most ~1032:1, so a .gz of n bytes holds < 1032 n
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_CHUNK = 1 << 20                 # read unit: small enough that Ctrl-C is honoured between chunks
_MAX_DIMS = 32                   # IDX files hold 1-3; NumPy refuses more than 64


def _read_upto(stream, n: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end)."""
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _read_idx_stream(stream, path, stored_size: int, gz: bool, hasher=None) -> np.ndarray:
    """Parse an unsigned-byte IDX file from ``stream`` (decompressed bytes), header first."""
    from fastcnn.data import DataError  # fastcnn.data imports this module
    head = _read_upto(stream, 4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{head.hex()}: the first two bytes must be zero "
                        "(not an IDX file?)")
    if head[2] != _IDX_UBYTE:
        raise DataError(f"{path}: unsupported IDX data type 0x{head[2]:02x} "
                        f"(only 0x{_IDX_UBYTE:02x} = unsigned byte is accepted)")
    ndim = head[3]
    if ndim == 0 or ndim > _MAX_DIMS:
        raise DataError(f"{path}: bad magic number 0x{head.hex()}: {ndim} dimensions (not an IDX file?)")
    header_len = 4 + 4 * ndim
    raw_dims = _read_upto(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header_len} bytes, "
                        f"found {4 + len(raw_dims)}")
    dims = tuple(int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(ndim))
    expected = 1
    for d in dims:
        expected *= d
    what = f"header says {'x'.join(map(str, dims))} = {expected} bytes of data"
    # Bound the buffer before it exists: by what the file can hold and by a sane maximum.
    can_hold = stored_size * _DEFLATE_MAX_RATIO if gz else stored_size - header_len
    if expected > can_hold and not gz:
        raise DataError(f"{path}: truncated: {what}, found {max(can_hold, 0)}")
    if expected > can_hold:
        raise DataError(f"{path}: refused: {what}, more than a {stored_size}-byte gzip file can hold "
                        "(damaged or forged file)")
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: refused: {what}, more than the {MAX_IDX_BYTES} bytes fastcnn reads "
                        "from one file")
    item = expected // dims[0] if dims[0] else math.prod(dims[1:])
    if ndim > 1 and item > MAX_IDX_ITEM_BYTES:
        raise DataError(f"{path}: refused: {what}: one image of {'x'.join(map(str, dims[1:]))} = {item} pixels is "
                        f"more than the {MAX_IDX_ITEM_BYTES} fastcnn trains on (scale the images down)")
    if hasher is not None:
        hasher.update(head + raw_dims)
    data = np.empty(expected, dtype=np.uint8)
    view = memoryview(data)
    found = 0
    while found < expected:
        n = stream.readinto(view[found:found + _CHUNK])
        if not n:
            break
        if hasher is not None:
            hasher.update(view[found:found + n])
        found += n
    if found < expected:
        raise DataError(f"{path}: truncated: {what}, found {found}")
    if gz:      # count what follows, but never decompress more than a few chunks of it
        extra = len(_read_upto(stream, 4 * _CHUNK))
        extra_txt = f"{extra} extra" if extra < 4 * _CHUNK else f"at least {extra} extra"
    else:
        extra = stored_size - header_len - expected
        extra_txt = f"{extra} extra"
    if extra:
        raise DataError(f"{path}: trailing bytes: {what}, found {expected + extra}"
                        f"{'+' if extra_txt.startswith('at') else ''} ({extra_txt})")
    return data.reshape(dims)


def _load_idx(path, algorithm: str | None = None) -> tuple[np.ndarray, str | None]:
    """Read ``path`` (gzipped or raw) -> (uint8 array of its declared shape, hex digest of the
    decompressed bytes under ``algorithm``, or None)."""
    from fastcnn.data import DataError  # fastcnn.data imports this module
    path = Path(path)
    hasher = hashlib.new(algorithm) if algorithm else None
    try:
        fh = open_input(path)                    # a regular file: a FIFO or a device would block or never end
    except InputFileError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    try:
        with fh as f:
            size = os.fstat(f.fileno()).st_size
            gz = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if not gz:
                return _read_idx_stream(f, path, size, False, hasher), hasher and hasher.hexdigest()
            try:
                arr = _read_idx_stream(gzip.GzipFile(fileobj=f, mode="rb"), path, size, True, hasher)
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt gzip data: {exc}") from None
            return arr, hasher and hasher.hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or raw) into a ``uint8`` array of its declared shape.

    Raises :class:`DataError`, naming the file, for an unreadable file, corrupt gzip data, a bad magic
    number, a data type other than 0x08 (unsigned byte), a byte count that differs from the product
    of the dimensions (truncated or trailing bytes), or a header that declares more data than the file
    can hold or than :data:`MAX_IDX_BYTES` (refused before anything that large is allocated)."""
    return _load_idx(path)[0]
