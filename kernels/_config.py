"""Compilation settings shared by every kernel.

FASTMATH lets LLVM reorder float sums (so reductions vectorise) and fuse multiply-adds, but keeps
NaN/inf semantics (no 'nnan'/'ninf'), so a diverging run still shows up as NaN.

CACHE: Numba's on-disk cache. Measured here (numba 0.68, OpenMP layer, 2 cores): a fresh process
compiles the float32 training kernels in ~18 s without it and loads them in ~0.6 s with it; the
cached parallel kernels gave bit-identical results under NUMBA_NUM_THREADS=1 and 2 and across
numba.set_num_threads changes in one process (tests/test_kernels.py checks the thread-count part).
The known open risk is several processes compiling into an empty cache at the same moment
(numba issue #4807): set FASTCNN_NUMBA_CACHE=0 to turn the cache off. And Numba invalidates a
cached function only when its own source file changes, not when a worker it calls from another
file does: after editing a kernel module, delete the cache (kernels/__pycache__/*.nbi, *.nbc).
"""
import os

FASTMATH = {"reassoc", "contract", "nsz"}
CACHE = os.environ.get("FASTCNN_NUMBA_CACHE", "1") != "0"
