"""The training step's looks at a whole batch, Numba kernels: the same contract as
:mod:`fastcnn.reference.batch`. The finiteness check reads the images in parallel blocks (it is
their first read in a step: on one thread it was a tenth of the step's serial time); the count of
right predictions is one compiled pass over the logits instead of three NumPy calls."""
import numpy as np
from numba import njit

from fastcnn.kernels._common import FLOATS, check_float
from fastcnn.kernels._config import CACHE
from fastcnn.kernels._parallel import parallel_for
from fastcnn.kernels.activation import ELEMENTS_PER_PART
from fastcnn.reference import batch as reference

BLOCK = 1 << 14           # elements per task of the finiteness check
# An inf or NaN has every exponent bit set: a test on the bits is an integer loop that vectorises
# without fastmath (which would assume NaN away), unlike a test on the values.
EXPONENT = {4: np.uint32(0x7F800000), 8: np.uint64(0x7FF0000000000000)}


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _nonfinite_blocks(lo, hi, bits, mask, found):
    """found[t] <- how many elements of block t (BLOCK elements of ``bits``, the floats' bit
    patterns) are inf or NaN, for blocks lo .. hi."""
    n = bits.shape[0]
    for t in range(lo, hi):
        seg = bits[t * BLOCK:min(n, (t + 1) * BLOCK)]
        count = 0
        for i in range(seg.shape[0]):
            count += (seg[i] & mask) == mask
        found[t] = count


@njit(nogil=True, boundscheck=False, cache=CACHE)
def _count_correct(z, labels):
    N, F = z.shape
    count = 0
    for n in range(N):
        best, at = z[n, 0], 0
        if best == best:
            for j in range(1, F):
                v = z[n, j]
                if v != v:                    # np.argmax: the first NaN is the largest
                    at = j
                    break
                if v > best:
                    best, at = v, j
        count += at == labels[n]
    return count


def all_finite(x):
    """Whether every element of ``x`` is finite."""
    if not isinstance(x, np.ndarray) or x.dtype not in FLOATS or x.size == 0:
        return reference.all_finite(x)
    bits = np.ascontiguousarray(x).reshape(-1).view(np.uint32 if x.itemsize == 4 else np.uint64)
    found = np.empty(-(-bits.size // BLOCK), np.int64)           # every block's count written
    parallel_for(_nonfinite_blocks, found.size, bits, EXPONENT[x.itemsize], found,
                 grain=max(1, ELEMENTS_PER_PART // BLOCK))
    return not any(found.tolist())               # not found.any(): NumPy's reductions cost 10-20 us between kernels


def count_correct(logits, labels):
    """How many rows of (N, F) float32 or float64 ``logits`` have their first largest value at
    their integer label."""
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0 or labels.shape != logits.shape[:1]:
        return reference.count_correct(logits, labels)      # its result, or its error
    (z,) = check_float("count_correct", np.ascontiguousarray(logits))
    return int(_count_correct(z, labels.astype(np.int64, copy=False)))
