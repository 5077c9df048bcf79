"""Compilation settings shared by every kernel.

FASTMATH lets LLVM reorder float sums (so reductions vectorise) and fuse multiply-adds, but keeps
NaN/inf semantics (no 'nnan'/'ninf'), so a diverging run still shows up as NaN.

CACHE: Numba's on-disk cache. A fresh process compiles the training kernels once and later
processes load them; the cached parallel kernels give bit-identical results for any thread count
(tests/test_kernels.py checks it). The known open risk is several processes compiling into an
empty cache at the same moment (numba issue #4807): set FASTCNN_NUMBA_CACHE=0 to turn the cache
off. And Numba invalidates a cached function only when its own source file changes, not when a
worker it calls from another file does: after editing a kernel module, delete the cache
(kernels/__pycache__/*.nbi, *.nbc).

TILE_ROWS and the vector width: the register tile (kernels/_tile.py) keeps MR x 32 accumulators in
vector registers, so its shape follows the register file: MR = 3 with 16 vector registers (AVX2),
MR = 6 with 32 (AVX-512). The choice is made from the LLVM feature string Numba compiles for, which
is part of Numba's cache key, so a cached kernel always matches it. FASTCNN_TILE=3x32 or 6x32
forces one (to test the other tile on any CPU); the cache is then off, since its key does not
record the choice. LLVM's tuning for Intel's AVX-512 cores prefers 256-bit vectors, which halves
the machine's float32 rate: on a CPU with AVX-512, the commands (fastcnn-train, -eval, -bench,
-serve, the sweep's workers, ``python -m fastcnn.kernels``) call prefer_wide_vectors() before anything
compiles, which appends "-prefer-256-bit" to the feature string Numba's CPU target is built with, so
the kernels LLVM vectorises use 512-bit vectors too (the register tile's own vectors are 512-bit
with MR = 6 in any case: kernels/_tile.py). That setting is process-wide, like Numba's own
NUMBA_CPU_FEATURES, which is why importing fastcnn never makes it: a Python program that wants it
calls ``fastcnn.kernels.prefer_wide_vectors()`` first. It is skipped when NUMBA_CPU_FEATURES is set,
when FASTCNN_WIDE_VECTORS=0, and when Numba has compiled something already (its target is then
fixed), and it changes no result beyond the rounding the agreement tests allow.
"""
from __future__ import annotations

import os

from numba.core import config as _numba_config
from numba.core.codegen import get_host_cpu_features as _host_cpu_features
from numba.core.registry import cpu_target as _cpu_target

FASTMATH = {"reassoc", "contract", "nsz"}
TILE_CHOICES = {"3x32": 3, "6x32": 6}
AVX512 = ("+avx512f", "+avx512vl")     # 32 vector registers, 512-bit FMAs
NARROW_TUNING = "-prefer-256-bit"


def compiled_features() -> str:
    """The LLVM feature string of Numba's CPU target, part of its on-disk cache key (builds the
    target if nothing has yet)."""
    return _cpu_target.target_context.codegen().magic_tuple()[2]


def has_avx512(features: str) -> bool:
    return set(AVX512) <= set(features.split(","))


def tile_rows(features: str, override: str | None = None) -> int:
    """MR of the register tile for a CPU with LLVM feature string ``features``: 6 where AVX-512
    gives 32 vector registers, else 3; ``override`` (FASTCNN_TILE) names one of TILE_CHOICES."""
    if override:
        if override not in TILE_CHOICES:
            raise ValueError(f"set FASTCNN_TILE to one of {', '.join(TILE_CHOICES)} or unset it to let fastcnn "
                             f"choose for this CPU (now: {override!r})")
        return TILE_CHOICES[override]
    return TILE_CHOICES["6x32" if has_avx512(features) else "3x32"]


def wide_features(features: str) -> str | None:
    """``features`` with LLVM's preference for 256-bit vectors turned off, on a CPU with AVX-512;
    None where there is nothing to change."""
    if not has_avx512(features) or NARROW_TUNING in features.split(","):
        return None
    return f"{features},{NARROW_TUNING}"


def prefer_wide_vectors() -> bool:
    """Build Numba's CPU target with 512-bit vectors preferred, on a CPU with AVX-512 (see above).
    The commands call it (fastcnn._process.tune_process) before anything compiles; importing
    fastcnn never does. True if the target now has those features."""
    if (os.environ.get("FASTCNN_WIDE_VECTORS", "1") == "0" or _numba_config.CPU_FEATURES
            or _target_built()):
        return wide_vectors_in_use()
    features = wide_features(_host_cpu_features())
    if features is None:
        return False
    _numba_config.CPU_FEATURES = features
    # Built now, with these features, before a config reload could reset them; True only if they took.
    return compiled_features() == features


def _target_built() -> bool:
    return "_toplevel_target_context" in vars(_cpu_target)


def wide_vectors_in_use() -> bool:
    """True once Numba's target is built with LLVM's 256-bit preference turned off."""
    return _target_built() and NARROW_TUNING in compiled_features().split(",")


def planned_features() -> str:
    """The feature string Numba's target has, or will have if built now, without building it."""
    return compiled_features() if _target_built() else (_numba_config.CPU_FEATURES or _host_cpu_features())


TILE_OVERRIDE = os.environ.get("FASTCNN_TILE") or None
TILE_ROWS = tile_rows(planned_features(), TILE_OVERRIDE)
CACHE = os.environ.get("FASTCNN_NUMBA_CACHE", "1") != "0" and TILE_OVERRIDE is None
