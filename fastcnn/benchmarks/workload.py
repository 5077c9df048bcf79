"""What the benchmarks measure: the network's op shapes (derived from the model), a general shape set,
the FLOPs and minimal bytes of each op, and one small class per kind of op case.

Only the multiply-adds of convolutions and the linear layer are counted as FLOPs (the usual
convention); pooling, ReLU, the loss and the optimizer are memory-bound and counted as free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fastcnn import reference
from fastcnn.convmath import conv_flops, conv_output_size, pool_output_size
from fastcnn.layers import AvgPool2D, Conv2D, Linear, MaxPool2D
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.testing import assert_agree
from fastcnn.train import TrainConfig

BATCH_SIZE = TrainConfig.batch_size               # the workload is fastcnn-train's default run
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
BATCHES_PER_EPOCH = math.ceil(TRAIN_IMAGES / BATCH_SIZE)      # the last batch holds 96 images
EVAL_BATCH_SIZE = TrainConfig.eval_batch_size
IMAGE_SHAPE = (1, 28, 28)


# ------------------------------------------------------------------------------------ shapes

@dataclass(frozen=True)
class ConvShape:
    """One convolution: x (N,C,H,W), w (K,C,R,S)."""
    layer: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int = 3
    S: int = 3
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)

    @property
    def out_size(self) -> tuple[int, int]:
        return conv_output_size(self.H, self.W, self.R, self.S, self.stride, self.padding)

    @property
    def x_shape(self) -> tuple:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple:
        return (self.K, self.C, self.R, self.S)

    @property
    def y_shape(self) -> tuple:
        return (self.N, self.K, *self.out_size)

    @property
    def flops(self) -> int:
        """FLOPs of one pass (forward, backward-input or backward-weight)."""
        return conv_flops(self.N, self.C, self.H, self.W, self.K, self.R, self.S, self.stride, self.padding)

    def describe(self) -> str:
        sh, sw = self.stride
        ph, pw = self.padding
        return (f"{self.C}->{self.K} {self.R}x{self.S} at {self.H}x{self.W}, stride {sh}"
                f"{'' if sh == sw else 'x' + str(sw)}, pad {ph}{'' if ph == pw else 'x' + str(pw)}, batch {self.N}")


@dataclass(frozen=True)
class FusedShape(ConvShape):
    """A first layer as the model runs it: conv, ReLU and max-pool in one op; FLOPs are the conv's."""
    pool: tuple = (2, 2)
    pool_stride: tuple = (2, 2)

    @property
    def pooled_shape(self) -> tuple:
        P, Q = self.out_size
        return (self.N, self.K, *pool_output_size(P, Q, self.pool, self.pool_stride))


@dataclass(frozen=True)
class PoolShape:
    """One max-pool with the preceding ReLU fused, as the model runs it: x (N,C,H,W)."""
    layer: str
    N: int
    C: int
    H: int
    W: int
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)

    @property
    def x_shape(self) -> tuple:
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self) -> tuple:
        return (self.N, self.C, *pool_output_size(self.H, self.W, self.kernel, self.stride))


def pool_forward_bytes(N: int, C: int, H: int, W: int, kernel=2, stride=None, itemsize: int = 4) -> int:
    """Bytes a max-pool forward moves at least: read x, write y and the int32 argmax."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (H * W * itemsize + P * Q * (itemsize + 4))


def pool_backward_bytes(N: int, C: int, H: int, W: int, kernel=2, stride=None, itemsize: int = 4) -> int:
    """Bytes a max-pool backward moves at least: read dy and argmax, write dx."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (P * Q * (itemsize + 4) + H * W * itemsize)


# ------------------------------------------------------------------------ the network's shapes

def walk_layers(model: Sequential, image_shape: tuple = IMAGE_SHAPE) -> list[dict]:
    """Follow one image through ``model``: per convolution, pool and linear layer (fused layers
    expanded), its index in ``model.layers``, the layer, and its input shape (C, H, W) or features."""
    C, H, W = image_shape
    out = []
    for index, layer in enumerate(model.unfused_layers()):
        if isinstance(layer, Conv2D):
            out.append({"index": index, "kind": "conv", "layer": layer, "input": (C, H, W)})
            H, W = layer.output_shape(H, W)
            C = layer.out_channels
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            out.append({"index": index, "kind": "pool", "layer": layer, "input": (C, H, W),
                        "max": isinstance(layer, MaxPool2D)})
            H, W = pool_output_size(H, W, layer.kernel_size, layer.stride)
        elif isinstance(layer, Linear):
            out.append({"index": index, "kind": "linear", "layer": layer, "input": (layer.in_features,)})
    return out


def network_flops(model: Sequential | None = None, image_shape: tuple = IMAGE_SHAPE) -> dict:
    """FLOPs per image of ``model`` (default: :func:`fastcnn.model.mnist_cnn`).

    Returns ``{"train": ..., "eval": ..., "layers": [...]}``. Training counts, per conv, forward +
    backward-weight + backward-input unless the layer needs no input gradient (the first one);
    per linear layer forward + dW + dx. Evaluation counts the forward passes only."""
    model = mnist_cnn(backend="numpy") if model is None else model
    layers, train, evaluate = [], 0, 0
    for entry in walk_layers(model, image_shape):
        layer = entry["layer"]
        if entry["kind"] == "conv":
            C, H, W = entry["input"]
            fwd = conv_flops(1, C, H, W, layer.out_channels, *layer.kernel_size, layer.stride, layer.padding)
            passes = 2 + (1 if getattr(layer, "need_input_grad", bool(layers)) else 0)
        elif entry["kind"] == "linear":
            fwd = 2 * layer.in_features * layer.out_features
            passes = 3
        else:
            continue
        layers.append({"index": entry["index"], "layer": repr(layer), "forward": fwd, "train": passes * fwd})
        train += passes * fwd
        evaluate += fwd
    return {"train": train, "eval": evaluate, "layers": layers}


def network_budget(model: Sequential | None = None) -> dict:
    """The network's FLOP budget: per image, per 60,000-image epoch and per 10,000-image test set."""
    f = network_flops(model)
    return {"train_flops_per_image": f["train"], "eval_flops_per_image": f["eval"],
            "epoch_flops": f["train"] * TRAIN_IMAGES, "test_set_flops": f["eval"] * TEST_IMAGES,
            "layers": f["layers"]}


def network_shapes(batch: int = BATCH_SIZE, model: Sequential | None = None,
                   image_shape: tuple = IMAGE_SHAPE) -> dict:
    """The conv and pool shapes of ``model`` (default: the MNIST network) at batch ``batch``, in
    network order, named conv1, pool1, conv2, ..."""
    model = mnist_cnn(backend="numpy") if model is None else model
    shapes, counts = {}, {"conv": 0, "pool": 0}
    for entry in walk_layers(model, image_shape):
        kind, layer = entry["kind"], entry["layer"]
        if kind == "linear":
            continue
        counts[kind] += 1
        name = f"{kind}{counts[kind]}"
        C, H, W = entry["input"]
        if kind == "conv":
            R, S = layer.kernel_size
            shapes[name] = ConvShape(name, batch, C, H, W, layer.out_channels, R, S, layer.stride, layer.padding)
        elif entry["max"]:
            shapes[name] = PoolShape(name, batch, C, H, W, layer.kernel_size, layer.stride)
    return shapes


# --------------------------------------------------------------------------------- op cases

def _normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _conv_arrays(shape: ConvShape, rng, dtype) -> tuple:
    x = _normal(rng, shape.x_shape, dtype)
    w = _normal(rng, shape.w_shape, dtype, math.sqrt(2.0 / (shape.C * shape.R * shape.S)))
    return x, w


class OpCase:
    """One benchmarked op at one shape: its inputs, its call through a backend's op contract, its
    check against the NumPy reference and its work. Subclasses say what differs per kind of op."""
    kind = ""
    unit = "GFLOP/s"
    results: tuple = ()

    def __init__(self, shape, *, layer: str | None = None, note: str = "", dtype=np.float32,
                 group: str = "network"):
        self.shape = shape
        self.layer = layer or shape.layer
        self.note = note
        self.dtype = np.dtype(dtype)
        self.group = group                  # "network" or "general"

    @property
    def name(self) -> str:
        return f"{self.layer} {self.kind}"

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")

    @property
    def is_flops(self) -> bool:
        return self.unit == "GFLOP/s"

    @property
    def work(self) -> int:
        """FLOPs (``unit == "GFLOP/s"``) or bytes (``"GB/s"``) per call."""
        raise NotImplementedError

    def min_bytes(self) -> int:
        """Bytes the op must move at least (each input read and each output written once)."""
        raise NotImplementedError

    @property
    def intensity(self) -> float:
        """FLOPs per byte at the least traffic (the roofline's x axis); 0 for memory-bound ops."""
        return self.work / self.min_bytes() if self.is_flops else 0.0

    def make_inputs(self, seed: int = 0) -> dict:
        raise NotImplementedError

    def run(self, ops, inputs: dict) -> tuple:
        """Call the op through ``ops`` (a backend module); returns a tuple of result arrays."""
        raise NotImplementedError

    def torch_call(self, torch, tensors: dict):
        """A function computing the same results with PyTorch (``tensors``: the inputs as tensors),
        or None when PyTorch has no single call for this op."""
        return

    def check(self, result: tuple, expected: tuple) -> None:
        """Raise AssertionError unless ``result`` agrees with the reference's ``expected``
        (floats within :func:`fastcnn.testing.assert_agree`, integer argmax exactly)."""
        if len(result) != len(expected):
            raise AssertionError(f"{self.name}: {len(result)} results, reference has {len(expected)}")
        for what, got, want in zip(self.results, result, expected):
            what = f"{self.name}: {what}"
            if np.issubdtype(np.asarray(want).dtype, np.integer):
                if np.shape(got) != np.shape(want) or not np.array_equal(got, want):
                    raise AssertionError(f"{what} differs from the reference")
            else:
                assert_agree(got, want, what)

    def rate(self, seconds: float | None) -> float | None:
        """GFLOP/s or GB/s at ``seconds`` per call."""
        return self.work / seconds / 1e9 if seconds and seconds > 0 else None


class _ConvCase(OpCase):
    @property
    def work(self) -> int:
        return self.shape.flops

    def _sizes(self) -> dict:
        s, isz = self.shape, self.dtype.itemsize
        return {"x": math.prod(s.x_shape) * isz, "w": math.prod(s.w_shape) * isz,
                "y": math.prod(s.y_shape) * isz, "b": s.K * isz}


class ConvForward(_ConvCase):
    kind = "forward"
    results = ("y",)

    def min_bytes(self) -> int:
        b = self._sizes()
        return b["x"] + b["w"] + b["b"] + b["y"]

    def make_inputs(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        x, w = _conv_arrays(self.shape, rng, self.dtype)
        return {"x": x, "w": w, "b": _normal(rng, (self.shape.K,), self.dtype, 0.1)}

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return (ops.conv2d_forward(inputs["x"], inputs["w"], inputs["b"], s.stride, s.padding),)

    def torch_call(self, torch, t: dict):
        s, F = self.shape, torch.nn.functional
        return lambda: (F.conv2d(t["x"], t["w"], t["b"], s.stride, s.padding),)


class ConvBackwardWeight(_ConvCase):
    kind = "backward-weight"
    results = ("dw", "db")

    def min_bytes(self) -> int:
        b = self._sizes()
        return b["y"] + b["x"] + b["w"] + b["b"]

    def make_inputs(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        x, w = _conv_arrays(self.shape, rng, self.dtype)
        return {"dy": _normal(rng, self.shape.y_shape, self.dtype), "x": x, "w": w}

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        _, dw, db = ops.conv2d_backward(inputs["dy"], inputs["x"], inputs["w"], s.stride, s.padding,
                                        need_dx=False)
        return (dw, db)

    def torch_call(self, torch, t: dict):
        s, grad = self.shape, torch.nn.grad
        return lambda: (grad.conv2d_weight(t["x"], s.w_shape, t["dy"], s.stride, s.padding),
                        t["dy"].sum(dim=(0, 2, 3)))


class ConvBackwardInputWeight(ConvBackwardWeight):
    """dx, dw and db in one call: the op contract computes dx only together with dw."""
    kind = "backward-input+weight"
    results = ("dx", "dw", "db")

    @property
    def work(self) -> int:
        return 2 * self.shape.flops

    def min_bytes(self) -> int:
        return super().min_bytes() + self._sizes()["x"]

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return tuple(ops.conv2d_backward(inputs["dy"], inputs["x"], inputs["w"], s.stride, s.padding,
                                         need_dx=True))

    def torch_call(self, torch, t: dict):
        s, grad = self.shape, torch.nn.grad
        return lambda: (grad.conv2d_input(s.x_shape, t["w"], t["dy"], s.stride, s.padding),
                        grad.conv2d_weight(t["x"], s.w_shape, t["dy"], s.stride, s.padding),
                        t["dy"].sum(dim=(0, 2, 3)))


class _PoolCase(OpCase):
    """A max-pool pass: memory-bound, so its work is the bytes it must move (``count_bytes``)."""
    unit = "GB/s"
    count_bytes = staticmethod(pool_forward_bytes)

    @property
    def work(self) -> int:
        s = self.shape
        return self.count_bytes(s.N, s.C, s.H, s.W, s.kernel, s.stride, self.dtype.itemsize)

    def min_bytes(self) -> int:
        return self.work


class PoolForward(_PoolCase):
    kind = "forward"
    results = ("y", "argmax")

    def make_inputs(self, seed: int = 0) -> dict:
        return {"x": _normal(np.random.default_rng(seed), self.shape.x_shape, self.dtype)}

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return tuple(ops.maxpool2d_forward(inputs["x"], s.kernel, s.stride, relu=True))


class PoolBackward(_PoolCase):
    kind = "backward"
    results = ("dx",)
    count_bytes = staticmethod(pool_backward_bytes)

    def make_inputs(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        s = self.shape
        _, argmax = reference.maxpool2d_forward(_normal(rng, s.x_shape, self.dtype), s.kernel, s.stride, relu=True)
        return {"dy": _normal(rng, s.y_shape, self.dtype), "argmax": argmax}

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return (ops.maxpool2d_backward(inputs["dy"], inputs["argmax"], s.x_shape, s.kernel, s.stride),)


class FusedForward(ConvForward):
    """conv + ReLU + max-pool in one op; the argmax is not compared (a near-tie may go either way)."""
    results = ("y",)

    def min_bytes(self) -> int:
        b = self._sizes()
        pooled = math.prod(self.shape.pooled_shape)
        return b["x"] + b["w"] + b["b"] + pooled * (self.dtype.itemsize + 4)

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return ops.conv2d_relu_maxpool_forward(inputs["x"], inputs["w"], inputs["b"], s.stride, s.padding,
                                               s.pool, s.pool_stride)[:1]

    def torch_call(self, torch, t: dict):
        s, F = self.shape, torch.nn.functional
        return lambda: (F.max_pool2d(F.relu(F.conv2d(t["x"], t["w"], t["b"], s.stride, s.padding)),
                                     s.pool, s.pool_stride),)


class FusedBackwardWeight(ConvBackwardWeight):
    """dw and db of the fused first layer, from the pooled gradient and the forward's argmax."""

    def min_bytes(self) -> int:
        b = self._sizes()
        pooled = math.prod(self.shape.pooled_shape)
        return pooled * (self.dtype.itemsize + 4) + b["x"] + b["w"] + b["b"]

    def make_inputs(self, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        s = self.shape
        x, w = _conv_arrays(s, rng, self.dtype)
        b = _normal(rng, (s.K,), self.dtype, 0.1)
        _, argmax = reference.conv2d_relu_maxpool_forward(x, w, b, s.stride, s.padding, s.pool, s.pool_stride)
        return {"dy": _normal(rng, s.pooled_shape, self.dtype), "argmax": argmax, "x": x, "w": w}

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return tuple(ops.conv2d_relu_maxpool_backward(inputs["dy"], inputs["argmax"], inputs["x"], inputs["w"],
                                                      s.stride, s.padding, s.pool, s.pool_stride))

    def torch_call(self, torch, t: dict):
        return None


CONV_CASES = (ConvForward, ConvBackwardWeight, ConvBackwardInputWeight)


def conv_cases(shape: ConvShape, *, group: str, dtype=np.float32, note: str = "") -> list[OpCase]:
    """Forward, backward-weight and backward-input+weight of one convolution."""
    notes = {ConvBackwardWeight: "dw, db (need_dx=False)", ConvBackwardInputWeight: "dx, dw, db"}
    return [cls(shape, group=group, dtype=dtype, note="; ".join(p for p in (notes.get(cls, ""), note) if p))
            for cls in CONV_CASES]


def network_cases(batch: int = BATCH_SIZE, dtype=np.float32, model: Sequential | None = None) -> list[OpCase]:
    """Every op of the network at batch ``batch``, in network order.

    Convolutions: forward; backward-weight (``need_dx=False``: dw and db, all a first layer needs);
    backward-input+weight (dx, dw and db in one call). Max-pools (ReLU fused, as the model runs
    them): forward and backward. When the first layer is conv -> ReLU -> max-pool, the model runs
    it as one fused op, timed as ``conv1+pool1`` (forward; backward-weight from the pooled gradient)."""
    shapes = network_shapes(batch, model)
    names = list(shapes)
    fused = len(names) >= 2 and names[0] == "conv1" and names[1] == "pool1"
    cases: list[OpCase] = []
    for name, s in shapes.items():
        inside = "the model runs it inside the fused conv1+pool1 op" if fused and name in ("conv1", "pool1") else ""
        if isinstance(s, ConvShape):
            cases += conv_cases(s, group="network", dtype=dtype, note=inside)
            if name == "conv1":
                cases[-1].note += "; not run in training (the first layer needs no dx)"
        else:
            cases += [PoolForward(s, dtype=dtype, note="; ".join(p for p in ("ReLU fused", inside) if p)),
                      PoolBackward(s, dtype=dtype, note=inside)]
        if fused and name == "pool1":
            c, p = shapes["conv1"], shapes["pool1"]
            f = FusedShape("conv1+pool1", c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.padding,
                           p.kernel, p.stride)
            cases += [FusedForward(f, dtype=dtype, note="conv1 + ReLU + pool1 fused, as the model runs them"),
                      FusedBackwardWeight(f, dtype=dtype,
                                          note="dw, db from the pooled gradient, as the model runs them")]
    return cases


def general_shapes() -> list[ConvShape]:
    """Convolutions beyond MNIST's, as users build them: each stresses a different kernel path."""
    return [
        ConvShape("lenet5-5x5", 128, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0)),
        ConvShape("rgb-3to64", 32, 3, 32, 32, 64, 3, 3, (1, 1), (1, 1)),
        ConvShape("64to128-16x16", 32, 64, 16, 16, 128, 3, 3, (1, 1), (1, 1)),
        ConvShape("stride2-3x3", 32, 64, 32, 32, 128, 3, 3, (2, 2), (1, 1)),
        ConvShape("pointwise-1x1", 32, 128, 16, 16, 64, 1, 1, (1, 1), (0, 0)),
        ConvShape("stem-7x7-s2", 16, 3, 64, 64, 64, 7, 7, (2, 2), (3, 3)),
    ]


def general_cases(dtype=np.float32) -> list[OpCase]:
    """Forward and both backward calls of every shape in :func:`general_shapes`."""
    return [case for s in general_shapes() for case in conv_cases(s, group="general", dtype=dtype,
                                                                  note=s.describe())]


def at_batch(cases: list[OpCase], batch: int) -> list[OpCase]:
    """The same op cases at another batch size (the kernels compile per dtype and code path, not per
    size: a batch of 1 or 2 warms them up)."""
    return [type(c)(replace(c.shape, N=batch), layer=c.layer, note=c.note, dtype=c.dtype, group=c.group)
            for c in cases]
