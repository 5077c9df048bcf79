"""Dropout's mask from a counter-based generator, NumPy reference (:mod:`fastcnn.kernels.dropout`
computes the same bits in parallel).

The stream: each forward draws one 64-bit ``key`` from the layer's seeded generator. Element i of
the (flattened) input gets the 16-bit draw

    word(c) = splitmix64(key + (c + 1) * 0x9E3779B97F4A7C15),  c = i // 4
    draw(i) = (word(i // 4) >> (16 * (i % 4))) & 0xFFFF

(SplitMix64's output function, used as a counter-based generator: each word depends only on the
key and its counter, never on an earlier word). The element is dropped when its draw is below
``threshold`` = round(p * 65536) and otherwise scaled by 65536 / (65536 - threshold), so the layer
stays unbiased at that quantised p. Since every element's draw is a function of (key, i), any
split of the elements over threads gives the same mask, and the generator's state after a step
is the layer's numpy Generator advanced by one draw, which checkpoints save as before.
"""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
STEPS = 1 << 16


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def dropout_draws(key: int, size: int) -> np.ndarray:
    """The 16-bit draws (uint16, ``size`` of them) of the stream above for ``key``."""
    counters = np.arange(1, -(-size // 4) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        words = splitmix64(np.uint64(key) + counters * GOLDEN)
    return words.astype("<u8").view("<u2")[:size]


def dropout_forward(x: np.ndarray, key: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """x (any shape), the step's key and threshold -> (y = x * mask, mask): mask is 0 where
    dropped, else the scale STEPS / (STEPS - threshold), in x's dtype."""
    scale = x.dtype.type(STEPS / (STEPS - threshold))
    keep = dropout_draws(key, x.size).reshape(x.shape) >= threshold
    mask = keep * scale
    return x * mask, mask


def dropout_backward(dy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dy, the forward's mask -> dx = dy * mask."""
    return dy * mask
