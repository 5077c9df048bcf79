"""What the benchmarks measure: the network's op shapes (derived from the model), a general shape set,
the network's FLOPs, and the lists of op cases at those shapes (the op case classes, with each op's
work and minimal bytes, live in :mod:`.op_cases`; their names are importable from here too).

Only the multiply-adds of convolutions and the linear layer are counted as FLOPs (the usual
convention); pooling, ReLU, the loss and the optimizer are memory-bound and counted as free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fastcnn.benchmarks.op_cases import (  # noqa: F401 -- the others: also imported from here
    CONV_CASES,
    ConvBackwardInputWeight,
    ConvBackwardWeight,
    ConvForward,
    FusedBackwardInputWeight,
    FusedBackwardWeight,
    FusedForward,
    OpCase,
    PoolBackward,
    PoolForward,
    conv_cases,
    pool_backward_bytes,
    pool_forward_bytes,
)
from fastcnn.convmath import conv_flops, conv_output_size, pool_output_size
from fastcnn.layers import AvgPool2D, Conv2D, ConvReLUMaxPool2D, Linear, MaxPool2D
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.train import TrainConfig

BATCH_SIZE = TrainConfig.batch_size               # the workload is fastcnn-train's default run
TRAIN_IMAGES = 60_000
BLOCK_BATCHES = 8     # training steps a framework runs back to back before another's turn (measure_steps)
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

    Returns ``{"train": ..., "eval": ..., "layers": [...], "sparse_train": ...}``. Training counts,
    per conv, forward + backward-weight + backward-input unless the layer needs no input gradient
    (the first one); per linear layer forward + dW + dx. Evaluation counts the forward passes only.
    These are the dense FLOPs (what PyTorch performs). ``sparse_train`` bounds what the Numba
    backend performs: the backward passes of a fused convolution + ReLU + max pool on the sparse
    route (kernels/conv_pooled.py) multiply at most one pixel per pool window, over the kernel
    padded to whole row tiles (dw always, dx where its tiles fit; otherwise dx stays dense)."""
    from fastcnn.kernels.conv_pooled import padded_sizes, sparse_input_gradient, sparse_route
    model = mnist_cnn(backend="numpy") if model is None else model
    layers, train, evaluate, sparse = [], 0, 0, 0
    entries = walk_layers(model, image_shape)
    itemsize = next((p.dtype.itemsize for layer in model.unfused_layers()
                     for p in getattr(layer, "params", {}).values()), 4)
    for i, entry in enumerate(entries):
        layer = entry["layer"]
        if entry["kind"] == "conv":
            C, H, W = entry["input"]
            fwd = conv_flops(1, C, H, W, layer.out_channels, *layer.kernel_size, layer.stride, layer.padding)
            need_dx = getattr(layer, "need_input_grad", bool(layers))
            passes = 2 + (1 if need_dx else 0)
            dw = dx = fwd
            pool = entries[i + 1] if i + 1 < len(entries) else None
            R, S = layer.kernel_size
            if (type(model.layers[entry["index"]]).__name__ == "ConvReLUMaxPool2D" and pool is not None
                    and sparse_route(C, R, S, pool["layer"].kernel_size, pool["layer"].stride, itemsize)):
                _, P, Q = pool["input"]
                P2, Q2 = pool_output_size(P, Q, pool["layer"].kernel_size, pool["layer"].stride)
                Rp, SCp = padded_sizes(R, S, C, itemsize)
                dw = 2 * layer.out_channels * P2 * Q2 * Rp * SCp
                dx = dw if sparse_input_gradient(C, R, S, itemsize) else fwd
            sparse += fwd + dw + (dx if need_dx else 0)
        elif entry["kind"] == "linear":
            fwd = 2 * layer.in_features * layer.out_features
            passes = 3
            sparse += passes * fwd
        else:
            continue
        layers.append({"index": entry["index"], "layer": repr(layer), "forward": fwd, "train": passes * fwd})
        train += passes * fwd
        evaluate += fwd
    return {"train": train, "eval": evaluate, "layers": layers, "sparse_train": sparse}


def network_budget(model: Sequential | None = None) -> dict:
    """The network's FLOP budget: per image, per 60,000-image epoch and per 10,000-image test set."""
    f = network_flops(model)
    return {"train_flops_per_image": f["train"], "eval_flops_per_image": f["eval"],
            "epoch_flops": f["train"] * TRAIN_IMAGES, "test_set_flops": f["eval"] * TEST_IMAGES,
            "layers": f["layers"], "numba_epoch_flops_at_most": f["sparse_train"] * TRAIN_IMAGES}


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


def fused_pairs(model: Sequential | None = None, image_shape: tuple = IMAGE_SHAPE) -> dict:
    """{convN: poolM} for each convolution the model runs fused with its ReLU and max-pool
    (:class:`~fastcnn.layers.ConvReLUMaxPool2D`), named as in :func:`network_shapes`."""
    model = mnist_cnn(backend="numpy") if model is None else model
    fused_at = {i for i, layer in enumerate(model.layers) if isinstance(layer, ConvReLUMaxPool2D)}
    pairs, counts, conv = {}, {"conv": 0, "pool": 0}, None
    for entry in walk_layers(model, image_shape):
        kind = entry["kind"]
        if kind == "linear":
            continue
        counts[kind] += 1
        name = f"{kind}{counts[kind]}"
        if kind == "conv":
            conv = name if entry["index"] in fused_at else None
        elif conv is not None:
            pairs[conv], conv = name, None
    return pairs


# ------------------------------------------------------------------- the op cases at these shapes

def network_cases(batch: int = BATCH_SIZE, dtype=np.float32, model: Sequential | None = None) -> list[OpCase]:
    """Every op of the network at batch ``batch``, in network order.

    Convolutions: forward; backward-weight (``need_dx=False``: dw and db, all a first layer needs);
    backward-input+weight (dx, dw and db in one call). Max-pools (ReLU fused, as the model runs
    them): forward and backward. A conv -> ReLU -> max-pool the model runs as one op is also timed
    as such, e.g. ``conv1+pool1`` (forward; for the first layer also backward-weight from the
    pooled gradient, dw and db; for later layers dx too)."""
    shapes = network_shapes(batch, model)
    pairs = fused_pairs(model)
    first_fused = isinstance((mnist_cnn(backend="numpy") if model is None else model).layers[0], ConvReLUMaxPool2D)
    owner = {part: f"{conv}+{pool}" for conv, pool in pairs.items() for part in (conv, pool)}
    cases: list[OpCase] = []
    for name, s in shapes.items():
        inside = f"the model runs its forward inside the fused {owner[name]} op" if name in owner else ""
        if isinstance(s, ConvShape):
            cases += conv_cases(s, group="network", dtype=dtype, note=inside)
            if name == "conv1":
                cases[-1].note += "; not run in training (the first layer needs no dx)"
        else:
            cases += [PoolForward(s, dtype=dtype, note="; ".join(p for p in ("ReLU fused", inside) if p)),
                      PoolBackward(s, dtype=dtype, note=inside)]
        conv = next((c for c, p in pairs.items() if p == name), None)
        if conv is not None:
            c, p = shapes[conv], shapes[name]
            f = FusedShape(owner[name], c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.padding, p.kernel, p.stride)
            cases.append(FusedForward(f, dtype=dtype, note=f"{conv} + ReLU + {name} fused, as the model runs them"))
            if conv == "conv1" and first_fused:        # a first layer: its backward needs no dx
                cases.append(FusedBackwardWeight(f, dtype=dtype,
                                                 note="dw, db from the pooled gradient, as the model runs them"))
            else:
                cases.append(FusedBackwardInputWeight(f, dtype=dtype,
                                                      note="dx, dw, db from the pooled gradient, as the model runs "
                                                           "them"))
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
