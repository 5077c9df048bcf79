"""Convolution, ReLU and max pooling as one op (each Conv2D -> ReLU -> MaxPool2D of a model,
ConvReLUMaxPool2D), NumPy reference: literally the composition of the three reference ops, so it
is right by construction. The Numba backend computes the same thing without storing the
convolution's output where it can (:mod:`fastcnn.kernels.fused`, :mod:`fastcnn.kernels.conv`).

    conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool_size, pool_stride) -> (y, argmax)
        = maxpool2d_forward(conv2d_forward(x, w, b, stride, padding), pool_size, pool_stride,
                            relu=True)
    conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx=True)
        -> (dx | None, dw, db): conv2d_backward of the max-pool backward of dy.

Dropout and the linear layer after it (DropoutLinear), the same way:

    dropout_linear_forward(x, key, threshold, w, b) -> (y, xd, mask)
        xd, mask = dropout_forward(x, key, threshold); y = linear_forward(xd, w, b)
    dropout_linear_backward(dy, xd, mask, w) -> (dx, dw, db)
        linear_backward(dy, xd, w), its dx through dropout_backward(dx, mask)
"""
from __future__ import annotations

from fastcnn.convmath import conv_output_size
from fastcnn.reference.conv import conv2d_backward, conv2d_forward
from fastcnn.reference.dropout import dropout_backward, dropout_forward
from fastcnn.reference.linear import linear_backward, linear_forward
from fastcnn.reference.pool import maxpool2d_backward, maxpool2d_forward


def conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool_size, pool_stride):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> (y (N,K,P2,Q2), argmax (N,K,P2,Q2) int32)."""
    return maxpool2d_forward(conv2d_forward(x, w, b, stride, padding), pool_size, pool_stride, relu=True)


def conv2d_relu_maxpool_backward(dy, argmax, x, w, stride, padding, pool_size, pool_stride, need_dx=True):
    """dy (N,K,P2,Q2), argmax from forward, x, w -> (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,))."""
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    dconv = maxpool2d_backward(dy, argmax, (N, K, P, Q), pool_size, pool_stride)
    return conv2d_backward(dconv, x, w, stride, padding, need_dx=need_dx)


def dropout_linear_forward(x, key, threshold, w, b):
    """x (N, F_in), dropout's key and threshold, w (F_out, F_in), b (F_out,) -> (y (N, F_out), xd, mask)."""
    xd, mask = dropout_forward(x, key, threshold)
    return linear_forward(xd, w, b), xd, mask


def dropout_linear_backward(dy, xd, mask, w):
    """dy (N, F_out), the forward's xd and mask, w -> (dx (N, F_in), dw, db)."""
    dx, dw, db = linear_backward(dy, xd, w)
    return dropout_backward(dx, mask), dw, db
