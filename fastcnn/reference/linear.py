"""The fully connected layer, NumPy reference: y = x @ w.T + b and its gradients (BLAS matmuls)."""
from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (N, F_in), w (F_out, F_in), b (F_out,) -> y (N, F_out)."""
    return x @ w.T + b


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dy (N, F_out), x, w -> (dx (N, F_in), dw (F_out, F_in), db (F_out,))."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)
