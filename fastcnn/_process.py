"""What a fastcnn command sets up in its own process, and importing fastcnn never does: glibc's
malloc thresholds (fastcnn._memory) and, on AVX-512 CPUs, Numba's target built with 512-bit vectors
preferred (fastcnn.kernels._config.prefer_wide_vectors). Called once, before the first kernel
compiles or loads; calling it again does nothing."""
from __future__ import annotations


def tune_process() -> None:
    from fastcnn._memory import tune_malloc
    from fastcnn.kernels._config import prefer_wide_vectors
    tune_malloc()
    prefer_wide_vectors()
