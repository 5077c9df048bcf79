"""Softmax + cross-entropy, computed stably with log-sum-exp.

For logits z (N, 10) and integer labels y (N,):
    log softmax(z)_i = z_i - max(z) - log sum_j exp(z_j - max(z))
    L = -(1/N) sum_n log softmax(z_n)_{y_n}
    dL/dz = (softmax(z) - onehot(y)) / N
"""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax of (N, F) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of (N, F) logits against (N,) integer labels -> (loss, dlogits)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, classes), got {logits.shape}")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")
    N = logits.shape[0]
    logp = log_softmax(logits)
    rows = np.arange(N)
    loss = -logp[rows, labels].mean(dtype=np.float64)
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1
    dlogits /= N
    return float(loss), dlogits.astype(logits.dtype, copy=False)
