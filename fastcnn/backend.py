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
    conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride)
        -> (dw, db): the convolution's weight and bias gradients through the pool; no dx (the
        fused op serves a first layer, whose input needs no gradient).

All arrays are NCHW, float32 or float64 (every array of one call has the same dtype), and results
are new C-contiguous arrays of that dtype. Inputs may be non-contiguous views. Pooling has no
padding and uses floor mode. The layers in :mod:`fastcnn.layers` validate shapes; the ops assume
valid arguments.
"""
from __future__ import annotations

import contextlib
import os

BACKENDS = ("numba", "numpy")
DEFAULT_BACKEND = "numba"
ENV_VAR = "FASTCNN_BACKEND"


def resolve_backend_name(name=None):
    """The backend name to use: ``name``, else ``$FASTCNN_BACKEND``, else the default (numba)."""
    if name is None:
        name = os.environ.get(ENV_VAR) or DEFAULT_BACKEND
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return name.lower()


def get_backend(name=None):
    """The module implementing the op contract for ``name`` ('numpy' or 'numba')."""
    name = resolve_backend_name(name)
    if name == "numpy":
        from fastcnn import reference
        return reference
    from fastcnn import kernels
    return kernels


_BLAS_CONTROLLER = None


def blas_guard(backend_name):
    """Context manager: while the numba backend runs, keep BLAS (used only by Linear) to one
    thread. Otherwise OpenBLAS's spinning thread pool and Numba's OpenMP pool fight over the
    cores (measured: 2.5x slower training steps on 2 cores). The numpy backend keeps every BLAS
    thread, since its convolutions are BLAS matmuls."""
    global _BLAS_CONTROLLER
    if backend_name != "numba":
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
