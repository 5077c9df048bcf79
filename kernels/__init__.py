"""Numba-JIT parallel kernels implementing fastcnn's op contract (see :mod:`fastcnn.backend`).

Installed as ``fastcnn.kernels`` (the repository's top-level ``kernels/`` folder). Each op is a
plain Python wrapper that validates and allocates, over an ``@njit(nogil=True)`` driver that loops
over a range of independent tasks, run on every core by ``_parallel.parallel_for``, over serial
``@njit`` workers (the stumpy pattern).
"""
from __future__ import annotations

import importlib

NAME = "numba"

# Each public name and the module defining it. Loaded on first use (PEP 562): importing
# fastcnn.kernels compiles nothing and builds no Numba target, so a command can still choose the
# target's features first (_config.prefer_wide_vectors).
_HOMES = {
    "conv2d_forward": "conv", "conv2d_backward": "conv",
    "maxpool2d_forward": "pool", "maxpool2d_backward": "pool",
    "avgpool2d_forward": "pool", "avgpool2d_backward": "pool",
    "relu_forward": "activation", "relu_backward": "activation",
    "conv2d_relu_maxpool_forward": "fused", "conv2d_relu_maxpool_backward": "fused",
    "dropout_forward": "dropout", "dropout_backward": "dropout",
    "linear_forward": "linear", "linear_backward": "linear", "softmax_cross_entropy": "loss",
    "dropout_linear_forward": "linear", "dropout_linear_backward": "linear",
    "all_finite": "batch", "count_correct": "batch",
    "first_compile": "_warmup", "warm_up": "_warmup", "prefer_wide_vectors": "_config",
}
__all__ = ["NAME", *_HOMES]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'fastcnn.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastcnn.kernels.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
