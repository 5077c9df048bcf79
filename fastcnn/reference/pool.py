"""Max and average pooling (no padding, floor mode), NumPy reference.

Shapes: x (N, C, H, W) -> y (N, C, P, Q) with P = (H - kh) // sh + 1, Q = (W - kw) // sw + 1.

Max-pool ties: the gradient goes to the FIRST maximum of the window in row-major order
(r, then s), which is what ``np.argmax`` returns. The forward pass returns that choice as
``argmax`` (N, C, P, Q) int32: the flat offset ``r * kw + s`` inside the window. Both backends
produce the identical ``argmax``; backward routes ``dy`` through it.

Fused ReLU (``relu=True``): y = maxpool(relu(x)) = relu(maxpool(x)), computed in one pass. A window
whose maximum is <= 0 outputs 0 and gets ``argmax = -1``: no gradient reaches its inputs, exactly
as through a separate ReLU (where the gradient would reach a clamped input and be masked there).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x, kernel_size, stride):
    """(N, C, H, W) -> strided view (N, C, P, Q, kh, kw). No copy."""
    (kh, kw), (sh, sw) = kernel_size, stride
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def maxpool2d_forward(x, kernel_size=(2, 2), stride=(2, 2), relu=False):
    """x (N,C,H,W) -> (y (N,C,P,Q), argmax (N,C,P,Q) int32 flat window offsets, -1 = no gradient)."""
    win = _windows(x, kernel_size, stride)
    N, C, P, Q, kh, kw = win.shape
    flat = win.reshape(N, C, P, Q, kh * kw)                         # copies the windows
    argmax = flat.argmax(axis=-1).astype(np.int32)                  # first maximum wins ties
    y = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    if relu:
        clamped = y <= 0                                            # NaN is not clamped
        y = np.where(clamped, 0, y).astype(x.dtype, copy=False)
        argmax[clamped] = -1
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, kernel_size=(2, 2), stride=(2, 2)):
    """dy (N,C,P,Q), argmax from forward -> dx (N,C,H,W); windows with argmax -1 pass nothing."""
    (kh, kw), (sh, sw) = kernel_size, stride
    P, Q = dy.shape[2], dy.shape[3]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for r in range(kh):                                             # one strided add per window offset
        for s in range(kw):
            dx[:, :, r:r + sh * P:sh, s:s + sw * Q:sw] += np.where(argmax == r * kw + s, dy, 0)
    return dx


def avgpool2d_forward(x, kernel_size=(2, 2), stride=(2, 2)):
    """x (N,C,H,W) -> y (N,C,P,Q), the mean of each window."""
    return _windows(x, kernel_size, stride).mean(axis=(-2, -1), dtype=x.dtype)


def avgpool2d_backward(dy, x_shape, kernel_size=(2, 2), stride=(2, 2)):
    """dy (N,C,P,Q) -> dx (N,C,H,W): each window's gradient spread evenly over its kh*kw inputs."""
    (kh, kw), (sh, sw) = kernel_size, stride
    P, Q = dy.shape[2], dy.shape[3]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    g = dy / dy.dtype.type(kh * kw)
    for r in range(kh):
        for s in range(kw):
            dx[:, :, r:r + sh * P:sh, s:s + sw * Q:sw] += g
    return dx
