"""Gradient tests on the NumPy reference backend ("numpy").

* every layer's backward (and the loss) against central finite differences in float64, through
  the scalar objective L = sum(y * G) with a fixed random G (so dL/dy = G);
* the reference ops against naive explicit-loop implementations written here (conv forward and
  backward, max/avg pooling, ReLU), including max-pool ties: the argmax is the FIRST maximum in
  row-major order and backward routes the whole gradient to it;
* a whole small Sequential (conv -> relu -> maxpool -> flatten -> linear + loss).

Every tolerance comes from :mod:`fastcnn.testing`; none is written here.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import reference as ref
from fastcnn.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    ConvReLUMaxPool2D,
    Dropout,
    Flatten,
    Linear,
    MaxPool2D,
    ReLU,
    ReLUMaxPool2D,
)
from fastcnn.losses import softmax_cross_entropy
from fastcnn.model import Sequential
from fastcnn.testing import assert_agree, assert_formula_close, assert_gradient_close, numerical_gradient

F64 = np.float64
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def _rng(*parts):
    """A generator seeded stably from ints and strings (str hash is salted per process)."""
    s = 0
    for p in parts:
        for ch in str(p):
            s = (s * 131 + ord(ch)) % (2 ** 32)
    return np.random.default_rng(s)


def _distinct(shape, rng, offset=0.0):
    """Values without ties (a random permutation, spaced 0.1 apart, far above the FD step), none
    equal to zero when offset centres them: safe inputs for finite differences through max/ReLU."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - offset * n + 0.5) * 0.1).reshape(shape).astype(F64)


def _away_from_zero(shape, rng):
    """Random values with |x| >= 0.1, so no finite-difference step crosses a ReLU kink."""
    return np.sign(rng.standard_normal(shape)) * (0.1 + np.abs(rng.standard_normal(shape)))


def check_layer(layer, x, rng, *, training=True, what="layer"):
    """Gradient-check ``layer`` at ``x`` through L = sum(layer(x) * G): dx (unless backward
    returns None) and every parameter gradient. Returns (dx, grads) for further checks."""
    y = layer.forward(x, training)
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G.copy())
    grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}

    def objective():
        return float(np.sum(layer.forward(x, training) * G))

    if dx is not None:
        assert dx.shape == x.shape and dx.dtype == x.dtype
        assert_gradient_close(dx, numerical_gradient(objective, x), f"{what}: dx")
    for name, p in layer.params.items():
        assert grads[name].shape == p.shape
        assert_gradient_close(grads[name], numerical_gradient(objective, p), f"{what}: d{name}")
    return dx, grads


# ------------------------------------------------------------------------------ naive references

def _out_size(H, W, R, S, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1


def naive_conv2d(x, w, b, stride, padding):
    """Cross-correlation with explicit loops; out-of-range (padding) positions contribute zero."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = _out_size(H, W, R, S, stride, padding)
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    acc = float(b[k])
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                i, j = p * sh + r - ph, q * sw + s - pw
                                if 0 <= i < H and 0 <= j < W:
                                    acc += float(x[n, c, i, j]) * float(w[k, c, r, s])
                    y[n, k, p, q] = acc
    return y.astype(x.dtype)


def naive_conv2d_backward(dy, x, w, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = dy.shape[2], dy.shape[3]
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(K)
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    g = float(dy[n, k, p, q])
                    db[k] += g
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                i, j = p * sh + r - ph, q * sw + s - pw
                                if 0 <= i < H and 0 <= j < W:
                                    dw[k, c, r, s] += g * float(x[n, c, i, j])
                                    dx[n, c, i, j] += g * float(w[k, c, r, s])
    return dx.astype(x.dtype), dw.astype(x.dtype), db.astype(x.dtype)


def naive_maxpool2d(x, kernel_size, stride):
    """(y, argmax): argmax is the flat offset r*kw + s of the FIRST maximum in row-major order."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    P, Q = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = np.zeros((N, C, P, Q), dtype=x.dtype)
    am = np.zeros((N, C, P, Q), dtype=np.int32)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    best, best_idx = x[n, c, p * sh, q * sw], 0
                    for r in range(kh):
                        for s in range(kw):
                            v = x[n, c, p * sh + r, q * sw + s]
                            if v > best:                 # strict: a later tie never wins
                                best, best_idx = v, r * kw + s
                    y[n, c, p, q], am[n, c, p, q] = best, best_idx
    return y, am


def naive_maxpool2d_backward(dy, argmax, x_shape, kernel_size, stride):
    (_, kw), (sh, sw) = kernel_size, stride
    dx = np.zeros(x_shape)
    N, C, P, Q = dy.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    a = int(argmax[n, c, p, q])
                    if a >= 0:
                        dx[n, c, p * sh + a // kw, q * sw + a % kw] += float(dy[n, c, p, q])
    return dx.astype(dy.dtype)


def naive_avgpool2d(x, kernel_size, stride):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    P, Q = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    acc = 0.0
                    for r in range(kh):
                        for s in range(kw):
                            acc += float(x[n, c, p * sh + r, q * sw + s])
                    y[n, c, p, q] = acc / (kh * kw)
    return y.astype(x.dtype)


def naive_avgpool2d_backward(dy, x_shape, kernel_size, stride):
    (kh, kw), (sh, sw) = kernel_size, stride
    dx = np.zeros(x_shape)
    N, C, P, Q = dy.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    for r in range(kh):
                        for s in range(kw):
                            dx[n, c, p * sh + r, q * sw + s] += float(dy[n, c, p, q]) / (kh * kw)
    return dx.astype(dy.dtype)


def _check_result(actual, expected, what):
    """Reference op result vs naive: same shape/dtype, C-contiguous new array, agreeing values."""
    assert isinstance(actual, np.ndarray) and actual.flags.c_contiguous, what
    assert_agree(actual, expected, what)


# ------------------------------------------------------------------- reference ops vs naive loops

# (N, C, H, W, K, kernel (R, S), stride, padding)
CONV_CASES = [
    pytest.param(1, 1, 5, 7, 2, (3, 3), (1, 1), (0, 0), id="batch1-odd-5x7"),
    pytest.param(2, 3, 5, 7, 4, (3, 3), (2, 2), (1, 1), id="stride2-pad1"),
    pytest.param(2, 2, 6, 5, 3, (1, 1), (1, 1), (0, 0), id="1x1"),
    pytest.param(1, 2, 7, 6, 3, (2, 3), (2, 1), (2, 2), id="nonsquare-pad2"),
    pytest.param(2, 2, 5, 6, 2, (3, 2), (1, 2), (2, 0), id="mixed-stride-pad"),
    pytest.param(1, 1, 7, 7, 2, (2, 2), (3, 3), (0, 0), id="stride-gt-kernel"),
    pytest.param(1, 2, 2, 3, 2, (3, 3), (1, 1), (1, 1), id="tiny-padded"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,K,ks,stride,padding", CONV_CASES)
def test_conv2d_reference_matches_naive(N, C, H, W, K, ks, stride, padding, dtype):
    rng = _rng("conv-naive", N, C, H, W, K, ks, stride, padding)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C) + ks).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    y = ref.conv2d_forward(x, w, b, stride, padding)
    _check_result(y, naive_conv2d(x, w, b, stride, padding), "conv2d_forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = ref.conv2d_backward(dy, x, w, stride, padding)
    ndx, ndw, ndb = naive_conv2d_backward(dy, x, w, stride, padding)
    _check_result(dx, ndx, "conv2d_backward dx")
    _check_result(dw, ndw, "conv2d_backward dw")
    _check_result(db, ndb, "conv2d_backward db")
    none, dw2, db2 = ref.conv2d_backward(dy, x, w, stride, padding, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_conv2d_reference_non_contiguous_inputs():
    """The contract allows non-contiguous views as inputs."""
    rng = _rng("conv-views")
    base = rng.standard_normal((2, 6, 9, 8))
    x = base[:, ::2, ::-1, 1:]                                        # (2, 3, 9, 7), strided view
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 2)))
    b = rng.standard_normal(8)[::2]
    stride, padding = (2, 1), (1, 0)
    y = ref.conv2d_forward(x, w, b, stride, padding)
    _check_result(y, naive_conv2d(x, w, b, stride, padding), "conv2d_forward (views)")
    dy = rng.standard_normal((y.shape[3], y.shape[2], y.shape[1], y.shape[0])).T  # non-contiguous
    dx, dw, db = ref.conv2d_backward(dy, x, w, stride, padding)
    for got, exp, what in zip((dx, dw, db), naive_conv2d_backward(dy, x, w, stride, padding),
                              ("dx", "dw", "db")):
        _check_result(got, exp, f"conv2d_backward (views) {what}")


# (N, C, H, W, kernel, stride)
POOL_CASES = [
    pytest.param(1, 1, 4, 4, (2, 2), (2, 2), id="batch1-2x2"),
    pytest.param(2, 3, 5, 7, (2, 2), (2, 2), id="odd-floor"),
    pytest.param(2, 2, 7, 7, (3, 3), (2, 2), id="overlap-k3s2"),
    pytest.param(1, 2, 6, 5, (2, 3), (1, 2), id="nonsquare"),
    pytest.param(1, 1, 8, 7, (2, 2), (3, 3), id="stride-gt-kernel"),
    pytest.param(2, 1, 3, 4, (1, 1), (1, 1), id="1x1"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_maxpool2d_reference_matches_naive(N, C, H, W, ks, stride, dtype):
    rng = _rng("maxpool-naive", N, C, H, W, ks, stride)
    for x in (rng.standard_normal((N, C, H, W)).astype(dtype),                # (almost) no ties
              rng.integers(-1, 2, size=(N, C, H, W)).astype(dtype)):          # many ties
        y, am = ref.maxpool2d_forward(x, ks, stride)
        ny, nam = naive_maxpool2d(x, ks, stride)
        assert am.dtype == np.int32 and y.dtype == x.dtype
        np.testing.assert_array_equal(am, nam)                               # exact: first maximum
        np.testing.assert_array_equal(y, ny)                                 # a max is exact
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = ref.maxpool2d_backward(dy, am, x.shape, ks, stride)
        _check_result(dx, naive_maxpool2d_backward(dy, nam, x.shape, ks, stride), "maxpool dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_maxpool2d_fused_relu_matches_naive(N, C, H, W, ks, stride, dtype):
    """relu=True equals maxpool(relu(x)) with the ReLU's gradient mask; windows whose maximum is
    <= 0 get argmax -1 and pass no gradient (integer inputs give all-negative and all-zero windows)."""
    rng = _rng("maxpool-relu", N, C, H, W, ks, stride)
    x = rng.integers(-2, 2, size=(N, C, H, W)).astype(dtype)
    y, am = ref.maxpool2d_forward(x, ks, stride, relu=True)
    ny, nam = naive_maxpool2d(np.maximum(x, 0), ks, stride)
    np.testing.assert_array_equal(y, ny)
    xmax, xam = naive_maxpool2d(x, ks, stride)
    np.testing.assert_array_equal(am, np.where(xmax > 0, xam, -1).astype(np.int32))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ref.maxpool2d_backward(dy, am, x.shape, ks, stride)
    expected = naive_maxpool2d_backward(dy, nam, x.shape, ks, stride) * (x > 0)  # pool, then ReLU mask
    _check_result(dx, expected.astype(dtype), "fused maxpool dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_avgpool2d_reference_matches_naive(N, C, H, W, ks, stride, dtype):
    rng = _rng("avgpool-naive", N, C, H, W, ks, stride)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    y = ref.avgpool2d_forward(x, ks, stride)
    _check_result(y, naive_avgpool2d(x, ks, stride), "avgpool forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ref.avgpool2d_backward(dy, x.shape, ks, stride)
    _check_result(dx, naive_avgpool2d_backward(dy, x.shape, ks, stride), "avgpool dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_reference_matches_naive(dtype):
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.5], [0.5, -1e-30, 7.0, -7.0, 0.0]], dtype=dtype)
    dy = np.arange(1, 11, dtype=dtype).reshape(2, 5)
    y = ref.relu_forward(x)
    naive_y = np.array([[v if v > 0 else 0 for v in row] for row in x.tolist()], dtype=dtype)
    np.testing.assert_array_equal(y, naive_y)
    dx = ref.relu_backward(dy, y)
    naive_dx = np.array([[g if v > 0 else 0 for g, v in zip(gr, xr)]
                         for gr, xr in zip(dy.tolist(), x.tolist())], dtype=dtype)
    np.testing.assert_array_equal(dx, naive_dx)
    assert y.dtype == dx.dtype == dtype


# --------------------------------------------------------------------------------- max-pool ties

@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool_ties_first_maximum_hand_made(dtype):
    """Hand-made 2x2 windows with ties: the first maximum in row-major order wins."""
    x = np.array([[[[1, 5, 0, 0, 3, 3],
                    [5, 5, 3, 3, 3, 3]]]], dtype=dtype)          # windows: [[1,5],[5,5]] ->1,
    y, am = ref.maxpool2d_forward(x, (2, 2), (2, 2))             # [[0,0],[3,3]] ->2, all 3s ->0
    np.testing.assert_array_equal(am, np.array([[[[1, 2, 0]]]], dtype=np.int32))
    np.testing.assert_array_equal(y, np.array([[[[5, 3, 3]]]], dtype=dtype))
    dy = np.array([[[[10, 20, 30]]]], dtype=dtype)
    dx = ref.maxpool2d_backward(dy, am, x.shape, (2, 2), (2, 2))
    np.testing.assert_array_equal(dx, np.array([[[[0, 10, 0, 0, 30, 0],
                                                   [0, 0, 20, 0, 0, 0]]]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ks,stride,shape", [((2, 2), (2, 2), (2, 3, 4, 6)),
                                             ((3, 3), (2, 2), (1, 2, 7, 7)),
                                             ((2, 3), (1, 1), (1, 1, 3, 5))])
def test_maxpool_all_zero_windows_route_to_offset_zero(ks, stride, shape, dtype):
    """An all-zero input (every window a tie, as after a ReLU) sends each window's whole gradient
    to its offset 0 (top-left), through the op and through the MaxPool2D layer."""
    x = np.zeros(shape, dtype=dtype)
    y, am = ref.maxpool2d_forward(x, ks, stride)
    assert not am.any()
    rng = _rng("zeros", ks, stride, shape)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = np.zeros(shape)
    P, Q = y.shape[2:]
    for p in range(P):
        for q in range(Q):
            expected[:, :, p * stride[0], q * stride[1]] += dy[:, :, p, q]
    expected = expected.astype(dtype)
    _check_result(ref.maxpool2d_backward(dy, am, shape, ks, stride), expected, "op dx")
    layer = MaxPool2D(ks, stride, backend="numpy")
    np.testing.assert_array_equal(layer.forward(x), y)
    _check_result(layer.backward(dy), expected, "layer dx")


# ------------------------------------------------------------------------ layer gradient checks

@pytest.mark.parametrize("N,C,H,W,K,ks,stride,padding", CONV_CASES)
def test_conv2d_gradients(N, C, H, W, K, ks, stride, padding):
    rng = _rng("conv-grad", N, C, H, W, K, ks, stride, padding)
    layer = Conv2D(C, K, ks, stride, padding, rng=rng, dtype=F64, backend="numpy")
    layer.params["bias"][...] = rng.standard_normal(K)
    x = rng.standard_normal((N, C, H, W))
    dx, grads = check_layer(layer, x, rng, what=f"Conv2D {layer!r}")

    # need_input_grad=False: backward returns None, dw and db unchanged.
    G = rng.standard_normal(layer.forward(x, training=True).shape)
    assert layer.backward(G) is not None
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.need_input_grad = False
    layer.forward(x, training=True)
    assert layer.backward(G) is None
    np.testing.assert_array_equal(layer.grads["weight"], full["weight"])
    np.testing.assert_array_equal(layer.grads["bias"], full["bias"])


def test_conv2d_no_input_grad_still_correct_by_fd():
    """need_input_grad=False (first layer of a Sequential): dw and db still match FD."""
    rng = _rng("conv-noinput")
    layer = Conv2D(2, 3, (3, 2), stride=2, padding=1, rng=rng, dtype=F64, backend="numpy")
    layer.need_input_grad = False
    dx, _ = check_layer(layer, rng.standard_normal((2, 2, 5, 7)), rng, what="Conv2D no dx")
    assert dx is None


@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_maxpool2d_gradients(N, C, H, W, ks, stride):
    rng = _rng("maxpool-grad", N, C, H, W, ks, stride)
    layer = MaxPool2D(ks, stride, backend="numpy")
    check_layer(layer, _distinct((N, C, H, W), rng), rng, what=f"{layer!r}")


@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_maxpool2d_fused_relu_gradients(N, C, H, W, ks, stride):
    rng = _rng("maxpool-relu-grad", N, C, H, W, ks, stride)
    layer = ReLUMaxPool2D(ReLU(backend="numpy"), MaxPool2D(ks, stride, backend="numpy"))
    x = _distinct((N, C, H, W), rng, offset=0.5)                 # half negative, none zero
    check_layer(layer, x, rng, what=f"{layer!r}")


@pytest.mark.parametrize("N,C,H,W,ks,stride", POOL_CASES)
def test_avgpool2d_gradients(N, C, H, W, ks, stride):
    rng = _rng("avgpool-grad", N, C, H, W, ks, stride)
    layer = AvgPool2D(ks, stride, backend="numpy")
    check_layer(layer, rng.standard_normal((N, C, H, W)), rng, what=f"{layer!r}")


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (2, 3, 5, 7), (4, 9)])
def test_relu_gradients(shape):
    rng = _rng("relu-grad", shape)
    dx, _ = check_layer(ReLU(backend="numpy"), _away_from_zero(shape, rng), rng, what="ReLU")


@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (3, 2, 5, 1), (2, 7)])
def test_flatten_gradients(shape):
    rng = _rng("flatten-grad", shape)
    layer = Flatten()
    x = rng.standard_normal(shape)
    assert layer.forward(x).shape == (shape[0], int(np.prod(shape[1:])))
    check_layer(layer, x, rng, what="Flatten")


@pytest.mark.parametrize("N,fin,fout", [(1, 5, 3), (4, 7, 2), (3, 1, 1)])
def test_linear_gradients(N, fin, fout):
    rng = _rng("linear-grad", N, fin, fout)
    layer = Linear(fin, fout, rng=rng, dtype=F64)
    layer.params["bias"][...] = rng.standard_normal(fout)
    check_layer(layer, rng.standard_normal((N, fin)), rng, what=f"{layer!r}")


@pytest.mark.parametrize("shape", [(1, 2, 3, 4), (3, 2, 4, 5), (4, 3, 1, 1), (2, 1, 5, 7)])
def test_batchnorm2d_train_gradients(shape):
    rng = _rng("bn-grad", shape)
    layer = BatchNorm2D(shape[1], dtype=F64)
    layer.params["weight"][...] = 1.0 + 0.5 * rng.standard_normal(shape[1])
    layer.params["bias"][...] = rng.standard_normal(shape[1])
    x = 2.0 + 3.0 * rng.standard_normal(shape)                        # mean and scale not (0, 1)
    check_layer(layer, x, rng, training=True, what=f"BatchNorm2D train {shape}")


def test_batchnorm2d_backward_after_eval_forward_is_not_stale():
    """backward after an eval-mode forward must not silently reuse the last training batch's
    statistics: it either raises or returns the eval-mode gradient (which FD checks here)."""
    rng = _rng("bn-eval")
    layer = BatchNorm2D(2, dtype=F64)
    layer.forward(rng.standard_normal((2, 2, 3, 3)), training=True)   # same shape: no crash to
    layer.buffers["running_mean"][...] = [0.5, -1.0]                   # give a stale cache away
    layer.buffers["running_var"][...] = [2.0, 0.25]
    x = rng.standard_normal((2, 2, 3, 3))
    try:
        check_layer(layer, x, rng, training=False, what="BatchNorm2D eval")
    except RuntimeError:
        pass                                                           # refusing is fine too


def _dropout_setup(p, seed, shape):
    rng = _rng("dropout-grad", p, seed, shape)
    layer = Dropout(p, rng=np.random.default_rng(seed))
    x = _away_from_zero(shape, rng)
    G = rng.standard_normal(shape)

    def forward():                                   # the same mask every call: re-seed the rng
        layer.rng = np.random.default_rng(seed)
        return layer.forward(x, training=True)
    return layer, x, G, forward


@pytest.mark.parametrize("p", [0.3, 0.5, 0.8])
def test_dropout_gradients_with_fixed_mask(p):
    layer, x, G, forward = _dropout_setup(p, seed=7, shape=(4, 3, 5))
    y = forward()
    dx = layer.backward(G.copy())
    numeric = numerical_gradient(lambda: float(np.sum(forward() * G)), x)
    assert_gradient_close(dx, numeric, f"Dropout(p={p}) dx")

    kept = y != 0
    assert 0 < kept.sum() < kept.size, "the mask must drop some elements and keep others"
    # Same linear map forwards and backwards: y / x == dx / G elementwise.
    assert_formula_close(dx, G * (y / x), "backward applies the forward's mask and scale")
    # The check above would catch a backward that ignores the mask or the 1/(1-p) scale.
    with pytest.raises(AssertionError):
        assert_gradient_close(G, numeric, "backward ignoring the mask")
    with pytest.raises(AssertionError):
        assert_gradient_close(G * kept, numeric, "backward ignoring the 1/(1-p) scale")


def test_dropout_eval_backward_is_identity():
    layer, x, G, _ = _dropout_setup(0.5, seed=3, shape=(3, 4))
    layer.forward(x, training=True)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(G), G)


# ------------------------------------------------------------------------------------------ loss

@pytest.mark.parametrize("N,F", [(1, 4), (3, 5), (6, 10)])
def test_softmax_cross_entropy_gradient(N, F):
    rng = _rng("xent", N, F)
    logits = 3.0 * rng.standard_normal((N, F))
    labels = rng.integers(0, F, size=N)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    assert dlogits.shape == logits.shape and dlogits.dtype == logits.dtype
    numeric = numerical_gradient(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    assert_gradient_close(dlogits, numeric, "dlogits")
    assert_formula_close(dlogits.sum(axis=1), np.zeros(N), "dlogits rows sum to zero")


def test_softmax_cross_entropy_huge_logits_gradient():
    """Logits around 1000 (exp overflows without the max shift): finite loss, FD-correct gradient."""
    rng = _rng("xent-huge")
    logits = 1000.0 + rng.standard_normal((3, 4))
    logits[1] -= 2000.0                                              # a row around -1000
    labels = np.array([0, 3, 2])
    loss, dlogits = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    numeric = numerical_gradient(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    assert_gradient_close(dlogits, numeric, "dlogits at |logits| ~ 1000")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits_exact(dtype):
    """Confidently wrong and confidently right at +-1000 (and 1e4): exact, finite results."""
    logits = np.array([[1000.0, -1000.0], [1e4, -1e4]], dtype=dtype)
    loss, dlogits = softmax_cross_entropy(logits, np.array([1, 0]))
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits)) and dlogits.dtype == dtype
    assert_formula_close(loss, (2000.0 + 0.0) / 2, "loss")           # -log softmax: 2000 and 0
    assert_formula_close(dlogits.astype(F64), np.array([[0.5, -0.5], [0.0, 0.0]]), "dlogits")


# ------------------------------------------------------------------------------- whole network

def _small_net(rng, *, fuse, two_convs=False):
    layers = [Conv2D(2, 3, 3, padding=1, rng=rng, dtype=F64, backend="numpy"), ReLU(backend="numpy")]
    if two_convs:
        layers += [Conv2D(3, 3, (3, 2), padding=(1, 0), rng=rng, dtype=F64, backend="numpy"),
                   ReLU(backend="numpy")]
    width = 6 if two_convs else 7
    layers += [MaxPool2D(2, backend="numpy"), Flatten(),
               Linear(3 * 3 * (width // 2), 4, rng=rng, dtype=F64)]
    for layer in layers:
        if "bias" in layer.params:
            layer.params["bias"][...] = 0.1 * rng.standard_normal(layer.params["bias"].shape)
    return Sequential(layers, backend="numpy", fuse=fuse)


@pytest.mark.parametrize("two_convs", [False, True], ids=["conv-relu-pool-linear", "two-convs"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_sequential_gradients(fuse, two_convs):
    """Loss gradient of conv -> relu -> [conv -> relu ->] maxpool -> flatten -> linear w.r.t. the
    first conv's weight and bias and the linear weight (the two-conv net passes through a dx)."""
    rng = _rng("seq", two_convs)                                     # same net fused and unfused
    model = _small_net(rng, fuse=fuse, two_convs=two_convs)
    x = rng.standard_normal((2, 2, 6, 7))
    labels = np.array([1, 3])

    def loss():
        return softmax_cross_entropy(model.forward(x, training=True), labels)[0]

    _, dlogits = softmax_cross_entropy(model.forward(x, training=True), labels)
    assert model.backward(dlogits) is None                           # first layer skips dx
    conv, linear = model.layers[0], model.layers[-1]
    analytic = {k: v.copy() for k, v in conv.grads.items()}
    analytic_lin = linear.grads["weight"].copy()
    assert_gradient_close(analytic["weight"], numerical_gradient(loss, conv.params["weight"]), "conv dw")
    assert_gradient_close(analytic["bias"], numerical_gradient(loss, conv.params["bias"]), "conv db")
    assert_gradient_close(analytic_lin, numerical_gradient(loss, linear.params["weight"]), "linear dw")


def test_sequential_fused_and_unfused_agree():
    rng_a, rng_b = _rng("seq-fuse"), _rng("seq-fuse")
    fused, plain = _small_net(rng_a, fuse=True, two_convs=True), _small_net(rng_b, fuse=False, two_convs=True)
    inner = fused.layers[2]                                # the second conv, its ReLU and the pool
    assert isinstance(inner, ConvReLUMaxPool2D) and inner.conv.need_input_grad
    assert isinstance(plain.layers[4], MaxPool2D)
    x = _rng("seq-fuse-x").standard_normal((3, 2, 6, 7))
    labels = np.array([0, 1, 2])
    for model in (fused, plain):
        _, d = softmax_cross_entropy(model.forward(x, training=True), labels)
        model.backward(d)
    np.testing.assert_array_equal(fused.forward(x), plain.forward(x))
    for (name, _, ga), (_, _, gb) in zip(fused.named_parameters(), plain.named_parameters()):
        assert_agree(ga, gb, name)
