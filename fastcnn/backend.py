"""Choosing between the two implementations of the op contract.

The op contract (implemented by :mod:`fastcnn.reference` and :mod:`fastcnn.kernels`, with the
same names, signatures, dtypes and results):

    conv2d_forward(x, w, b, stride, padding) -> y
        x (N,C,H,W), w (K,C,R,S), b (K,); stride and padding are (int, int) pairs; y (N,K,P,Q).
    conv2d_backward(dy, x, w, stride, padding, need_dx=True) -> (dx | None, dw, db)
        dx (N,C,H,W) is skipped (None) when need_dx is False, e.g. for the first layer.
    maxpool2d_forward(x, kernel_size, stride, relu=False) -> (y, argmax)
        argmax (N,C,P,Q) int32 holds the flat offset r*kw + s of the first maximum of each window.
        relu=True fuses a preceding ReLU: y = maxpool(relu(x)); windows clamped to 0 get argmax -1.
    maxpool2d_backward(dy, argmax, x_shape, kernel_size, stride) -> dx   (argmax -1: no gradient)
    avgpool2d_forward(x, kernel_size, stride) -> y
    avgpool2d_backward(dy, x_shape, kernel_size, stride) -> dx
    relu_forward(x) -> y                      y = max(x, 0)
    relu_backward(dy, y) -> dx                dx = dy where y > 0, else 0
    conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool_size, pool_stride) -> (y, argmax)
        maxpool2d_forward(conv2d_forward(x, w, b, stride, padding), pool_size, pool_stride,
        relu=True) in one op; argmax indexes windows of the (never stored) convolution output.
    conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx=True)
        -> (dx | None, dw, db): conv2d_backward of maxpool2d_backward(dy, argmax, ...), from the
        pooled gradient (dx skipped when need_dx is False, e.g. for the first layer).
    dropout_forward(x, key, threshold) -> (y, mask)
        mask = 0 where the counter-based draw of (key, element index) is below threshold, else
        65536 / (65536 - threshold); y = x * mask (fastcnn.reference.dropout gives the stream).
    dropout_backward(dy, mask) -> dx          dx = dy * mask
    linear_forward(x, w, b) -> y              x (N, F_in), w (F_out, F_in): y = x @ w.T + b
    linear_backward(dy, x, w) -> (dx, dw, db) dy @ w, dy.T @ x, dy summed over N
    dropout_linear_forward(x, key, threshold, w, b) -> (y, xd, mask)
        dropout_forward (xd = x * mask), then linear_forward of xd, in one op.
    dropout_linear_backward(dy, xd, mask, w) -> (dx, dw, db)
        linear_backward(dy, xd, w), its dx then through dropout_backward with mask.
    softmax_cross_entropy(logits, labels) -> (loss, dlogits)
        logits (N, F), labels (N,) integers in [0, F): loss the mean of -log softmax(logits)[label]
        (a Python float), dlogits = (softmax(logits) - onehot(labels)) / N (fastcnn.losses).
    all_finite(x) -> bool                     no NaN or infinity in x (the training step's input check)
    count_correct(logits, labels) -> int      rows whose first largest logit (np.argmax's) is at the label

All arrays are NCHW, float32 or float64 (every array of one call has the same dtype), and results
are new C-contiguous arrays of that dtype. Inputs may be non-contiguous views. Pooling has no
padding and uses floor mode. The layers in :mod:`fastcnn.layers` validate shapes; the ops assume
valid arguments.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol

import numpy as np

from fastcnn import reference

BACKENDS = ("numba", "numpy")
DEFAULT_BACKEND = "numba"
ENV_VAR = "FASTCNN_BACKEND"

Pair = tuple[int, int]


class Ops(Protocol):
    """The op contract as a type: the names and signatures every backend module provides (see the
    module docstring for shapes and semantics). Modules satisfy it structurally."""

    def conv2d_forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: Pair = (1, 1),
                       padding: Pair = (0, 0)) -> np.ndarray: ...

    def conv2d_backward(self, dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair = (1, 1),
                        padding: Pair = (0, 0),
                        need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]: ...

    def maxpool2d_forward(self, x: np.ndarray, kernel_size: Pair = (2, 2), stride: Pair = (2, 2),
                          relu: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    def maxpool2d_backward(self, dy: np.ndarray, argmax: np.ndarray, x_shape: tuple[int, ...],
                           kernel_size: Pair = (2, 2), stride: Pair = (2, 2)) -> np.ndarray: ...

    def avgpool2d_forward(self, x: np.ndarray, kernel_size: Pair = (2, 2), stride: Pair = (2, 2)) -> np.ndarray: ...

    def avgpool2d_backward(self, dy: np.ndarray, x_shape: tuple[int, ...], kernel_size: Pair = (2, 2),
                           stride: Pair = (2, 2)) -> np.ndarray: ...

    def relu_forward(self, x: np.ndarray) -> np.ndarray: ...

    def relu_backward(self, dy: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def conv2d_relu_maxpool_forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: Pair, padding: Pair,
                                    pool_size: Pair, pool_stride: Pair) -> tuple[np.ndarray, np.ndarray]: ...

    def conv2d_relu_maxpool_backward(self, dy: np.ndarray, argmax: np.ndarray, x: np.ndarray, w: np.ndarray,
                                     stride: Pair, padding: Pair, pool_size: Pair, pool_stride: Pair,
                                     need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]: ...

    def dropout_forward(self, x: np.ndarray, key: int, threshold: int) -> tuple[np.ndarray, np.ndarray]: ...

    def dropout_backward(self, dy: np.ndarray, mask: np.ndarray) -> np.ndarray: ...

    def linear_forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    def linear_backward(self, dy: np.ndarray, x: np.ndarray,
                        w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def dropout_linear_forward(self, x: np.ndarray, key: int, threshold: int, w: np.ndarray,
                               b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def dropout_linear_backward(self, dy: np.ndarray, xd: np.ndarray, mask: np.ndarray,
                                w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def softmax_cross_entropy(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]: ...

    def all_finite(self, x: np.ndarray) -> bool: ...

    def count_correct(self, logits: np.ndarray, labels: np.ndarray) -> int: ...


OP_NAMES = tuple(name for name in vars(Ops) if not name.startswith("_"))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):                     # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_backend_name(name: str | None = None) -> str:
    """The backend name to use: ``name``, else ``$FASTCNN_BACKEND``, else the default (numba)."""
    source = ""
    if name is None:
        name = os.environ.get(ENV_VAR) or DEFAULT_BACKEND
        source = f" in ${ENV_VAR}" if os.environ.get(ENV_VAR) else ""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}{source}: expected one of {', '.join(BACKENDS)}")
    return name.lower()


def numba_threads_limit() -> int:
    """The most Numba threads :func:`check_numba_threads` accepts: four per CPU, at least 8 (a few
    more threads than cores is how tests compare thread counts on a small machine; thousands make
    every parallel loop many times slower)."""
    return max(8, 4 * (os.cpu_count() or 1))


def check_numba_threads() -> None:
    """``$NUMBA_NUM_THREADS``, when set, must be a thread count from 1 to :func:`numba_threads_limit`:
    Numba itself fails later without naming the variable (0, "abc") or starts thousands of threads
    and runs many times slower (9999). ValueError naming the variable otherwise."""
    text = os.environ.get("NUMBA_NUM_THREADS")
    if text is None or not text.strip():
        return
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= numba_threads_limit():
        raise ValueError(f"set NUMBA_NUM_THREADS to a thread count from 1 to {numba_threads_limit()} (this machine "
                         f"has {os.cpu_count() or 1} CPUs) or unset it: it is {text[:20]!r}")


def get_backend(name: str | None = None) -> Ops:
    """The module implementing the op contract for ``name`` ('numpy' or 'numba'); for numba,
    ``$NUMBA_NUM_THREADS`` is checked first (:func:`check_numba_threads`)."""
    name = resolve_backend_name(name)
    if name == "numpy":
        return reference
    check_numba_threads()
    # Lazy: importing the kernels imports numba, which a numpy-backend run never needs.
    from fastcnn import kernels
    return kernels


_BLAS_CONTROLLER: Any = None


def blas_guard(backend_name: str) -> contextlib.AbstractContextManager:
    """Context manager for code that alternates BLAS calls with the Numba kernels (the tests and
    benchmarks that check the kernels against the NumPy reference): while the numba backend runs,
    BLAS gets one thread. Otherwise OpenBLAS's threads, which spin for a while after each call, and
    the kernels' workers fight over the cores and the kernels run several times slower. The numba
    backend itself calls no BLAS, so training needs no guard; the numpy backend keeps every BLAS
    thread, since its convolutions are BLAS matmuls."""
    global _BLAS_CONTROLLER
    if backend_name != "numba":
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        # Lazy: threadpoolctl inspects every loaded library; only numba-backend runs need it.
        from threadpoolctl import ThreadpoolController
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
