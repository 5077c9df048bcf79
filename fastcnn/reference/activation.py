"""ReLU, NumPy reference: y = max(x, 0); dx = dy where y > 0 (equivalently x > 0), else 0."""
import numpy as np


def relu_forward(x):
    """x (any shape) -> y = max(x, 0)."""
    return np.maximum(x, 0, dtype=x.dtype)


def relu_backward(dy, y):
    """dy, y (same shape) -> dx."""
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
