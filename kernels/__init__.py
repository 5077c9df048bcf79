"""Numba-JIT parallel kernels implementing fastcnn's op contract (see :mod:`fastcnn.backend`).

Installed as ``fastcnn.kernels`` (the repository's top-level ``kernels/`` folder). Each op is a
plain Python wrapper that validates and allocates, over an ``@njit(nogil=True)`` driver that loops
over a range of independent tasks, run on every core by ``_parallel.parallel_for``, over serial
``@njit`` workers (the stumpy pattern).
"""
from fastcnn.kernels._warmup import first_compile, warm_up
from fastcnn.kernels.activation import relu_backward, relu_forward
from fastcnn.kernels.conv import conv2d_backward, conv2d_forward
from fastcnn.kernels.dropout import dropout_backward, dropout_forward
from fastcnn.kernels.fused import conv2d_relu_maxpool_backward, conv2d_relu_maxpool_forward
from fastcnn.kernels.linear import linear_backward, linear_forward
from fastcnn.kernels.pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward

NAME = "numba"

__all__ = ["NAME", "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
           "avgpool2d_forward", "avgpool2d_backward",
           "relu_forward", "relu_backward", "conv2d_relu_maxpool_forward", "conv2d_relu_maxpool_backward",
           "dropout_forward", "dropout_backward", "linear_forward", "linear_backward",
           "first_compile", "warm_up"]
