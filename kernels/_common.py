"""Helpers shared by the kernel wrappers (as stumpy's core.py): argument checks with one message."""
from __future__ import annotations

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(what: str, *arrays: np.ndarray) -> list[np.ndarray]:
    """``arrays`` as given if they share one dtype, float32 or float64; else TypeError naming ``what``."""
    dtype = arrays[0].dtype
    if dtype not in FLOATS or any(a.dtype != dtype for a in arrays):
        raise TypeError(f"{what} kernels need float32 or float64 arrays of one dtype, got "
                        + ", ".join(str(a.dtype) for a in arrays))
    return list(arrays)
