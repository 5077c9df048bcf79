"""warm_up(model): the kernel calls come from the model's own layers, and only their kernels compile."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn.kernels._warmup import model_plan, optimizer_plan, split_plan
from fastcnn.layers import Flatten, Linear
from fastcnn.model import Sequential


def test_mnist_plan_lists_the_training_steps_kernel_calls():
    plan = model_plan(fastcnn.mnist_cnn(dtype=np.float32, backend="numba"))
    ops = [call[0] for call in plan]
    assert ops == ["all_finite", "conv2d_relu_maxpool_forward", "conv2d_relu_maxpool_forward", "dropout_linear_forward",
                   "softmax_cross_entropy", "count_correct", "dropout_linear_backward",
                   "conv2d_relu_maxpool_backward", "conv2d_relu_maxpool_backward"]
    tile, rest = split_plan(plan)
    assert tile == [plan[0], plan[2], plan[4], plan[5], plan[7]]   # the second layer's, and the step's own ops
    assert ("array", (2, 32, 14, 14), "float32") in plan[2][1]          # conv2's input, two images
    assert plan[1] in rest and plan[8] in rest   # the first layer's: the tiny-reduction route, no tile


def test_tiny_reduction_calls_stay_together():
    """The first layer's fused forward and backward (a tiny reduction) compile in the helper; a call
    on the tile's side that may reach a tiny-reduction driver (a backward asked for dx, a plain
    convolution of a tiny reduction, an input gradient that is a tiny forward) takes them all with
    it: they share pad_chw and rows_axpy."""
    from fastcnn.layers import Conv2D, Flatten, Linear, MaxPool2D, ReLU
    from fastcnn.model import Sequential
    plan = model_plan(fastcnn.mnist_cnn(dtype=np.float32, backend="numba"))
    first_forward, first_backward = plan[1], plan[8]
    with_dx = (first_backward[0], first_backward[1], (("need_dx", True),))
    tile, rest = split_plan(plan + [with_dx])
    assert {with_dx, first_forward, first_backward} <= set(tile)
    plain = ("conv2d_forward", first_forward[1][:5], ())
    tile, rest = split_plan(plan + [plain])
    assert {plain, first_forward, first_backward} <= set(tile)
    for pool in (MaxPool2D(2), MaxPool2D(3, 2)):         # then a 1x1 convolution: its dx is a tiny forward
        model = Sequential([Conv2D(1, 8, 3, padding=1), ReLU(), pool, Conv2D(8, 4, 1), ReLU(), Flatten(),
                            Linear(4 * 14 * 14 if pool.kernel_size == (2, 2) else 4 * 13 * 13, 10)],
                           input_shape=(1, 28, 28), backend="numba")
        tile, rest = split_plan(model_plan(model))
        convs = [c for c in tile + rest if c[0].startswith("conv2d")]
        assert all(c in tile for c in convs), [c[0] for c in convs if c not in tile]


def test_max_pools_join_a_fused_layer_on_the_tiles_side():
    """A fused forward with a long reduction, or a fused backward, may fall back to the max-pool
    kernels: a lone max-pool's forward or backward then compiles in the same process, never in both."""
    model = fastcnn.mnist_cnn(batchnorm=True, backend="numba")        # conv -> BN -> ReLU -> pool
    plan = model_plan(model)
    conv2 = next(c for c in plan if c[0] == "conv2d_forward" and c[1][1][1] == (64, 32, 3, 3))
    fused = ("conv2d_relu_maxpool_forward", conv2[1], ())
    tile, rest = split_plan(plan + [fused])
    assert "maxpool2d_forward" in [c[0] for c in tile] and "maxpool2d_forward" not in [c[0] for c in rest]
    tile, rest = split_plan(plan)                                       # no fused forward: pools stay apart
    assert "maxpool2d_forward" in [c[0] for c in rest]
    assert "maxpool2d_backward" in [c[0] for c in rest]
    tile, rest = split_plan(plan + [("conv2d_relu_maxpool_backward", (), ())])   # the same for the backwards
    assert "maxpool2d_backward" in [c[0] for c in tile] and "maxpool2d_backward" not in [c[0] for c in rest]


def test_batchnorm_network_plans_an_unfused_first_convolution():
    ops = [c[0] for c in model_plan(fastcnn.mnist_cnn(batchnorm=True, backend="numba"))]
    assert "conv2d_relu_maxpool_forward" not in ops and ops.count("conv2d_forward") == 2


def test_plan_needs_an_input_shape():
    model = Sequential([Flatten(), Linear(4, 2)])
    with pytest.raises(ValueError, match="input_shape"):
        model_plan(model)
    assert [c[0] for c in model_plan(model, input_shape=(1, 2, 2))] == [
        "all_finite", "linear_forward", "softmax_cross_entropy", "count_correct", "linear_backward"]


def test_optimizer_plan_names_the_step_kernel():
    assert optimizer_plan("sgd", np.float64)[0][0] == "optim.sgd_step"
    assert optimizer_plan(None, np.float32) == []
    with pytest.raises(ValueError, match="adamw"):
        optimizer_plan("lbfgs", np.float32)


def test_warm_up_of_a_model_compiles_only_its_layers_kernels(tmp_path):
    code = ("import fastcnn.kernels as k; from fastcnn.model import Sequential; "
            "from fastcnn.layers import ReLU, AvgPool2D; "
            "k.warm_up(Sequential([ReLU(), AvgPool2D(2)], input_shape=(2, 8, 8), backend='numba'), optimizer=None)")
    env = {k: v for k, v in os.environ.items() if k != "FASTCNN_TILE"}
    env.update(NUMBA_CACHE_DIR=str(tmp_path), FASTCNN_NUMBA_CACHE="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = {f.name for f in tmp_path.rglob("*.nbi")}
    assert any(n.startswith("activation._relu_forward") for n in cached), cached
    assert any(n.startswith("pool._avgpool_backward") for n in cached), cached
    assert not any(n.startswith(("conv.", "fused.", "pool._maxpool", "optim.")) for n in cached), cached


def test_warm_up_rejects_what_is_neither_a_model_nor_a_float_dtype():
    from fastcnn.kernels import warm_up
    with pytest.raises(TypeError, match="float32 or float64"):
        warm_up("not a dtype")
    with pytest.raises(TypeError, match="float32 or float64"):
        warm_up(np.int32)
