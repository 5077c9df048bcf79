"""2-D convolution (cross-correlation, as in every deep-learning library), NumPy reference.

Dimension legend (used in every shape comment of fastcnn):
    N batch, C input channels, H, W input height/width,
    K output channels, R, S kernel height/width, P, Q output height/width,
    sh, sw stride, ph, pw zero padding;  P = (H + 2ph - R) // sh + 1,  Q = (W + 2pw - S) // sw + 1.

Forward:   y[n,k,p,q]  = b[k] + sum_{c,r,s} w[k,c,r,s] * xpad[n, c, p*sh + r, q*sw + s]
Backward:  dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xpad[n, c, p*sh + r, q*sw + s]
           db[k]       = sum_{n,p,q} dy[n,k,p,q]
           dxpad[n, c, p*sh + r, q*sw + s] += sum_k dy[n,k,p,q] * w[k,c,r,s]   (then crop the padding)
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x, R, S, stride, padding):
    """Strided view of every receptive field: (N, C, H, W) -> (N, C, P, Q, R, S). No copy."""
    (sh, sw), (ph, pw) = stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(x, (R, S), axis=(2, 3))[:, :, ::sh, ::sw]


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """x (N,C,H,W), w (K,C,R,S), b (K,) -> y (N,K,P,Q)."""
    K, C, R, S = w.shape
    win = _windows(x, R, S, stride, padding)                        # (N, C, P, Q, R, S) view
    # tensordot copies the windows into an im2col matrix (N*P*Q, C*R*S) and does one matmul.
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))           # (N, P, Q, K)
    y += b
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))            # (N, K, P, Q)


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx=True):
    """dy (N,K,P,Q), x (N,C,H,W), w (K,C,R,S) -> (dx (N,C,H,W) or None, dw (K,C,R,S), db (K,))."""
    K, C, R, S = w.shape
    N, _, H, W = x.shape
    (sh, sw), (ph, pw) = stride, padding
    win = _windows(x, R, S, stride, padding)                        # (N, C, P, Q, R, S) view
    P, Q = win.shape[2], win.shape[3]
    dw = np.tensordot(dy, win, axes=([0, 2, 3], [0, 2, 3]))         # (K, C, R, S)
    db = dy.sum(axis=(0, 2, 3))                                     # (K,)
    if not need_dx:
        return None, dw.astype(w.dtype, copy=False), db
    dcols = np.tensordot(dy, w, axes=([1], [0]))                    # (N, P, Q, C, R, S)
    dcols = dcols.transpose(0, 3, 4, 5, 1, 2)                       # (N, C, R, S, P, Q)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    for r in range(R):                                              # col2im: one strided add per
        for s in range(S):                                          # kernel offset, not per pixel
            dxp[:, :, r:r + sh * P:sh, s:s + sw * Q:sw] += dcols[:, :, r, s]
    dx = dxp[:, :, ph:ph + H, pw:pw + W]
    return np.ascontiguousarray(dx), dw.astype(w.dtype, copy=False), db
