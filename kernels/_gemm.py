"""rows_axpy(W, colT, bias, Y):  Y[k, :] = bias[k] + sum_l W[k, l] * colT[l, :]

For tiny reductions (the first convolution: C*R*S = 9), where the register tile (kernels/_tile.py)
would spend more time loading and storing its accumulators than multiplying: vectorises over the
long pixel axis instead, four taps and four output rows per pass (one row per pass: 5.3 against
4.5 us for the first layer's 32 x 9 x 784 on the 2-core Zen 5). A serial worker that the parallel
drivers call once per image (stumpy style).
"""
from numba import njit

from fastcnn.kernels._config import CACHE, FASTMATH


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def rows_axpy(W, colT, bias, Y):
    K, L = W.shape
    V = colT.shape[1]
    k = 0
    while k + 4 <= K:                     # four rows of Y per pass: each colT vector loaded once for four
        y0, y1, y2, y3 = Y[k], Y[k + 1], Y[k + 2], Y[k + 3]
        b0, b1, b2, b3 = bias[k], bias[k + 1], bias[k + 2], bias[k + 3]
        for v in range(V):
            y0[v] = b0
            y1[v] = b1
            y2[v] = b2
            y3[v] = b3
        l = 0
        while l + 4 <= L:
            c0, c1, c2, c3 = colT[l], colT[l + 1], colT[l + 2], colT[l + 3]
            w00, w01, w02, w03 = W[k, l], W[k, l + 1], W[k, l + 2], W[k, l + 3]
            w10, w11, w12, w13 = W[k + 1, l], W[k + 1, l + 1], W[k + 1, l + 2], W[k + 1, l + 3]
            w20, w21, w22, w23 = W[k + 2, l], W[k + 2, l + 1], W[k + 2, l + 2], W[k + 2, l + 3]
            w30, w31, w32, w33 = W[k + 3, l], W[k + 3, l + 1], W[k + 3, l + 2], W[k + 3, l + 3]
            for v in range(V):
                a0, a1, a2, a3 = c0[v], c1[v], c2[v], c3[v]
                y0[v] += w00 * a0 + w01 * a1 + w02 * a2 + w03 * a3
                y1[v] += w10 * a0 + w11 * a1 + w12 * a2 + w13 * a3
                y2[v] += w20 * a0 + w21 * a1 + w22 * a2 + w23 * a3
                y3[v] += w30 * a0 + w31 * a1 + w32 * a2 + w33 * a3
            l += 4
        while l < L:
            c0 = colT[l]
            w00, w10, w20, w30 = W[k, l], W[k + 1, l], W[k + 2, l], W[k + 3, l]
            for v in range(V):
                a0 = c0[v]
                y0[v] += w00 * a0
                y1[v] += w10 * a0
                y2[v] += w20 * a0
                y3[v] += w30 * a0
            l += 1
        k += 4
    for k in range(K - K % 4, K):
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
