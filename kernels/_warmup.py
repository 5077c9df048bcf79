"""warm_up: compile (or load from Numba's cache) the kernels the MNIST network's training uses,
for one dtype, before the first batch, and say so before any real compilation starts."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numba.core import event

from fastcnn.kernels.conv import conv2d_backward, conv2d_forward
from fastcnn.kernels.fused import conv2d_relu_maxpool_backward, conv2d_relu_maxpool_forward
from fastcnn.kernels.pool import maxpool2d_backward, maxpool2d_forward

# About what a first run takes on a 2-core machine (README, performance section).
ESTIMATED_COMPILE_SECONDS = {np.dtype(np.float32): 30.0, np.dtype(np.float64): 30.0}


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


def _mnist_ops(dtype: np.dtype) -> None:
    """One tiny training step of the MNIST network's convolution stack, op by op: the fused
    conv1 + ReLU + max-pool (forward, weight gradient), conv2 (forward, both gradients) and its
    ReLU + max-pool. Any shape compiles the same specialisations as the real batch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(dtype)
    w1 = rng.standard_normal((32, 1, 3, 3)).astype(dtype)
    w2 = rng.standard_normal((64, 32, 3, 3)).astype(dtype)
    b1, b2 = np.zeros(32, dtype), np.zeros(64, dtype)
    h, am1 = conv2d_relu_maxpool_forward(x, w1, b1, (1, 1), (1, 1), (2, 2), (2, 2))
    y = conv2d_forward(h, w2, b2, (1, 1), (1, 1))
    p, am2 = maxpool2d_forward(y, (2, 2), (2, 2), relu=True)
    dy = maxpool2d_backward(np.ones_like(p), am2, y.shape, (2, 2), (2, 2))
    dh, _, _ = conv2d_backward(dy, h, w2, (1, 1), (1, 1))
    conv2d_relu_maxpool_backward(dh, am1, x, w1, (1, 1), (1, 1), (2, 2), (2, 2))


def warm_up(dtype: np.dtype | type, *, on_compile: Callable[[float], None] | None = None) -> float:
    """Compile or load the kernels the MNIST network's training uses for ``dtype`` (float32 or
    float64); return the seconds spent. ``on_compile(estimated_seconds)`` is called once before
    the first real compilation, and not at all when every kernel loads from the cache."""
    dt = np.dtype(dtype)
    if dt not in ESTIMATED_COMPILE_SECONDS:
        raise TypeError(f"warm_up needs float32 or float64, got {dt}")
    t0 = time.perf_counter()
    if on_compile is None:
        _mnist_ops(dt)
    else:
        listener = _FirstCompile(lambda: on_compile(ESTIMATED_COMPILE_SECONDS[dt]))
        with event.install_listener("numba:compile", listener):
            _mnist_ops(dt)
    return time.perf_counter() - t0
