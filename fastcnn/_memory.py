"""Keep large freed blocks in the heap instead of returning them to the OS.

A training step allocates and frees the same activation-sized arrays (up to 13 MB for the first
layer at batch 128) every batch. glibc serves blocks above its mmap threshold with fresh mmap'd
pages, so every step pays page faults to zero them again, a sizeable part of a Numba training
step. Raising the mmap and trim thresholds (the same thing the
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ environment variables do) lets the heap reuse the
pages. Linux/glibc only; elsewhere, or with FASTCNN_MALLOC_TUNING=0, this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's maximum on 64-bit
_TRIM_THRESHOLD = 256 * 1024 * 1024
_done = False


def tune_malloc() -> bool:
    """Apply the thresholds once per process; returns True if they were applied."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("FASTCNN_MALLOC_TUNING") == "0":
        return False
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1) and ok
    return ok
