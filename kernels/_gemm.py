"""Serial matrix micro-kernels shared by the convolution kernels (stumpy style: plain @njit workers
that the parallel drivers call once per image or per chunk of images).

gemm_nt(A, B, C, zero):  C[i, j] = sum_l A[i, l] * B[j, l]        A (M, L), B (N, L), C (M, N)
    Both operands are read along contiguous rows, so the reduction over l vectorises; a 4 x 4
    register block reuses every loaded vector 4 times (8 loads per 16 FMAs; 16 accumulators + 8
    operands fit the 32 AVX-512 registers; 4 x 3 measured slower on the conv2 shapes).
rows_axpy(W, colT, bias, Y):  Y[k, :] = bias[k] + sum_l W[k, l] * colT[l, :]
    For tiny reductions (first convolution: C*R*S = 9) where a dot product would not vectorise:
    vectorises over the long pixel axis instead, four taps per pass.

``zero`` is a scalar of the arrays' dtype, so the accumulators keep that dtype.
"""
from numba import njit

from fastcnn.kernels._config import CACHE, FASTMATH


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def _dot(a, b, L, zero):
    s = zero
    for l in range(L):
        s += a[l] * b[l]
    return s


@njit(inline="always", cache=CACHE)
def _zeros16(zero):
    return (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)


@njit(fastmath=FASTMATH, boundscheck=False, inline="always", cache=CACHE)
def _block_4x4(a0, a1, a2, a3, b0, b1, b2, b3, L, acc):
    """The micro-kernel: acc[4p + q] += sum_l a_p[l] * b_q[l] for rows a0..a3 and b0..b3 (8 vector
    loads feed 16 FMAs per step; the 16 accumulators stay in registers)."""
    c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 = acc
    for l in range(L):
        x0, x1, x2, x3 = a0[l], a1[l], a2[l], a3[l]
        y0, y1, y2, y3 = b0[l], b1[l], b2[l], b3[l]
        c00 += x0 * y0
        c01 += x0 * y1
        c02 += x0 * y2
        c03 += x0 * y3
        c10 += x1 * y0
        c11 += x1 * y1
        c12 += x1 * y2
        c13 += x1 * y3
        c20 += x2 * y0
        c21 += x2 * y1
        c22 += x2 * y2
        c23 += x2 * y3
        c30 += x3 * y0
        c31 += x3 * y1
        c32 += x3 * y2
        c33 += x3 * y3
    return (c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33)


@njit(boundscheck=False, inline="always", cache=CACHE)
def _store_4x4(C, i, j, acc):
    for p in range(4):
        for q in range(4):
            C[i + p, j + q] = acc[4 * p + q]


@njit(fastmath=FASTMATH, boundscheck=False, cache=CACHE)
def gemm_nt(A, B, C, zero):
    M, L = A.shape
    N = B.shape[0]
    i = 0
    while i + 4 <= M:
        a0, a1, a2, a3 = A[i], A[i + 1], A[i + 2], A[i + 3]
        j = 0
        while j + 4 <= N:
            b0, b1, b2, b3 = B[j], B[j + 1], B[j + 2], B[j + 3]
            acc = _block_4x4(a0, a1, a2, a3, b0, b1, b2, b3, L, _zeros16(zero))
            _store_4x4(C, i, j, acc)
            j += 4
        for jj in range(j, N):                       # leftover columns of this row block
            for ii in range(i, i + 4):
                C[ii, jj] = _dot(A[ii], B[jj], L, zero)
        i += 4
    for ii in range(i, M):                           # leftover rows
        for jj in range(N):
            C[ii, jj] = _dot(A[ii], B[jj], L, zero)


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
