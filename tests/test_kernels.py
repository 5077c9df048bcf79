"""Agreement tests: every Numba kernel (:mod:`fastcnn.kernels`) against the NumPy reference
(:mod:`fastcnn.reference`), plus determinism and argument validation of the kernels.

* a fixed grid of edge cases per op (batch 1 and batches that do not split into chunks of 4, the
  small (C*R*S < 16) and register-tile paths (stride 1, and other strides on phase planes), the
  general shapes of other networks (LeNet 5x5, 3-channel input, 64->128, stride 2, 1x1, a 7x7
  stride-2 stem), 1x1 / 3x3 / 5x5 / non-square kernels, strides 1, 2, 3 and mixed, padding 0-3
  and padding beyond kernel-1, tiny and odd spatial sizes, K, P*Q and C*R*S off the tile's
  3 x 32 block, for its edge loops), in float32 and float64;
* max-pool inputs full of exact ties (small integers, all-zero windows as after a ReLU, signed
  zeros): the argmax arrays must be identical, not merely close;
* non-contiguous inputs (strided, Fortran-ordered, transposed, offset and reversed views);
* property-based random shapes (hypothesis, derandomized, so the run is seeded and reproducible);
* a few real MNIST training steps on both backends, and bit-identical results run after run and
  across Numba thread counts.

Every tolerance comes from :mod:`fastcnn.testing`; none is written here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import kernels as nb
from fastcnn import reference as ref
from fastcnn.backend import blas_guard
from fastcnn.data import load_dataset, to_float
from fastcnn.kernels import _config, conv_pooled
from fastcnn.kernels._tile import NR_NARROW
from fastcnn.kernels.conv import SMALL_L, forward_route, phase_grid
from fastcnn.testing import assert_agree, training_tolerance

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
HYPOTHESIS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(autouse=True)
def _one_blas_thread(request):
    """Op tests alternate reference calls (BLAS) with kernel calls (Numba's OpenMP pool); with
    BLAS's spinning pool on every core that is ~10x slower (see fastcnn.backend.blas_guard), so
    BLAS gets one thread here. The training tests keep each backend's own threading."""
    if "mnist_batches" in request.fixturenames:
        yield
        return
    with blas_guard("numba"):
        yield


def _seed(*parts):
    """A stable integer seed from ints and strings (Python's str hash is salted per process)."""
    s = 0
    for p in parts:
        for ch in str(p):
            s = (s * 131 + ord(ch)) % (2 ** 32)
    return s


def _bit_identical(actual, expected, what):
    np.testing.assert_array_equal(actual, expected, err_msg=what)
    assert actual.dtype == expected.dtype, what


def _normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv_out(H, W, R, S, stride, padding):
    return (H + 2 * padding[0] - R) // stride[0] + 1, (W + 2 * padding[1] - S) // stride[1] + 1


def _pool_out(H, W, kernel, stride):
    return (H - kernel[0]) // stride[0] + 1, (W - kernel[1]) // stride[1] + 1


def _conv_data(N, C, K, H, W, R, S, stride, padding, dtype, seed):
    rng = np.random.default_rng(seed)
    P, Q = _conv_out(H, W, R, S, stride, padding)
    x = _normal(rng, (N, C, H, W), dtype)
    w = _normal(rng, (K, C, R, S), dtype)
    b = _normal(rng, (K,), dtype)
    dy = _normal(rng, (N, K, P, Q), dtype)
    return x, w, b, dy


def _check_conv(N, C, K, H, W, R, S, stride, padding, dtype, seed):
    """Forward and backward (need_dx True and False) of both backends agree; need_dx=False gives
    None and bit-identical dw, db."""
    x, w, b, dy = _conv_data(N, C, K, H, W, R, S, stride, padding, dtype, seed)
    what = f"N={N} C={C} K={K} H={H} W={W} R={R} S={S} stride={stride} padding={padding} {np.dtype(dtype)}"
    y = nb.conv2d_forward(x, w, b, stride, padding)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding)
    assert y.flags.c_contiguous
    assert_agree(y, y_ref, f"conv2d_forward y [{what}]")

    dx, dw, db = nb.conv2d_backward(dy, x, w, stride, padding)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(dy, x, w, stride, padding)
    for name, got, exp in (("dx", dx, dx_ref), ("dw", dw, dw_ref), ("db", db, db_ref)):
        assert got.flags.c_contiguous, name
        assert_agree(got, exp, f"conv2d_backward {name} [{what}]")

    none, dw2, db2 = nb.conv2d_backward(dy, x, w, stride, padding, need_dx=False)
    assert none is None
    np.testing.assert_array_equal(dw2, dw, err_msg=f"need_dx=False changed dw [{what}]")
    np.testing.assert_array_equal(db2, db, err_msg=f"need_dx=False changed db [{what}]")
    none_ref, dw2_ref, db2_ref = ref.conv2d_backward(dy, x, w, stride, padding, need_dx=False)
    assert none_ref is None
    np.testing.assert_array_equal(dw2_ref, dw_ref)
    np.testing.assert_array_equal(db2_ref, db_ref)


# ------------------------------------------------------------------------- convolution: fixed grid

def _forward_path(N, C, K, H, W, R, S, stride, padding):
    """Which forward kernel runs a convolution, and whether on phase planes (stride > 1)."""
    _, Q = _conv_out(H, W, R, S, stride, padding)
    _, Ws = phase_grid(H, W, stride, padding)
    path = "small" if C * R * S < SMALL_L else f"tile-{forward_route(K, Q, Ws)}"
    return path + ("" if stride == (1, 1) else "-phases")


def _conv_case(N, C, K, H, W, R, S, stride, padding, label):
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    padding = padding if isinstance(padding, tuple) else (padding, padding)
    P, Q = _conv_out(H, W, R, S, stride, padding)
    assert P >= 1 and Q >= 1, label
    path = _forward_path(N, C, K, H, W, R, S, stride, padding)     # in the test id
    cid = (f"{label}-n{N}c{C}k{K}-{H}x{W}-k{R}x{S}-s{stride[0]}{stride[1]}-p{padding[0]}{padding[1]}"
           f"-{path}")
    return pytest.param(N, C, K, H, W, R, S, stride, padding, id=cid)


CONV_GRID = [
    # label, then N, C, K, H, W, R, S, stride, padding
    _conv_case(1, 1, 4, 7, 7, 3, 3, 1, 1, "batch1"),
    _conv_case(1, 3, 8, 9, 11, 3, 3, 3, 0, "batch1-stride3"),
    _conv_case(3, 1, 5, 9, 11, 3, 3, 1, 0, "small-Kodd"),
    _conv_case(5, 1, 3, 8, 8, 3, 3, 1, 1, "small-dx-tile"),            # dx conv: K*R*S = 27, the tile
    _conv_case(5, 4, 7, 7, 10, 3, 3, 1, 1, "K7-PQ70"),
    _conv_case(9, 32, 64, 14, 14, 3, 3, 1, 1, "mnist-conv2"),
    _conv_case(3, 1, 32, 28, 28, 3, 3, 1, 1, "mnist-conv1"),
    _conv_case(3, 40, 6, 5, 5, 1, 1, 1, 0, "1x1-40to6"),
    _conv_case(2, 3, 5, 5, 5, 1, 1, 1, 1, "1x1-pad1-col2im"),
    _conv_case(5, 33, 10, 7, 9, 1, 1, 2, 0, "1x1-stride2"),
    _conv_case(9, 2, 6, 9, 9, 5, 5, 1, 2, "5x5-pad2"),
    _conv_case(3, 1, 5, 11, 13, 5, 5, 3, 2, "5x5-stride3-C1"),
    _conv_case(3, 1, 5, 11, 13, 3, 3, 3, 2, "small-stride3"),
    _conv_case(5, 3, 9, 13, 11, 5, 5, 2, 1, "5x5-stride2"),
    _conv_case(5, 6, 5, 6, 11, 2, 3, (1, 2), (1, 0), "2x3-mixed-stride"),
    _conv_case(3, 2, 5, 8, 7, 2, 3, (2, 1), (0, 2), "2x3-pad-beyond-kernel"),
    _conv_case(9, 7, 12, 9, 11, 3, 3, 2, 1, "stride2-col2im"),
    _conv_case(3, 5, 7, 1, 1, 3, 3, 1, 1, "input1x1"),
    _conv_case(1, 40, 3, 1, 1, 1, 1, 1, 0, "all1x1"),
    _conv_case(5, 4, 3, 3, 5, 3, 3, 1, 0, "input3x5"),
    _conv_case(2, 2, 5, 4, 6, 3, 3, 1, 2, "pad2-3x3"),
    _conv_case(3, 9, 4, 5, 5, 2, 2, 1, 2, "pad2-beyond-2x2"),
    _conv_case(2, 3, 1, 6, 6, 3, 3, 1, 0, "K1"),
    _conv_case(5, 2, 5, 3, 3, 3, 3, 3, 2, "pad-exceeds-input"),
    # the register tile reads windows of the padded image in place (forward, dx and dw; K and
    # C*R*S + 1 off multiples of the tile's 3 rows and 32 columns; few K turn the forward around):
    _conv_case(3, 43, 7, 5, 6, 3, 3, 1, 1, "tile-K7-odd-N-edges"),
    _conv_case(2, 130, 5, 4, 3, 1, 1, 1, 0, "tile-1x1"),
    _conv_case(2, 30, 6, 7, 5, 5, 5, 1, 2, "tile-5x5-pad2"),
    _conv_case(1, 64, 3, 3, 4, 2, 3, 1, (1, 2), "tile-batch1-2x3"),
    _conv_case(2, 5, 48, 6, 6, 3, 3, 1, 1, "dx-tile-K48"),
    _conv_case(5, 16, 11, 9, 7, 3, 3, 1, 1, "dwtiles-K11-N5-odd-grid"),
    _conv_case(3, 16, 7, 6, 5, 1, 1, 1, 0, "dwtiles-tiny-1x1-C16"),   # C*R*S = SMALL_L: the smallest tile forward
    _conv_case(1, 48, 7, 5, 5, 3, 2, 1, (0, 1), "dwtiles-batch1-3x2"),
    _conv_case(6, 32, 9, 13, 11, 1, 1, 1, 0, "dwtiles-1x1"),
    # the general shapes a user builds (small batches: agreement, not speed):
    _conv_case(3, 6, 16, 14, 14, 5, 5, 1, 0, "lenet-5x5-6to16"),
    _conv_case(2, 3, 64, 32, 32, 3, 3, 1, 1, "rgb-3to64-32x32"),
    _conv_case(2, 64, 128, 16, 16, 3, 3, 1, 1, "64to128-16x16"),
    _conv_case(3, 64, 32, 15, 15, 3, 3, 2, 1, "stride2-3x3-odd"),
    _conv_case(2, 64, 48, 16, 16, 1, 1, 1, 0, "1x1-64to48"),
    _conv_case(1, 3, 64, 224, 224, 7, 7, 2, 3, "stem-7x7-s2-224"),
    # other strides run the same kernels on the image's sh*sw phase planes:
    _conv_case(1, 5, 7, 13, 11, 3, 3, 2, 1, "phases-batch1-odd"),
    _conv_case(3, 16, 9, 15, 12, 3, 3, 2, 0, "phases-pad0"),
    _conv_case(2, 7, 11, 17, 14, 7, 7, 3, 3, "phases-7x7-s3-pad3"),
    _conv_case(3, 32, 6, 11, 13, 3, 3, (2, 3), (2, 1), "phases-s2x3"),
    _conv_case(2, 40, 13, 9, 10, 1, 1, 3, 0, "phases-1x1-s3"),
    _conv_case(5, 9, 4, 10, 9, 2, 4, (3, 2), (0, 3), "phases-2x4-s3x2-pad03"),
    _conv_case(1, 48, 5, 6, 7, 5, 5, (2, 1), (2, 2), "phases-batch1-s2x1"),
    # the narrow tile (5 pixels x 16 output channels) for few output channels:
    _conv_case(1, 5, 13, 12, 12, 5, 5, 1, 0, "narrow-batch1-K13"),
    _conv_case(3, 6, 16, 15, 15, 5, 5, 2, 2, "narrow-phases-s2"),
    _conv_case(2, 3, 33, 10, 10, 5, 5, 1, 0, "narrow-K33-3panels"),
    _conv_case(2, 6, 3, 5, 5, 5, 5, 3, 0, "phases-one-output"),
    _conv_case(3, 12, 5, 10, 11, 2, 2, 3, 1, "phases-stride-beyond-kernel"),
    _conv_case(9, 3, 17, 21, 19, 7, 7, 2, 3, "phases-stem-7x7-odd"),
]


def test_narrow_tile_only_for_an_odd_number_of_its_panels():
    """An even number of 16-wide panels fills 32-wide ones exactly, where the faster 3x32 tile must
    win; _forward_narrow relies on it (its result rows then never need CT_PAD)."""
    picked = {(K, Q, Ws) for K in range(1, 300) for Q, Ws in ((10, 14), (14, 16), (100, 102), (1, 3))
              if forward_route(K, Q, Ws) == "narrow"}
    assert picked and all(-(-K // NR_NARROW) % 2 == 1 for K, _, _ in picked)


def test_conv_grid_runs_every_forward_kernel():
    paths = {_forward_path(*case.values) for case in CONV_GRID}
    assert paths >= {"small", "small-phases", "tile-shifted", "tile-narrow", "tile-grid", "tile-shifted-phases",
                     "tile-narrow-phases", "tile-grid-phases"}, paths


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, K, H, W, R, S, stride, padding", CONV_GRID)
def test_conv2d_grid(N, C, K, H, W, R, S, stride, padding, dtype):
    _check_conv(N, C, K, H, W, R, S, stride, padding, dtype,
                seed=_seed(N, C, K, H, W, R, S, stride, padding, np.dtype(dtype)))


# ------------------------------------------------------------- fused convolution + ReLU + max pool

FUSED_POOLS = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 2), (1, 1)), ((1, 2), (1, 3))]


def _check_fused(N, C, K, H, W, R, S, stride, padding, pool, pool_stride, dtype, seed):
    """The Numba fused op equals the Numba conv -> max-pool(relu) composition bit for bit (its
    buffers hold the same values, reduced in the same order), except the gradients of the sparse
    backward (kernels/conv_pooled.py) and of the tiny-reduction one (_backward_small): other sums,
    so to the tolerance; and agrees with the reference."""
    x, w, b, _ = _conv_data(N, C, K, H, W, R, S, stride, padding, dtype, seed)
    P, Q = _conv_out(H, W, R, S, stride, padding)
    what = (f"N={N} C={C} K={K} H={H} W={W} R={R} S={S} stride={stride} padding={padding} pool={pool} "
            f"pool_stride={pool_stride} {np.dtype(dtype)}")
    y, arg = nb.conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool, pool_stride)
    conv = nb.conv2d_forward(x, w, b, stride, padding)
    y_unfused, arg_unfused = nb.maxpool2d_forward(conv, pool, pool_stride, relu=True)
    _bit_identical(y, y_unfused, f"fused y vs unfused [{what}]")
    _bit_identical(arg, arg_unfused, f"fused argmax vs unfused [{what}]")
    y_ref, _ = ref.conv2d_relu_maxpool_forward(x, w, b, stride, padding, pool, pool_stride)
    assert_agree(y, y_ref, f"fused y vs reference [{what}]")

    dy = _normal(np.random.default_rng(seed + 1), y.shape, dtype)
    dx, dw, db = nb.conv2d_relu_maxpool_backward(dy, arg, x, w, stride, padding, pool, pool_stride)
    none, dw_first, db_first = nb.conv2d_relu_maxpool_backward(dy, arg, x, w, stride, padding, pool, pool_stride,
                                                                need_dx=False)
    dconv = nb.maxpool2d_backward(dy, arg, (N, K, P, Q), pool, pool_stride)
    dx_unfused, dw_unfused, db_unfused = nb.conv2d_backward(dconv, x, w, stride, padding)
    assert none is None
    tiny = C * R * S < SMALL_L and pool == pool_stride == (2, 2)          # kernels/fused.py's _backward_small
    sparse_dw = tiny or conv_pooled.sparse_route(C, R, S, pool, pool_stride, np.dtype(dtype).itemsize)
    sparse_dx = not tiny and sparse_dw and conv_pooled.sparse_input_gradient(C, R, S, np.dtype(dtype).itemsize)
    for name, fused, unfused, sparse in (("dx", dx, dx_unfused, sparse_dx), ("dw", dw, dw_unfused, sparse_dw),
                                         ("db", db, db_unfused, sparse_dw)):
        (assert_agree if sparse else _bit_identical)(fused, unfused, f"fused {name} vs unfused [{what}]")
    _bit_identical(dw_first, dw, f"fused dw without dx vs with [{what}]")
    _bit_identical(db_first, db, f"fused db without dx vs with [{what}]")
    # The reference routes dy through the same argmax (near-ties may pick another window element
    # when the convolution sums in another order, so argmax itself is compared only above).
    dx_ref, dw_ref, db_ref = ref.conv2d_relu_maxpool_backward(dy, arg, x, w, stride, padding, pool, pool_stride)
    assert_agree(dx, dx_ref, f"fused dx vs reference [{what}]")
    assert_agree(dw, dw_ref, f"fused dw vs reference [{what}]")
    assert_agree(db, db_ref, f"fused db vs reference [{what}]")


FUSED_GRID = [case for case in CONV_GRID
              if min(_conv_out(*case.values[3:5], *case.values[5:7], *[
                  v if isinstance(v, tuple) else (v, v) for v in case.values[7:9]])) >= 3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, pool_stride", FUSED_POOLS, ids=["2x2s2", "3x3s2", "2x2s1", "1x2s13"])
@pytest.mark.parametrize("N, C, K, H, W, R, S, stride, padding", FUSED_GRID)
def test_conv2d_relu_maxpool_grid(N, C, K, H, W, R, S, stride, padding, pool, pool_stride, dtype):
    _check_fused(N, C, K, H, W, R, S, stride, padding, pool, pool_stride, dtype,
                 seed=_seed("fused", N, C, K, H, W, R, S, stride, padding, pool, pool_stride, np.dtype(dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool, pool_stride", FUSED_POOLS, ids=["2x2s2", "3x3s2", "2x2s1", "1x2s13"])
@pytest.mark.parametrize("N, C, K, H, W, R, S, padding", [
    (1, 32, 64, 14, 14, 3, 3, (1, 1)),      # batch 1, the MNIST network's second layer
    (3, 32, 5, 15, 13, 3, 3, (0, 0)),       # odd sizes: rows and columns no window covers; no padding
    (2, 32, 3, 11, 12, 5, 5, (2, 1)),       # 5x5, uneven padding; a reduction K*R*S of 75
    (2, 32, 33, 9, 9, 1, 1, (0, 0)),        # 1x1, one output channel past a panel
])
def test_fused_backward_builds_dx_from_the_pooled_gradient(N, C, K, H, W, R, S, padding, pool, pool_stride, dtype,
                                                           monkeypatch):
    """Where dx is a stride-1 forward convolution on the NR-channel route, the fused backward never
    calls the pool's backward (the dense gradient is built per image inside the convolution, or
    never, on the sparse route), and its results are the unfused ones (see _check_fused)."""
    from fastcnn.kernels import conv
    assert conv.forward_route(C, W, W + 2 * (S - 1 - padding[1])) == "shifted"
    dense_calls = []
    monkeypatch.setattr(conv, "maxpool2d_backward", lambda *a: dense_calls.append(a))
    _check_fused(N, C, K, H, W, R, S, (1, 1), padding, pool, pool_stride, dtype,
                 seed=_seed("fused-dx", N, C, K, H, W, R, S, padding, pool, pool_stride, np.dtype(dtype)))
    assert not dense_calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, K, H, W, R, S, stride, padding, pool, pool_stride", [
    (16, 32, 64, 14, 14, 3, 3, (1, 1), (1, 1), (2, 2), (2, 2)),   # the MNIST network's second layer
    (1, 32, 64, 14, 14, 3, 3, (1, 1), (1, 1), (2, 2), (2, 2)),    # batch 1
    (5, 32, 7, 15, 13, 3, 3, (1, 1), (0, 0), (2, 2), (2, 2)),     # odd sizes: pixels no window covers
    (3, 32, 9, 13, 12, 3, 3, (2, 2), (1, 1), (2, 2), (2, 2)),     # stride 2
    (3, 64, 5, 10, 11, 3, 3, (1, 1), (2, 1), (3, 3), (2, 2)),     # overlapping windows, wider rows, padding
    (2, 48, 4, 9, 9, 5, 5, (1, 1), (2, 2), (2, 2), (2, 2)),       # 5x5: padded kernel rows
    (4, 24, 40, 10, 10, 3, 3, (1, 1), (1, 1), (2, 2), (2, 2)),    # S*C = 72: padded columns
    (2, 32, 3, 12, 12, 3, 3, (1, 1), (1, 1), (2, 2), (3, 3)),     # gapped windows
])
def test_fused_backward_sparse_route(N, C, K, H, W, R, S, stride, padding, pool, pool_stride, dtype):
    """The layers the sparse backward takes (kernels/conv_pooled.py), dx by it too where its tiles
    fit, on the shapes that stress it; ties (a constant image) route through argmax's first place."""
    itemsize = np.dtype(dtype).itemsize
    assert conv_pooled.sparse_route(C, R, S, pool, pool_stride, itemsize)
    _check_fused(N, C, K, H, W, R, S, stride, padding, pool, pool_stride, dtype,
                 seed=_seed("sparse", N, C, K, H, W, R, S, stride, padding, pool, np.dtype(dtype)))
    x = np.ones((N, C, H, W), dtype)
    w = _normal(np.random.default_rng(3), (K, C, R, S), dtype)
    y, arg = nb.conv2d_relu_maxpool_forward(x, w, np.zeros(K, dtype), stride, padding, pool, pool_stride)
    dy = _normal(np.random.default_rng(4), y.shape, dtype)
    got = nb.conv2d_relu_maxpool_backward(dy, arg, x, w, stride, padding, pool, pool_stride)
    want = ref.conv2d_relu_maxpool_backward(dy, arg, x, w, stride, padding, pool, pool_stride)
    for name, a, e in zip(("dx", "dw", "db"), got, want):
        assert_agree(a, e, f"ties: {name}")


def test_sparse_route_is_taken_by_wide_layers_under_pools_only():
    f32 = 4
    assert conv_pooled.sparse_route(32, 3, 3, (2, 2), (2, 2), f32)          # the MNIST network's second layer
    assert not conv_pooled.sparse_route(1, 3, 3, (2, 2), (2, 2), f32)       # its first: one input channel
    assert not conv_pooled.sparse_route(32, 3, 3, (2, 2), (1, 1), f32)      # every pixel in up to 4 windows
    assert conv_pooled.sparse_input_gradient(32, 3, 3, f32)
    assert not conv_pooled.sparse_input_gradient(48, 5, 5, f32)             # 5 rows: not whole row tiles


def test_conv2d_relu_maxpool_reference_is_the_composition():
    x, w, b, _ = _conv_data(3, 2, 4, 9, 8, 3, 3, (1, 1), (1, 1), np.float64, 7)
    y, arg = ref.conv2d_relu_maxpool_forward(x, w, b, (1, 1), (1, 1), (2, 2), (2, 2))
    y2, arg2 = ref.maxpool2d_forward(ref.conv2d_forward(x, w, b, (1, 1), (1, 1)), (2, 2), (2, 2), relu=True)
    _bit_identical(y, y2, "y")
    _bit_identical(arg, arg2, "argmax")


# ---------------------------------------------------------------------- pooling and ReLU: fixed grid

def _pool_case(N, C, H, W, kernel, stride, label):
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    P, Q = _pool_out(H, W, kernel, stride)
    assert P >= 1 and Q >= 1, label
    return pytest.param(N, C, H, W, kernel, stride,
                        id=f"{label}-n{N}c{C}-{H}x{W}-k{kernel[0]}{kernel[1]}-s{stride[0]}{stride[1]}")


POOL_GRID = [
    _pool_case(2, 3, 5, 5, 1, 1, "k1s1"),
    _pool_case(3, 2, 5, 6, 1, 2, "k1s2"),
    _pool_case(3, 2, 6, 8, 2, 2, "k2s2-even"),
    _pool_case(5, 3, 7, 9, 2, 2, "k2s2-odd-floor"),
    _pool_case(1, 1, 2, 2, 2, 2, "k2s2-tiny-batch1"),
    _pool_case(2, 3, 5, 7, 2, 1, "k2s1-overlap"),
    _pool_case(2, 2, 8, 8, 2, 3, "k2s3-gaps"),
    _pool_case(2, 3, 7, 7, 3, 1, "k3s1-overlap"),
    _pool_case(3, 2, 9, 11, 3, 2, "k3s2-overlap"),
    _pool_case(2, 2, 9, 10, 3, 3, "k3s3"),
    _pool_case(1, 2, 3, 3, 3, 2, "k3-single-window"),
    _pool_case(2, 2, 6, 9, (2, 3), (1, 2), "k23-s12"),
    _pool_case(2, 3, 7, 8, (3, 2), (2, 3), "k32-s23"),
]


def _pool_input(kind, shape, dtype, rng):
    """Pooling inputs; all but 'normal' are full of exact ties."""
    if kind == "normal":
        return _normal(rng, shape, dtype)
    if kind == "ints":                                   # values 0, 1, 2: ties in most windows
        return rng.integers(0, 3, size=shape).astype(dtype)
    if kind == "relu":                                   # as after a ReLU: many all-zero windows
        return np.maximum(_normal(rng, shape, dtype) - dtype(0.8), 0).astype(dtype)
    if kind == "zeros":                                  # every window is one tie
        return np.zeros(shape, dtype)
    if kind == "signed-zeros":                           # -0.0 and +0.0 compare equal: ties
        return np.where(rng.random(shape) < 0.5, -0.0, 0.0).astype(dtype)
    raise ValueError(kind)


POOL_KINDS = ["normal", "ints", "relu", "zeros", "signed-zeros"]


def _check_maxpool(x, kernel, stride, relu, dy_seed, what):
    y, am = nb.maxpool2d_forward(x, kernel, stride, relu=relu)
    y_ref, am_ref = ref.maxpool2d_forward(x, kernel, stride, relu=relu)
    assert am.dtype == np.int32 and am_ref.dtype == np.int32
    np.testing.assert_array_equal(am, am_ref, err_msg=f"maxpool argmax [{what}]")
    # max-pool copies values: exactly equal, not merely close
    np.testing.assert_array_equal(y, y_ref, err_msg=f"maxpool y [{what}]")
    assert y.dtype == x.dtype and y.flags.c_contiguous
    if relu:
        assert np.all(y >= 0)
        np.testing.assert_array_equal(am == -1, y_ref == 0)
    dy = _normal(np.random.default_rng(dy_seed), y.shape, x.dtype)
    dx = nb.maxpool2d_backward(dy, am, x.shape, kernel, stride)
    dx_ref = ref.maxpool2d_backward(dy, am_ref, x.shape, kernel, stride)
    assert dx.flags.c_contiguous
    assert_agree(dx, dx_ref, f"maxpool2d_backward dx [{what}]")
    return y, am, dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "fused-relu"])
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("N, C, H, W, kernel, stride", POOL_GRID)
def test_maxpool2d_grid(N, C, H, W, kernel, stride, kind, relu, dtype):
    seed = _seed(N, C, H, W, kernel, stride, kind, np.dtype(dtype))
    x = _pool_input(kind, (N, C, H, W), dtype, np.random.default_rng(seed))
    what = f"x {x.shape} {kind} kernel={kernel} stride={stride} relu={relu} {np.dtype(dtype)}"
    _check_maxpool(x, kernel, stride, relu, seed + 1, what)


def test_maxpool_fused_relu_matches_separate_relu():
    """maxpool(relu=True) of x == maxpool of relu(x), and its gradient == the gradient through a
    separate ReLU then max-pool (on both backends)."""
    rng = np.random.default_rng(7)
    x = _normal(rng, (3, 4, 9, 8), np.float64)
    x[:, :, :4] = -np.abs(x[:, :, :4])               # whole windows below zero
    dy = _normal(rng, (3, 4, 4, 4), np.float64)
    for ops in (nb, ref):
        y, am = ops.maxpool2d_forward(x, (2, 2), (2, 2), relu=True)
        r = ops.relu_forward(x)
        y2, am2 = ops.maxpool2d_forward(r, (2, 2), (2, 2))
        np.testing.assert_array_equal(y, y2)
        dx = ops.maxpool2d_backward(dy, am, x.shape, (2, 2), (2, 2))
        dx2 = ops.relu_backward(ops.maxpool2d_backward(dy, am2, x.shape, (2, 2), (2, 2)), r)
        np.testing.assert_array_equal(dx, dx2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, H, W, kernel, stride", POOL_GRID)
def test_avgpool2d_grid(N, C, H, W, kernel, stride, dtype):
    rng = np.random.default_rng(_seed(N, C, H, W, kernel, stride, np.dtype(dtype)))
    x = _normal(rng, (N, C, H, W), dtype)
    what = f"x {x.shape} kernel={kernel} stride={stride} {np.dtype(dtype)}"
    y = nb.avgpool2d_forward(x, kernel, stride)
    assert y.flags.c_contiguous
    assert_agree(y, ref.avgpool2d_forward(x, kernel, stride), f"avgpool2d_forward y [{what}]")
    dy = _normal(rng, y.shape, dtype)
    dx = nb.avgpool2d_backward(dy, x.shape, kernel, stride)
    assert dx.flags.c_contiguous
    assert_agree(dx, ref.avgpool2d_backward(dy, x.shape, kernel, stride),
                 f"avgpool2d_backward dx [{what}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (1,), (5, 13), (3, 4, 5, 7), (1, 1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_relu(shape, dtype):
    rng = np.random.default_rng(_seed(shape, np.dtype(dtype)))
    x = rng.integers(-2, 3, size=shape).astype(dtype)   # many exact zeros
    x *= rng.random(shape).astype(dtype) + dtype(0.5)
    x.reshape(-1)[::5] = -0.0
    y = nb.relu_forward(x)
    y_ref = ref.relu_forward(x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(y, y_ref)
    dy = _normal(rng, shape, dtype)
    dx = nb.relu_backward(dy, y)
    assert dx.dtype == x.dtype and dx.flags.c_contiguous
    np.testing.assert_array_equal(dx, ref.relu_backward(dy, y_ref))
    np.testing.assert_array_equal(dx[y == 0], 0)


# ------------------------------------------------------------------------------ non-contiguous inputs

def _view(a, kind):
    """A non-C-contiguous view (where the shape allows) holding the same values as ``a``."""
    if kind == "fortran":
        return np.asfortranarray(a)
    fill = np.nan if a.dtype.kind == "f" else -7                 # poison outside the view
    if kind == "strided":                            # every other element of a bigger array
        big = np.full(tuple(2 * s for s in a.shape), fill, a.dtype)
        v = big[(slice(None, None, 2),) * a.ndim]
    elif kind == "offset":                           # an interior window of a bigger array
        big = np.full(tuple(s + 3 for s in a.shape), fill, a.dtype)
        v = big[tuple(slice(1, 1 + s) for s in a.shape)]
    elif kind == "transposed":                       # last two axes swapped in memory
        if a.ndim < 2:
            return _view(a, "strided")
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
    elif kind == "reversed":                         # negative strides
        v = np.empty_like(a)[(slice(None, None, -1),) * a.ndim]
    else:
        raise ValueError(kind)
    v[...] = a
    return v


VIEW_KINDS = ["strided", "fortran", "transposed", "offset", "reversed"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize("stride, padding", [((1, 1), (1, 1)), ((2, 1), (0, 1)), ((1, 1), (0, 0))],
                         ids=["s1p1", "s21p01", "s1p0-tile"])
def test_conv2d_noncontiguous(stride, padding, kind, dtype):
    C = 4 if padding == (0, 0) else 1                # C*R*S = 36 (tile path) or 9 (small path)
    x, w, b, dy = _conv_data(3, C, 5, 7, 6, 3, 3, stride, padding, dtype, _seed(kind, stride, padding))
    xv, wv, bv, dyv = (_view(a, kind) for a in (x, w, b, dy))
    assert not xv.flags.c_contiguous and not wv.flags.c_contiguous and not dyv.flags.c_contiguous
    for ops in (nb, ref):
        # The kernels copy views to C order first: bit-identical. NumPy's reductions may sum a
        # view in another order than the copy (e.g. db of a Fortran-ordered dy): agreement only.
        same = _bit_identical if ops is nb else assert_agree
        same(ops.conv2d_forward(xv, wv, bv, stride, padding), ops.conv2d_forward(x, w, b, stride, padding),
             f"{ops.NAME} conv2d_forward on a {kind} view")
        for got, exp, name in zip(ops.conv2d_backward(dyv, xv, wv, stride, padding),
                                  ops.conv2d_backward(dy, x, w, stride, padding), ("dx", "dw", "db")):
            same(got, exp, f"{ops.NAME} conv2d_backward {name} on a {kind} view")
    assert_agree(nb.conv2d_forward(xv, wv, bv, stride, padding),
                 ref.conv2d_forward(x, w, b, stride, padding), f"conv2d_forward on a {kind} view")
    for got, exp, name in zip(nb.conv2d_backward(dyv, xv, wv, stride, padding),
                              ref.conv2d_backward(dy, x, w, stride, padding), ("dx", "dw", "db")):
        assert_agree(got, exp, f"conv2d_backward {name} on a {kind} view")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize("kernel, stride", [((2, 2), (2, 2)), ((3, 3), (2, 2))], ids=["k2s2", "k3s2"])
def test_pool_and_relu_noncontiguous(kernel, stride, kind, dtype):
    rng = np.random.default_rng(_seed(kind, kernel, np.dtype(dtype)))
    x = _pool_input("ints", (2, 3, 7, 9), dtype, rng)
    x -= dtype(1)                                     # negatives, zeros and ties
    xv = _view(x, kind)
    P, Q = _pool_out(7, 9, kernel, stride)
    dy = _normal(rng, (2, 3, P, Q), dtype)
    dyv = _view(dy, kind)
    for ops in (nb, ref):
        same = _bit_identical if ops is nb else assert_agree      # see test_conv2d_noncontiguous
        for relu in (False, True):
            y, am = ops.maxpool2d_forward(x, kernel, stride, relu=relu)
            yv, amv = ops.maxpool2d_forward(xv, kernel, stride, relu=relu)
            np.testing.assert_array_equal(yv, y, err_msg=f"{ops.NAME} maxpool on a {kind} view")
            np.testing.assert_array_equal(amv, am, err_msg=f"{ops.NAME} argmax on a {kind} view")
            same(ops.maxpool2d_backward(dyv, _view(am, kind), x.shape, kernel, stride),
                 ops.maxpool2d_backward(dy, am, x.shape, kernel, stride),
                 f"{ops.NAME} maxpool2d_backward on a {kind} view")
        same(ops.avgpool2d_forward(xv, kernel, stride), ops.avgpool2d_forward(x, kernel, stride),
             f"{ops.NAME} avgpool2d_forward on a {kind} view")
        same(ops.avgpool2d_backward(dyv, x.shape, kernel, stride),
             ops.avgpool2d_backward(dy, x.shape, kernel, stride),
             f"{ops.NAME} avgpool2d_backward on a {kind} view")
        y = ops.relu_forward(x)
        np.testing.assert_array_equal(ops.relu_forward(xv), y)
        g = _normal(rng, x.shape, dtype)
        np.testing.assert_array_equal(ops.relu_backward(_view(g, kind), _view(y, kind)),
                                      ops.relu_backward(g, y))
    _check_maxpool(xv, kernel, stride, False, 5, f"{kind} view")


# -------------------------------------------------------------------------- property-based shapes

@st.composite
def conv_problems(draw):
    """A valid convolution problem, drawn constructively (no rejection)."""
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, R - 2 * ph), 12))     # H + 2ph >= R, so P >= 1
    W = draw(st.integers(max(1, S - 2 * pw), 12))
    N = draw(st.integers(1, 6))
    C = draw(st.sampled_from([1, 2, 3, 5, 8]))        # crosses C*R*S = 32 for most kernels
    K = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return N, C, K, H, W, R, S, (sh, sw), (ph, pw), dtype, seed


@HYPOTHESIS
@given(conv_problems())
def test_conv2d_random_shapes(problem):
    _check_conv(*problem)


@HYPOTHESIS
@given(conv_problems(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_conv2d_relu_maxpool_random_shapes(problem, kh, kw, sh, sw):
    N, C, K, H, W, R, S, stride, padding, dtype, seed = problem
    P, Q = _conv_out(H, W, R, S, stride, padding)
    _check_fused(N, C, K, H, W, R, S, stride, padding, (min(kh, P), min(kw, Q)), (sh, sw), dtype, seed)


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    square = draw(st.booleans())                       # favour the common square case
    kw = kh if square else kw
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(kh, 10)), draw(st.integers(kw, 10))
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(POOL_KINDS[:3]))
    relu = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return (N, C, H, W), (kh, kw), (sh, sw), kind, relu, dtype, seed


@HYPOTHESIS
@given(pool_problems())
def test_pool_random_shapes(problem):
    shape, kernel, stride, kind, relu, dtype, seed = problem
    rng = np.random.default_rng(seed)
    x = _pool_input(kind, shape, dtype, rng)
    what = f"x {shape} {kind} kernel={kernel} stride={stride} relu={relu} {np.dtype(dtype)}"
    _check_maxpool(x, kernel, stride, relu, seed + 1, what)
    y = nb.avgpool2d_forward(x, kernel, stride)
    assert_agree(y, ref.avgpool2d_forward(x, kernel, stride), f"avgpool2d_forward [{what}]")
    dy = _normal(rng, y.shape, dtype)
    assert_agree(nb.avgpool2d_backward(dy, shape, kernel, stride),
                 ref.avgpool2d_backward(dy, shape, kernel, stride), f"avgpool2d_backward [{what}]")


# ----------------------------------------------------------------------------------- validation

def test_conv2d_backward_without_output_pixels_is_zero():
    # A 2x2 input under a 3x3 kernel at stride 2 has no output pixel: nothing flows back.
    x, w = np.ones((2, 3, 2, 2), np.float32), np.ones((4, 3, 3, 3), np.float32)
    y = nb.conv2d_forward(x, w, np.zeros(4, np.float32), (2, 2), (0, 0))
    assert y.shape == (2, 4, 0, 0)
    dx, dw, db = nb.conv2d_backward(y, x, w, (2, 2), (0, 0))
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)
    assert not dx.any() and not dw.any() and not db.any()


def test_conv_rejects_mixed_dtypes():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    b = np.zeros(3, np.float32)
    dy = np.zeros((1, 3, 3, 3), np.float32)
    with pytest.raises(TypeError):
        nb.conv2d_forward(x, w.astype(np.float64), b, (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.conv2d_forward(x, w, b.astype(np.float64), (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.conv2d_forward(x.astype(np.float64), w, b, (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.conv2d_backward(dy.astype(np.float64), x, w, (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.conv2d_backward(dy, x, w.astype(np.float64), (1, 1), (0, 0), need_dx=False)


@pytest.mark.parametrize("bad", [np.int32, np.int64, np.float16], ids=lambda t: np.dtype(t).name)
def test_kernels_reject_non_float_input(bad):
    x = np.ones((1, 2, 4, 4), bad)
    w = np.ones((3, 2, 3, 3), bad)
    b = np.ones(3, bad)
    dy = np.ones((1, 3, 2, 2), bad)
    with pytest.raises(TypeError):
        nb.conv2d_forward(x, w, b, (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.conv2d_backward(dy, x, w, (1, 1), (0, 0))
    with pytest.raises(TypeError):
        nb.maxpool2d_forward(x, (2, 2), (2, 2))
    with pytest.raises(TypeError):
        nb.maxpool2d_backward(np.ones((1, 2, 2, 2), bad), np.zeros((1, 2, 2, 2), np.int32),
                              x.shape, (2, 2), (2, 2))
    with pytest.raises(TypeError):
        nb.avgpool2d_forward(x, (2, 2), (2, 2))
    with pytest.raises(TypeError):
        nb.avgpool2d_backward(np.ones((1, 2, 2, 2), bad), x.shape, (2, 2), (2, 2))


# ------------------------------------------------------------------------------------------- loss

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, F, scale", [(1, 1, 1.0), (1, 10, 3.0), (7, 3, 1.0), (128, 10, 5.0), (33, 1000, 2.0),
                                         (5, 4, 1000.0)])
def test_loss_kernel_agrees_with_the_reference(N, F, scale, dtype):
    rng = np.random.default_rng(_seed("loss", N, F))
    logits = (scale * rng.standard_normal((N, F))).astype(dtype)
    labels = rng.integers(0, F, size=N)
    loss, dlogits = nb.softmax_cross_entropy(logits, labels)
    loss_ref, dlogits_ref = ref.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert_agree(np.array(loss, dtype), np.array(loss_ref, dtype), "loss")
    assert_agree(dlogits, dlogits_ref, "dlogits")


def test_loss_kernel_takes_any_integer_labels_and_strided_logits():
    logits = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)[:, ::2]
    labels = np.array([0, 3, 1, 2, 3, 0], np.uint8)
    loss, dlogits = nb.softmax_cross_entropy(logits, labels)
    loss_ref, dlogits_ref = ref.softmax_cross_entropy(logits, labels)
    assert_agree(np.float32(loss), np.float32(loss_ref), "loss")
    assert_agree(dlogits, dlogits_ref, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_kernel_takes_minus_infinity_anywhere_in_a_row(dtype):
    """A -inf logit is a class of probability 0: finite gradients (0 for that class), a finite loss
    unless the label is that class; wherever it is in the row, as the reference."""
    logits = np.array([[-np.inf, 1.0, 2.0], [1.0, -np.inf, 2.0], [0.5, 1.0, -np.inf]], dtype)
    labels = np.array([2, 0, 1])
    loss, dlogits = nb.softmax_cross_entropy(logits, labels)
    loss_ref, dlogits_ref = ref.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert_agree(np.array(loss, dtype), np.array(loss_ref, dtype), "loss")
    assert_agree(dlogits, dlogits_ref, "dlogits")
    assert dlogits[0, 0] == dlogits[1, 1] == dlogits[2, 2] == 0
    assert nb.softmax_cross_entropy(logits[:1], np.array([0]))[0] == np.inf


@pytest.mark.parametrize("impl", [ref.softmax_cross_entropy, nb.softmax_cross_entropy], ids=["reference", "kernel"])
def test_loss_rejects_bad_shapes_and_labels_with_the_same_errors(impl):
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="logits"):
        impl(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        impl(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        impl(logits, np.array([0.0, 1.0, 2.0]))
    for bad in ([0, 1, 4], [0, -1, 2]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
            impl(logits, np.array(bad))


# ------------------------------------------------------------------------------------ determinism

@pytest.fixture
def restore_threads():
    """Restore Numba's thread count after a test that changes it."""
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def _run_ops(x, w, b, dy, dy_pool, stride, padding):
    out = {"conv.y": nb.conv2d_forward(x, w, b, stride, padding)}
    out["conv.dx"], out["conv.dw"], out["conv.db"] = nb.conv2d_backward(dy, x, w, stride, padding)
    _, out["conv.dw(need_dx=False)"], out["conv.db(need_dx=False)"] = nb.conv2d_backward(
        dy, x, w, stride, padding, need_dx=False)
    for relu in (False, True):
        out[f"maxpool.y(relu={relu})"], am = nb.maxpool2d_forward(x, (2, 2), (2, 2), relu=relu)
        out[f"maxpool.argmax(relu={relu})"] = am
        out[f"maxpool.dx(relu={relu})"] = nb.maxpool2d_backward(dy_pool, am, x.shape, (2, 2), (2, 2))
    out["maxpool3s2.y"], am = nb.maxpool2d_forward(x, (3, 3), (2, 2))
    out["avgpool.y"] = nb.avgpool2d_forward(x, (2, 2), (2, 2))
    out["avgpool.dx"] = nb.avgpool2d_backward(dy_pool, x.shape, (2, 2), (2, 2))
    out["relu.y"] = nb.relu_forward(x)
    out["relu.dx"] = nb.relu_backward(x, out["relu.y"])
    out["fused.y"], am = nb.conv2d_relu_maxpool_forward(x, w, b, stride, padding, (2, 2), (2, 2))
    out["fused.argmax"] = am
    dy_fused = np.ascontiguousarray(dy[:, :, :am.shape[2], :am.shape[3]])
    out["fused.dx"], out["fused.dw"], out["fused.db"] = nb.conv2d_relu_maxpool_backward(
        dy_fused, am, x, w, stride, padding, (2, 2), (2, 2))
    return out


THREADS = 2   # compared with 1 thread: the drivers' work split differs, the results must not


def _ran_in_a_two_thread_process(request) -> bool:
    """Where this process's Numba pool has fewer than THREADS threads (NUMBA_NUM_THREADS, one core),
    run the calling test again in a child process with NUMBA_NUM_THREADS=THREADS (Numba allows
    more threads than cores) and assert that it passed; returns True then. Never a silent skip."""
    if numba.config.NUMBA_NUM_THREADS >= THREADS:
        return False
    if os.environ.get("NUMBA_NUM_THREADS") == str(THREADS):
        pytest.fail(f"NUMBA_NUM_THREADS={THREADS} is set but Numba has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    env = {**os.environ, "NUMBA_NUM_THREADS": str(THREADS)}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                          cwd=root, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (f"{request.node.nodeid} with NUMBA_NUM_THREADS={THREADS} failed:\n"
                                  f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    return True


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, K, H, R, stride, padding", [
    pytest.param(16, 32, 64, 14, 3, 1, 1, id="conv2-shape-n16"),
    pytest.param(9, 1, 32, 28, 3, 1, 1, id="conv1-shape-n9"),
    pytest.param(7, 8, 6, 9, 3, 1, 0, id="n7-chunks-uneven"),
    pytest.param(7, 16, 9, 15, 3, 2, 1, id="stride2-phases-n7"),
    pytest.param(5, 5, 11, 16, 7, 2, 3, id="stride2-phases-7x7-n5"),
    pytest.param(5, 6, 16, 14, 5, 1, 0, id="narrow-tile-n5"),
])
def test_kernels_bit_identical_across_thread_counts(N, C, K, H, R, stride, padding, dtype, restore_threads,
                                                    request):
    if _ran_in_a_two_thread_process(request):
        return
    stride, padding = (stride, stride), (padding, padding)
    x, w, b, dy = _conv_data(N, C, K, H, H, R, R, stride, padding, dtype, _seed("threads", N, C))
    dy_pool = _normal(np.random.default_rng(1), (N, C, H // 2, H // 2), dtype)
    many = THREADS
    numba.set_num_threads(1)
    one = _run_ops(x, w, b, dy, dy_pool, stride, padding)
    numba.set_num_threads(many)
    full = _run_ops(x, w, b, dy, dy_pool, stride, padding)
    again = _run_ops(x, w, b, dy, dy_pool, stride, padding)
    differ = [k for k in one if not np.array_equal(one[k], full[k])]
    assert not differ, f"1 thread vs {many} threads: these outputs differ bitwise: {differ}"
    differ = [k for k in full if not np.array_equal(full[k], again[k])]
    assert not differ, f"two runs with {many} threads: these outputs differ bitwise: {differ}"


# --------------------------------------------------------------------------- training on real MNIST

BATCH, STEPS = 64, 3


@pytest.fixture(scope="module")
def mnist_batches(mnist_dir):
    """The first STEPS training batches of real MNIST: uint8 images and int64 labels."""
    ds = load_dataset("mnist", data_dir=mnist_dir, download=False, verify=False)
    n = BATCH * STEPS
    return ds.x_train[:n], ds.y_train[:n]


def _train(backend, dtype, images, labels, fuse=True):
    """STEPS AdamW steps from seed 0; returns the losses and the final parameters."""
    model = fastcnn.mnist_cnn(seed=0, backend=backend, dtype=dtype, fuse=fuse)
    assert isinstance(model.layers[0], fastcnn.ConvReLUMaxPool2D) == fuse     # conv1-relu-pool1 as one op
    opt = fastcnn.AdamW(model, lr=1e-3)
    x = to_float(images, dtype)
    losses = []
    for i in range(STEPS):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        loss, _ = model.train_step(x[sl], labels[sl], opt)
        losses.append(loss)
    return losses, {k: v.copy() for k, v in model.state_arrays().items()}


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_losses_agree_between_backends(mnist_batches, dtype):
    images, labels = mnist_batches
    loss_np, _ = _train("numpy", dtype, images, labels)
    loss_nb, _ = _train("numba", dtype, images, labels)
    rtol = training_tolerance(dtype)
    for step, (a, b) in enumerate(zip(loss_nb, loss_np)):
        assert np.isfinite(a) and np.isfinite(b)
        assert abs(a - b) <= rtol * abs(b), (
            f"step {step}: numba loss {a!r} vs numpy {b!r}: relative difference "
            f"{abs(a - b) / abs(b):.3e} > {rtol:.0e} ({np.dtype(dtype)})")


def test_training_bit_identical_run_after_run(mnist_batches):
    images, labels = mnist_batches
    loss1, params1 = _train("numba", np.float32, images, labels)
    loss2, params2 = _train("numba", np.float32, images, labels)
    assert loss1 == loss2
    for name in params1:
        np.testing.assert_array_equal(params2[name], params1[name], err_msg=name)


def test_fused_model_trains_bit_identically_to_the_unfused_layers(mnist_batches):
    images, labels = mnist_batches
    loss1, params1 = _train("numpy", np.float32, images, labels)
    loss2, params2 = _train("numpy", np.float32, images, labels, fuse=False)
    assert loss1 == loss2
    for name in params1:
        np.testing.assert_array_equal(params2[name], params1[name], err_msg=name)


def test_fused_model_trains_like_the_unfused_layers_on_numba(mnist_batches):
    """On Numba the fused layers' backward sums in its own order (the sparse and tiny-reduction
    routes): the same training to the tolerance between backends, step by step."""
    images, labels = mnist_batches
    fused, _ = _train("numba", np.float32, images, labels)
    unfused, _ = _train("numba", np.float32, images, labels, fuse=False)
    rtol = training_tolerance(np.float32)
    for step, (a, b) in enumerate(zip(fused, unfused)):
        assert np.isfinite(a) and abs(a - b) <= rtol * abs(b), f"step {step}: fused {a!r} vs unfused {b!r}"


def test_batchnorm_between_conv_and_relu_keeps_the_layers_apart():
    model = fastcnn.mnist_cnn(batchnorm=True, backend="numpy")
    assert isinstance(model.layers[0], fastcnn.Conv2D) and isinstance(model.layers[1], fastcnn.BatchNorm2D)
    assert isinstance(model.layers[2], fastcnn.ReLUMaxPool2D)         # ReLU -> pool still fused


def test_training_bit_identical_across_thread_counts(mnist_batches, restore_threads, request):
    if _ran_in_a_two_thread_process(request):
        return
    images, labels = mnist_batches
    numba.set_num_threads(1)
    loss1, params1 = _train("numba", np.float32, images, labels)
    numba.set_num_threads(THREADS)
    loss2, params2 = _train("numba", np.float32, images, labels)
    assert loss1 == loss2, f"losses with 1 thread {loss1} vs {THREADS}: {loss2}"
    for name in params1:
        np.testing.assert_array_equal(params2[name], params1[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# NaN must propagate through ReLU and max-pool exactly as in the reference, so a diverging run
# shows up as a NaN loss instead of being silently clamped or skipped.

@pytest.mark.parametrize("relu", [False, True], ids=["plain", "fused-relu"])
@pytest.mark.parametrize("kernel,stride", [((2, 2), (2, 2)), ((3, 3), (1, 1))], ids=["2x2s2", "3x3s1"])
def test_maxpool_nan_propagates_like_reference(kernel, stride, relu):
    x = np.array([[1.0, np.nan, 0.0, -1.0],
                  [3.0, 0.0, np.nan, -2.0],
                  [-1.0, -2.0, 5.0, 5.0],
                  [-3.0, np.nan, 5.0, 4.0]], np.float32)[None, None]
    y_ref, a_ref = ref.maxpool2d_forward(x, kernel, stride, relu=relu)
    y_nb, a_nb = nb.maxpool2d_forward(x, kernel, stride, relu=relu)
    assert np.isnan(y_ref).any()
    np.testing.assert_array_equal(a_nb, a_ref)
    np.testing.assert_array_equal(y_nb, y_ref)        # assert_array_equal treats NaN == NaN


@pytest.mark.parametrize("pool", [(2, 2), (3, 3)], ids=["2x2s2", "3x3s3"])
def test_fused_first_layer_nan_and_infinity_like_the_unfused_layers(pool):
    """A NaN or an infinity in the image reaches the fused layer's exact fallback: same values
    (NaN where the reference has one) and the same argmax as convolution then max-pool."""
    x = np.random.default_rng(3).standard_normal((2, 1, 12, 12)).astype(np.float32)
    x[0, 0, 3, 4], x[1, 0, 6, 2], x[1, 0, 1, 9] = np.nan, np.inf, -np.inf
    w = np.random.default_rng(4).standard_normal((5, 1, 3, 3)).astype(np.float32)
    b = np.zeros(5, np.float32)
    y, arg = nb.conv2d_relu_maxpool_forward(x, w, b, (1, 1), (1, 1), pool, pool)
    y_unfused, arg_unfused = nb.maxpool2d_forward(nb.conv2d_forward(x, w, b, (1, 1), (1, 1)), pool, pool, relu=True)
    y_ref, arg_ref = ref.conv2d_relu_maxpool_forward(x, w, b, (1, 1), (1, 1), pool, pool)
    assert np.isnan(y_ref).any() and np.isinf(y_ref).any()
    np.testing.assert_array_equal(y, y_unfused)
    np.testing.assert_array_equal(arg, arg_unfused)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))


@pytest.mark.parametrize("N, C, K, H, W, stride, poison", [
    (3, 32, 64, 14, 14, 1, False),        # the MNIST network's second layer, few images: groups per image
    (16, 16, 32, 15, 13, 1, False),       # odd sizes: the last row and column belong to no window
    (2, 8, 64, 17, 16, 2, False),         # stride 2 on phase planes
    (2, 32, 64, 10, 10, 1, True),         # NaN and infinity: the exact fallback
    (4, 16, 32, 12, 12, 1, "ties"),       # small integers: exact ties, the first maximum wins
    (2, 16, 60, 12, 12, 1, False),        # K not a multiple of NR: a partly empty channel panel
])
def test_inner_layer_pools_in_the_convolution_like_the_unfused_kernels(N, C, K, H, W, stride, poison):
    """A long reduction with a 2x2 / stride 2 pool: the convolution pools each result block
    (conv.relu_maxpool_2x2_forward); values and argmax bit for bit those of conv then max-pool."""
    from fastcnn.kernels.conv import relu_maxpool_2x2_forward
    rng = np.random.default_rng(N + C + K + H + W)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / 8).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    if poison == "ties":
        x = rng.integers(-1, 2, x.shape).astype(np.float32)
        w = rng.integers(-1, 2, w.shape).astype(np.float32)
        b = rng.integers(0, 2, b.shape).astype(np.float32)
    elif poison:
        x[0, 3, 2, 2], x[1, 0, 7, 5], x[1, 5, 0, 9] = np.nan, np.inf, -np.inf
    s = (stride, stride)
    assert relu_maxpool_2x2_forward(x, w, b, s, (1, 1)) is not None        # the pooled route is taken
    y, arg = nb.conv2d_relu_maxpool_forward(x, w, b, s, (1, 1), (2, 2), (2, 2))
    y_unfused, arg_unfused = nb.maxpool2d_forward(nb.conv2d_forward(x, w, b, s, (1, 1)), (2, 2), (2, 2), relu=True)
    np.testing.assert_array_equal(y.view(np.int32), y_unfused.view(np.int32))
    np.testing.assert_array_equal(arg, arg_unfused)
    before = numba.get_num_threads()
    try:                                  # few images: several groups of windows per image, any thread count
        numba.set_num_threads(1)
        y1, arg1 = nb.conv2d_relu_maxpool_forward(x, w, b, s, (1, 1), (2, 2), (2, 2))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(y1.view(np.int32), y.view(np.int32))
    np.testing.assert_array_equal(arg1, arg)
    if poison is True:
        assert np.isnan(y).any() and np.isinf(y).any()


def test_relu_nan_propagates_like_reference():
    x = np.array([np.nan, -1.0, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(nb.relu_forward(x), ref.relu_forward(x))
    assert np.isnan(nb.relu_forward(x)[0])


def test_relu_kernel_rejects_integer_and_mixed_dtypes():
    with pytest.raises(TypeError):
        nb.relu_forward(np.arange(4))
    with pytest.raises(TypeError):
        nb.relu_backward(np.ones(4, np.float32), np.ones(4, np.float64))


# ------------------------------------------------------------------------------------------ warm_up

_WARM_UP = ("import numpy as np, fastcnn.kernels as k; calls = []; "
            "k.warm_up(np.float32, on_compile=calls.append); print('on_compile', calls)")


def _cached_env(cache_dir) -> dict:
    """The environment of a process that uses the on-disk cache in ``cache_dir`` (FASTCNN_TILE, which
    turns the cache off, removed)."""
    env = {k: v for k, v in os.environ.items() if k != "FASTCNN_TILE"}
    return {**env, "NUMBA_CACHE_DIR": str(cache_dir), "FASTCNN_NUMBA_CACHE": "1"}


def test_warm_up_announces_compilation_only_on_an_empty_cache(tmp_path):
    """First process on an empty Numba cache: on_compile is called once, with a positive
    estimate, before compiling; a second process loads everything from the cache: not called."""
    env = _cached_env(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", _WARM_UP], env=env, capture_output=True, text=True, check=False)
            for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    cold = runs[0].stdout.strip().splitlines()[-1]
    warm = runs[1].stdout.strip().splitlines()[-1]
    assert cold.startswith("on_compile [") and cold != "on_compile []", cold
    assert float(cold[len("on_compile ["):-1]) > 0, cold
    assert warm == "on_compile []", warm


def test_warm_up_halves_write_disjoint_cache_entries(tmp_path):
    """warm_up compiles its two halves in two processes into one cache: each half, run alone on an
    empty cache, must write the entries of functions the other half never writes (two writers of
    one function's entries can corrupt them, numba issue #4807)."""
    code = "import numpy as np, fastcnn.kernels._warmup as w; w.{}(np.dtype('float32'))"
    procs = {}
    for half in ("convolution_ops", "pooling_ops"):
        env = _cached_env(tmp_path / half)
        procs[half] = subprocess.Popen([sys.executable, "-c", code.format(half)], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cached = {}
    for half, proc in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        cached[half] = {f.name for f in (tmp_path / half).rglob("*.nbi")}
    assert any(name.startswith("conv._forward_shifted") for name in cached["convolution_ops"])
    assert any(name.startswith("fused._forward_small") for name in cached["pooling_ops"])
    assert not cached["convolution_ops"] & cached["pooling_ops"]


def _compile_fresh_function():
    """A real Numba compilation (a new, uncached function each call)."""
    numba.njit(lambda v: v + 1)(1)


def _helper(seconds):
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_compile_split_starts_the_helper_at_the_first_compilation_and_waits_for_it():
    from fastcnn.kernels._warmup import compile_split
    events, helpers = [], []

    def helper():
        events.append("helper")
        helpers.append(_helper(0.2))
        return helpers[-1]

    compile_split(lambda: (_compile_fresh_function(), events.append("first")),
                  lambda: events.append(("second", helpers[0].poll())), helper, lambda: events.append("announce"))
    assert events == ["announce", "helper", "first", ("second", 0)]


def test_compile_split_without_compilation_in_the_first_half_starts_no_helper():
    from fastcnn.kernels._warmup import compile_split
    events = []
    compile_split(lambda: events.append("first"), lambda: (_compile_fresh_function(), events.append("second")),
                  lambda: events.append("helper"), lambda: events.append("announce"))
    assert events == ["first", "announce", "second"]


def test_compile_split_kills_the_helper_when_the_first_half_fails():
    from fastcnn.kernels._warmup import compile_split
    helpers = []

    def first():
        _compile_fresh_function()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compile_split(first, lambda: None, lambda: helpers.append(_helper(60)) or helpers[-1], None)
    assert helpers and helpers[0].returncode not in (None, 0)      # killed, not finished


def test_warm_up_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32 or float64"):
        nb.warm_up(np.int32)


AVX512_HOST = "+64bit,+avx,+avx2,+fma,+avx512f,+avx512vl,+avx512bw,+avx512dq"


def test_tile_rows_follow_the_register_file():
    assert _config.tile_rows("+avx,+avx2,+fma,-avx512f,-avx512vl") == 3
    assert _config.tile_rows(AVX512_HOST) == 6
    assert _config.tile_rows(AVX512_HOST, "3x32") == 3
    assert _config.tile_rows("+avx2", "6x32") == 6
    with pytest.raises(ValueError, match="set FASTCNN_TILE to one of 3x32, 6x32"):
        _config.tile_rows("+avx2", "4x4")


def test_wide_features_only_on_avx512():
    assert _config.wide_features(AVX512_HOST) == AVX512_HOST + ",-prefer-256-bit"
    assert _config.wide_features(AVX512_HOST + ",-prefer-256-bit") is None
    assert _config.wide_features("+avx,+avx2,+fma,-avx512f") is None


def test_the_tile_in_use_is_the_one_chosen_for_the_compiled_features():
    from fastcnn.kernels import _tile
    assert _tile.MR == _config.TILE_ROWS == _config.tile_rows(_config.compiled_features(), _config.TILE_OVERRIDE)
    assert _tile.VECTOR_BYTES == (64 if _tile.MR == 6 else 32)
    # the vector code (an intrinsic), or the checked loop (a Numba function) under NUMBA_BOUNDSCHECK=1
    assert isinstance(_tile.tile, numba.core.registry.CPUDispatcher) == bool(numba.core.config.BOUNDSCHECK)


def _expected_window(C, i0, j0, mr, nr, load, steps, term):
    """C with its mr x nr window at (i0, j0) set to what a tile's definition gives: its old values
    (``load``) or zero, plus term(i, j, l) for every step l."""
    expected = C.copy()
    window = expected[i0:i0 + mr, j0:j0 + nr]
    if not load:
        window[:] = 0
    for i in range(mr):
        for j in range(nr):
            for l in range(steps):
                window[i, j] += term(i, j, l)
    return expected


def _assert_window(C, expected, i0, j0, mr, nr, what):
    """The window agrees with ``expected``; everything outside it is untouched."""
    assert_agree(C, expected, what)
    outside = np.ones(C.shape, bool)
    outside[i0:i0 + mr, j0:j0 + nr] = False
    assert np.array_equal(C[outside], expected[outside])


def _row_callers(mr, vectors, kind):
    from fastcnn.kernels import _tile
    row = (_tile.vector_row_tile if kind == "vector" else _tile.loop_row_tile)(mr, vectors)
    scatter = (_tile.vector_scatter_tile if kind == "vector" else _tile.loop_scatter_tile)(mr, vectors)

    @numba.njit
    def call_row(g, fb, bstarts, boffs, boff, C, i0, j0, load):
        row(g, fb, bstarts, boffs, boff, C, i0, j0, load)

    @numba.njit
    def call_scatter(g, starts, doff, drows, D, fb, boff, brows):
        scatter(g, starts, doff, drows, D, fb, boff, brows)
    return call_row, call_scatter


@pytest.mark.parametrize("kind", ["vector", "loop"])
@pytest.mark.parametrize("mr, vectors", [(3, 6), (3, 4), (1, 2)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("load", [True, False], ids=["accumulate", "overwrite"])
@pytest.mark.parametrize("steps", [0, 1, 29])
def test_row_and_scatter_tiles_against_their_definitions(mr, vectors, dtype, load, steps, kind):
    """The sparse backward's tiles (kernels/_tile.py), vector code and checked loop, against their
    docstrings' loops in NumPy: int32 and strided tables, overlapping rows of D from one step to the
    next (the scatter must read what the previous step wrote), everything else untouched."""
    from fastcnn.kernels._tile import row_tile_width
    nr = row_tile_width(vectors, np.dtype(dtype).itemsize)
    call_row, call_scatter = _TILE_CALLERS.setdefault(("rows", mr, vectors, kind), _row_callers(mr, vectors, kind))
    rng = np.random.default_rng(steps + 7 * mr)
    g = rng.standard_normal(steps + 3).astype(dtype)
    fb = rng.standard_normal(4 * nr + 600).astype(dtype)
    bstarts = rng.integers(0, 300, 2 * steps).astype(np.int32)[::2]
    boffs = np.arange(mr) * (nr + 5)
    boff, i0, j0 = 11, 1, 3
    C = rng.standard_normal((mr + 3, nr + 7)).astype(dtype)
    expected = _expected_window(C, i0, j0, mr, nr, load, steps,
                                lambda i, j, l: g[l] * fb[bstarts[l] + boff + boffs[i] + j])
    call_row(g, fb, bstarts, boffs, boff, C, i0, j0, load)
    _assert_window(C, expected, i0, j0, mr, nr, f"{mr}x{vectors} row tile")

    D = rng.standard_normal(3 * nr + 400).astype(dtype)
    starts = rng.integers(0, 100, steps) // 2 * 2      # repeats and overlaps: steps read each other's writes
    doff, drows, brows = 5, np.arange(mr) * (nr + 3), np.arange(mr) * nr
    expected = D.copy()
    for l in range(steps):
        for i in range(mr):
            for j in range(nr):
                expected[starts[l] + doff + drows[i] + j] += g[l] * fb[boff + brows[i] + j]
    call_scatter(g, starts, doff, drows, D, fb, boff, brows)
    assert_agree(D, expected, f"{mr}x{vectors} scatter tile")


def _tile_caller(mr, nr, kind="vector"):
    from fastcnn.kernels._tile import loop_tile, vector_tile
    tile = (vector_tile if kind == "vector" else loop_tile)(mr, nr)

    @numba.njit
    def call(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load):
        tile(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load)
    return call


_TILE_CALLERS = {}


@pytest.mark.parametrize("kind", ["vector", "loop"])
@pytest.mark.parametrize("shape", [(3, 32), (6, 32), (5, 16)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("load", [True, False], ids=["accumulate", "overwrite"])
@pytest.mark.parametrize("steps", [0, 1, 37])
def test_register_tile_against_its_definition(shape, dtype, load, steps, kind):
    """Every tile shape on any CPU, the vector code and the loop the NUMBA_BOUNDSCHECK=1 run uses,
    against the loop in kernels/_tile.py's docstring written in NumPy: scattered reads through
    int32 and strided index tables, a window of C in the middle of a larger array, everything
    outside the window untouched."""
    mr, nr = shape
    call = _TILE_CALLERS.setdefault((shape, kind), _tile_caller(mr, nr, kind))
    rng = np.random.default_rng(steps)
    fa = rng.standard_normal(500).astype(dtype)
    fb = rng.standard_normal(700).astype(dtype)
    astarts = rng.integers(0, 400, 2 * steps).astype(np.int32)[::2]          # strided view
    aoffs = rng.integers(0, 100, mr)
    bstarts = rng.integers(0, 600, steps)
    boff, i0, j0 = 7, 2, 5
    C = rng.standard_normal((mr + 4, nr + 9)).astype(dtype)
    expected = _expected_window(C, i0, j0, mr, nr, load, steps,
                                lambda i, j, l: fa[astarts[l] + aoffs[i]] * fb[bstarts[l] + boff + j])
    call(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load)
    _assert_window(C, expected, i0, j0, mr, nr, f"{mr}x{nr} tile")


def test_register_tile_refuses_operands_it_cannot_read_as_vectors():
    from fastcnn.kernels._tile import VECTOR_BYTES
    call = _tile_caller(3, 32)
    a, t = np.zeros(100, np.float32), np.zeros(3, np.int64)
    C = np.zeros((3, 64), np.float32)
    with pytest.raises(numba.core.errors.TypingError, match="fb must be a C-contiguous 1-d float array"):
        call(a, t, t, a[::2], t, 0, C, 0, 0, True)
    with pytest.raises(numba.core.errors.TypingError, match="C's dtype"):
        call(a, t, t, a, t, 0, np.zeros((3, 32), np.float64), 0, 0, True)
    with pytest.raises(numba.core.errors.TypingError, match="load must be a bool"):
        call(a, t, t, a, t, 0, C, 0, 0, 1)
    with pytest.raises(numba.core.errors.TypingError, match="i0 must be an integer"):
        call(a, t, t, a, t, 0, C, 0.0, 0, True)
    lanes = VECTOR_BYTES // 4
    with pytest.raises(numba.core.errors.TypingError, match=f"not a whole number of {lanes}-lane vectors"):
        _tile_caller(3, lanes + lanes // 2)(a, t, t, a, t, 0, C, 0, 0, True)


# A process that believes its CPU has AVX-512 (nothing is compiled, so nothing runs that this CPU lacks).
_FAKE_AVX512 = f"""
import numba.core.codegen as cg
cg.get_host_cpu_features = lambda: {AVX512_HOST!r}
{{before}}
import fastcnn, fastcnn.kernels
from fastcnn.kernels import _config as c
from numba.core import config
print(c._target_built(), not config.CPU_FEATURES, end=" ")     # importing changed nothing
{{call}}
print(c.wide_vectors_in_use(), c.TILE_ROWS, c.compiled_features().endswith(",-prefer-256-bit"))
"""
_WIDEN = "from fastcnn._process import tune_process; tune_process()"


@pytest.mark.parametrize("before, call, env, expected", [
    ("", "", {}, "False True False 6 False"),
    ("", _WIDEN, {}, "False True True 6 True"),
    ("", _WIDEN, {"FASTCNN_WIDE_VECTORS": "0"}, "False True False 6 False"),
    ("", _WIDEN, {"NUMBA_CPU_FEATURES": AVX512_HOST}, "False False False 6 False"),
    ("from numba.core.registry import cpu_target; cpu_target.target_context", _WIDEN, {}, "True True False 6 False"),
    ("", _WIDEN, {"FASTCNN_TILE": "3x32"}, "False True True 3 True"),
])
def test_512_bit_vectors_on_avx512_only_when_a_command_asks(before, call, env, expected):
    """Importing fastcnn leaves Numba's target alone. On an AVX-512 CPU the commands' process setup
    builds it with 512-bit vectors preferred, except when turned off, when NUMBA_CPU_FEATURES is the
    user's, or when Numba's target already exists; the tile follows the CPU's register file."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("FASTCNN_WIDE_VECTORS", "NUMBA_CPU_FEATURES", "FASTCNN_TILE")}
    proc = subprocess.run([sys.executable, "-c", _FAKE_AVX512.format(before=before, call=call)], env={**base, **env},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == expected
