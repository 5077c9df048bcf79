"""warm_up: compile (or load from Numba's cache) the kernels the MNIST network's training uses,
for one dtype, before the first batch, and say so before any real compilation starts.

Compilation is single-threaded in Numba, and most of it is LLVM optimising and compiling the
prange drivers with the workers linked into them (README, Benchmarks: "what limits it now"). So
on an empty cache with two or more CPUs the work is split in two: this process compiles the
convolution drivers (the register tile's, the longest half) while a helper process compiles the
first layer's fused forward and the pooling drivers into the same on-disk cache; this process then
loads those from the cache. The two halves reach disjoint sets of cached functions
(tests/test_kernels.py checks it), so no cache entry ever has two writers (the race of numba issue
#4807 needs two processes writing one function's entries). Without the cache, or if the helper
fails, this process compiles both halves itself: the same code, only slower.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
from numba.core import event

from fastcnn.backend import usable_cpus
from fastcnn.kernels._config import CACHE, compiled_features
from fastcnn.kernels.conv import conv2d_backward, conv2d_forward
from fastcnn.kernels.fused import conv2d_relu_maxpool_backward, conv2d_relu_maxpool_forward
from fastcnn.kernels.pool import maxpool2d_backward, maxpool2d_forward

# About what a first run takes on the 2-core development machine (README, performance section):
# both halves in one process, or split with the helper.
ESTIMATED_COMPILE_SECONDS = {"alone": 30.0, "split": 20.0}


class _FirstCompile(event.Listener):
    """Calls ``callback`` once, when the first real compilation starts (Numba emits no
    'numba:compile' event for a function it loads from its on-disk cache)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback, self.fired = callback, False

    def on_start(self, ev: event.Event) -> None:
        if not self.fired:
            self.fired = True
            self.callback()

    def on_end(self, ev: event.Event) -> None:
        pass


@contextlib.contextmanager
def first_compile(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, call ``callback()`` once, when the first real Numba compilation starts."""
    with event.install_listener("numba:compile", _FirstCompile(callback)):
        yield


# The MNIST network's convolution stack, one tiny step (any shape compiles the same specialisations
# as the real batch): x the input, w1/b1 the fused first layer, h its pooled output (the second
# convolution's input), w2/b2 the second convolution, g its output or gradient, am argmax.

def _arrays(dtype: np.dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((2, 1, 28, 28)).astype(dtype),
            "w1": rng.standard_normal((32, 1, 3, 3)).astype(dtype), "b1": np.zeros(32, dtype),
            "h": rng.standard_normal((2, 32, 14, 14)).astype(dtype),
            "w2": rng.standard_normal((64, 32, 3, 3)).astype(dtype), "b2": np.zeros(64, dtype),
            "g": rng.standard_normal((2, 64, 14, 14)).astype(dtype),
            "am": np.zeros((2, 32, 14, 14), np.int32)}


def convolution_ops(dtype: np.dtype) -> None:
    """The register tile's drivers: the second convolution forward and both gradients (its input
    gradient is a forward convolution), and the fused first layer's weight gradient."""
    a = _arrays(dtype)
    conv2d_forward(a["h"], a["w2"], a["b2"], (1, 1), (1, 1))
    conv2d_backward(a["g"], a["h"], a["w2"], (1, 1), (1, 1))
    conv2d_relu_maxpool_backward(a["h"], a["am"], a["x"], a["w1"], (1, 1), (1, 1), (2, 2), (2, 2))


def pooling_ops(dtype: np.dtype) -> None:
    """The fused first layer's forward (convolution + ReLU + max pool) and the second layer's
    ReLU + max pool, forward and backward."""
    a = _arrays(dtype)
    conv2d_relu_maxpool_forward(a["x"], a["w1"], a["b1"], (1, 1), (1, 1), (2, 2), (2, 2))
    p, am = maxpool2d_forward(a["g"], (2, 2), (2, 2), relu=True)
    maxpool2d_backward(np.ones_like(p), am, a["g"].shape, (2, 2), (2, 2))


def start_helper(dtype: np.dtype) -> subprocess.Popen:
    """A process that compiles pooling_ops(dtype) into the shared cache: the same interpreter,
    environment and import path, so the same fastcnn, cache directory and Numba settings, and this
    process's CPU features (the cache key's), whatever decided them here."""
    code = f"import fastcnn.kernels._warmup as w, numpy as np; w.pooling_ops(np.dtype({dtype.name!r}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "NUMBA_CPU_FEATURES": compiled_features()}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compile_split(first: Callable[[], None], second: Callable[[], None],
                  helper: Callable[[], subprocess.Popen] | None,
                  on_compile: Callable[[], None] | None) -> None:
    """Run ``first`` then ``second``, calling ``on_compile`` when the first real compilation starts.
    If that happens in ``first`` and ``helper`` is given, also start it (a process compiling
    ``second``'s kernels into the cache) and wait for it before ``second``, which then loads them
    from the cache (or compiles what the helper did not). The helper is killed if this process
    stops early."""
    started: list[subprocess.Popen] = []
    in_first = True

    def on_first() -> None:
        if on_compile is not None:
            on_compile()
        if helper is not None and in_first:
            started.append(helper())

    try:
        with first_compile(on_first):
            first()
            in_first = False
            for proc in started:
                proc.wait()
            second()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def warm_up(dtype: np.dtype | type, *, on_compile: Callable[[float], None] | None = None) -> float:
    """Compile or load the kernels the MNIST network's training uses for ``dtype`` (float32 or
    float64); return the seconds spent. ``on_compile(estimated_seconds)`` is called once before
    the first real compilation, and not at all when every kernel loads from the cache."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"warm_up needs float32 or float64, got {dt}")
    split = CACHE and usable_cpus() >= 2
    estimate = ESTIMATED_COMPILE_SECONDS["split" if split else "alone"]
    t0 = time.perf_counter()
    compile_split(lambda: convolution_ops(dt), lambda: pooling_ops(dt),
                  (lambda: start_helper(dt)) if split else None,
                  None if on_compile is None else (lambda: on_compile(estimate)))
    return time.perf_counter() - t0
