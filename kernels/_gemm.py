"""rows_axpy(W, colT, bias, Y):  Y[k, :] = bias[k] + sum_l W[k, l] * colT[l, :]

For tiny reductions (the first convolution: C*R*S = 9), where the register tile (kernels/_tile.py)
would spend more time loading and storing its accumulators than multiplying: vectorises over the
long pixel axis instead, four taps per pass. A serial worker that the parallel drivers call once
per image (stumpy style).
"""
from numba import njit

from fastcnn.kernels._config import CACHE, FASTMATH


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def rows_axpy(W, colT, bias, Y):
    K, L = W.shape
    V = colT.shape[1]
    for k in range(K):
        y = Y[k]
        b = bias[k]
        for v in range(V):
            y[v] = b
        l = 0
        while l + 4 <= L:
            w0, w1, w2, w3 = W[k, l], W[k, l + 1], W[k, l + 2], W[k, l + 3]
            c0, c1, c2, c3 = colT[l], colT[l + 1], colT[l + 2], colT[l + 3]
            for v in range(V):
                y[v] += w0 * c0[v] + w1 * c1[v] + w2 * c2[v] + w3 * c3[v]
            l += 4
        while l < L:
            w0 = W[k, l]
            c0 = colT[l]
            for v in range(V):
                y[v] += w0 * c0[v]
            l += 1
