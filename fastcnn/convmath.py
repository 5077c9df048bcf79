"""Convolution and pooling arithmetic shared by the reference, the kernels, the layers and the
benchmarks: argument pairs, output sizes and work counts.

Dimension legend (used across fastcnn):
    N batch, C input channels, H x W input size, K output channels (filters),
    R x S kernel size, sh x sw stride, ph x pw zero padding, P x Q output size.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pair", "conv_output_size", "pool_output_size", "conv_flops"]


def pair(value, name: str = "value", minimum: int = 0) -> tuple[int, int]:
    """An int or a pair of ints -> a validated ``(int, int)`` tuple, each ``>= minimum``."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int \
            and min(value) >= minimum:
        return value                # what the layers hold: checked every step, so this path is short
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(value)}")
    return (int(value[0]), int(value[1]))


def conv_output_size(H: int, W: int, R: int, S: int, stride=1, padding=0) -> tuple[int, int]:
    """(P, Q) of a convolution: P = (H + 2ph - R) // sh + 1, Q = (W + 2pw - S) // sw + 1."""
    (sh, sw), (ph, pw) = pair(stride, "stride", 1), pair(padding, "padding", 0)
    return (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1


def pool_output_size(H: int, W: int, kernel=2, stride=None) -> tuple[int, int]:
    """(P, Q) of a pooling window without padding, floor mode; ``stride`` defaults to the kernel."""
    (kh, kw) = pair(kernel, "kernel_size", 1)
    (sh, sw) = pair(kernel if stride is None else stride, "stride", 1)
    return (H - kh) // sh + 1, (W - kw) // sw + 1


def conv_flops(N: int, C: int, H: int, W: int, K: int, R: int, S: int, stride=1, padding=0) -> int:
    """FLOPs of one convolution pass: 2*N*K*C*R*S*P*Q (a multiply and an add per weight per output).

    The forward pass, the input gradient (dx) and the weight gradient (dw) each cost exactly this
    (dx is a convolution of dy with the flipped weights; dw correlates dy with x)."""
    P, Q = conv_output_size(H, W, R, S, stride, padding)
    return 2 * N * K * C * R * S * P * Q
