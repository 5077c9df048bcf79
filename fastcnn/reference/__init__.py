"""The pure-NumPy reference implementation of fastcnn's op contract.

Every function here is vectorised NumPy (im2col through strided views, then one matrix multiply;
col2im as a loop over the kh*kw kernel offsets, never over pixels). It is the ground truth the
Numba kernels in :mod:`fastcnn.kernels` are tested against. See :mod:`fastcnn.backend` for the contract.
"""
from fastcnn.losses import softmax_cross_entropy
from fastcnn.reference.activation import relu_backward, relu_forward
from fastcnn.reference.batch import all_finite, count_correct
from fastcnn.reference.conv import conv2d_backward, conv2d_forward
from fastcnn.reference.dropout import dropout_backward, dropout_forward
from fastcnn.reference.fused import (
    conv2d_relu_maxpool_backward,
    conv2d_relu_maxpool_forward,
    dropout_linear_backward,
    dropout_linear_forward,
)
from fastcnn.reference.linear import linear_backward, linear_forward
from fastcnn.reference.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

NAME = "numpy"

__all__ = [
    "NAME",
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "relu_forward",
    "relu_backward",
    "conv2d_relu_maxpool_forward",
    "conv2d_relu_maxpool_backward",
    "dropout_forward",
    "dropout_backward",
    "linear_forward",
    "linear_backward",
    "dropout_linear_forward",
    "dropout_linear_backward",
    "softmax_cross_entropy",
    "all_finite",
    "count_correct",
]
