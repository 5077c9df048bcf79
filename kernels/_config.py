"""Compilation settings shared by every kernel.

FASTMATH lets LLVM reorder float sums (so reductions vectorise) and fuse multiply-adds, but keeps
NaN/inf semantics (no 'nnan'/'ninf'), so a diverging run still shows up as NaN.

TILE_FASTMATH is the register tile's (kernels/_tile.py): contraction only. With 'reassoc' the loop
vectoriser takes the tile's reduction over instead of the SLP vectoriser and the accumulators leave
the registers.

SLP vectorisation (slp_compilation): the tile keeps its MR x NR accumulators in vector registers
only if LLVM's SLP vectoriser packs the named scalars into vectors; without it every multiply-add
is scalar. Numba turned SLP off by default (numba PR #8852, after miscompilations reported in
issues #8705 and #8681) and offers only a process-wide switch, NUMBA_SLP_VECTORIZE, which would
change every function any library compiles. So fastcnn turns it on only while its own convolution
drivers compile: ``numba.core.config.SLP_VECTORIZE`` is read when a function's code is generated,
and the public wrappers call those drivers inside ``slp_compilation()``, which sets it and restores
it (Numba compiles under the GIL and these drivers do not release it, so no other thread compiles
meanwhile). The on-disk cache key does not record the setting (numba issue #10821), which is why
every route to those drivers goes through that guard: their cached artifacts are always SLP-built.
The agreement tests against the NumPy reference, a NUMBA_BOUNDSCHECK=1 run and the bit-identity
tests across thread counts are what vouch for the generated code.

CACHE: Numba's on-disk cache. A fresh process compiles the training kernels once and later
processes load them; the cached parallel kernels give bit-identical results for any thread count
(tests/test_kernels.py checks it). The known open risk is several processes compiling into an
empty cache at the same moment (numba issue #4807): set FASTCNN_NUMBA_CACHE=0 to turn the cache
off. And Numba invalidates a cached function only when its own source file changes, not when a
worker it calls from another file does: after editing a kernel module, delete the cache
(kernels/__pycache__/*.nbi, *.nbc).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from numba.core import config as _numba_config

FASTMATH = {"reassoc", "contract", "nsz"}
TILE_FASTMATH = {"contract"}
CACHE = os.environ.get("FASTCNN_NUMBA_CACHE", "1") != "0"


@contextlib.contextmanager
def slp_compilation() -> Iterator[None]:
    """Numba's SLP vectoriser on for whatever compiles inside the block, restored after."""
    before = _numba_config.SLP_VECTORIZE
    _numba_config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        _numba_config.SLP_VECTORIZE = before
