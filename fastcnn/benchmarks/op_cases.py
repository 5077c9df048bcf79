"""The op cases fastcnn-bench times: one small class per kind of op (convolution forward and
backward, max-pool forward and backward, the fused first layer), each with its inputs, its call
through a backend's op contract, its check against the NumPy reference and its work (FLOPs, or
the bytes a memory-bound op must move). The shapes they run at are :mod:`.workload`'s.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fastcnn import reference
from fastcnn.convmath import pool_output_size
from fastcnn.testing import assert_agree

if TYPE_CHECKING:
    from fastcnn.benchmarks.workload import ConvShape


def pool_forward_bytes(N: int, C: int, H: int, W: int, kernel=2, stride=None, itemsize: int = 4) -> int:
    """Bytes a max-pool forward moves at least: read x, write y and the int32 argmax."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (H * W * itemsize + P * Q * (itemsize + 4))


def pool_backward_bytes(N: int, C: int, H: int, W: int, kernel=2, stride=None, itemsize: int = 4) -> int:
    """Bytes a max-pool backward moves at least: read dy and argmax, write dx."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (P * Q * (itemsize + 4) + H * W * itemsize)


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

    @property
    def sparse(self) -> bool:
        """Whether the Numba kernels take the sparse route (kernels/conv_pooled.py): they then
        multiply only the pool's winners, fewer FLOPs than ``work`` counts."""
        from fastcnn.kernels.conv_pooled import sparse_route
        s = self.shape
        return sparse_route(s.C, s.R, s.S, tuple(s.pool), tuple(s.pool_stride), self.dtype.itemsize)

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
        return ops.conv2d_relu_maxpool_backward(inputs["dy"], inputs["argmax"], inputs["x"], inputs["w"],
                                                s.stride, s.padding, s.pool, s.pool_stride, need_dx=False)[1:]

    def torch_call(self, torch, t: dict):
        return None


class FusedBackwardInputWeight(FusedBackwardWeight):
    """dx, dw and db of a later fused layer, from the pooled gradient and the forward's argmax."""
    kind = "backward-input+weight"
    results = ("dx", "dw", "db")

    @property
    def work(self) -> int:
        return 2 * self.shape.flops

    def min_bytes(self) -> int:
        return super().min_bytes() + self._sizes()["x"]

    def run(self, ops, inputs: dict) -> tuple:
        s = self.shape
        return tuple(ops.conv2d_relu_maxpool_backward(inputs["dy"], inputs["argmax"], inputs["x"], inputs["w"],
                                                      s.stride, s.padding, s.pool, s.pool_stride, need_dx=True))


CONV_CASES = (ConvForward, ConvBackwardWeight, ConvBackwardInputWeight)


def conv_cases(shape: ConvShape, *, group: str, dtype=np.float32, note: str = "") -> list[OpCase]:
    """Forward, backward-weight and backward-input+weight of one convolution."""
    notes = {ConvBackwardWeight: "dw, db (need_dx=False)", ConvBackwardInputWeight: "dx, dw, db"}
    return [cls(shape, group=group, dtype=dtype, note="; ".join(p for p in (notes.get(cls, ""), note) if p))
            for cls in CONV_CASES]
