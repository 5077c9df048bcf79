"""Layers: thin stateful objects over the stateless ops of the chosen backend.

Every layer has ``forward(x, training=False) -> y`` and ``backward(dy) -> dx``; parameters live
in ``layer.params`` and their gradients in ``layer.grads`` under the same names (``weight``,
``bias``, ...). ``backward`` must follow the ``forward`` whose input it differentiates (the layer
keeps what it needs from that call). Convolution and pooling call the op contract of
:mod:`fastcnn.backend`; everything else is plain NumPy on both backends.

Fused layers (:class:`ReLUMaxPool2D`, :class:`ConvReLUMaxPool2D`) compute a run of layers as one
op. They are built from the layers they replace (which they keep as ``parts``) by
:func:`fastcnn.model.fuse`; no plain layer knows about fusion.

The base class :class:`~fastcnn.layerbase.Layer` and the input checks every layer shares are in
:mod:`fastcnn.layerbase` (``Layer`` is importable from here too).

Dimension legend: N batch, C channels in, K channels out, H, W height/width in, P, Q out, F features.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fastcnn.convmath import conv_output_size, pair
from fastcnn.layerbase import FLOAT_DTYPES as FLOAT_DTYPES
from fastcnn.layerbase import (
    IntPair,
    Layer,
    _BackendLayer,
    _check_conv_input,
    _check_dtype,
    _check_input,
    _check_once,
    _check_pool_size,
    _float_dtype,
    _positive_int,
)

#: Dropout draws its mask as 16-bit integers, so p is applied in steps of 1/DROPOUT_STEPS.
DROPOUT_STEPS = 1 << 16


class Identity(Layer):
    """y = x. :func:`fastcnn.model.fuse` puts one in each slot a fused layer freed, so the other
    layers keep their indices (and their parameter names, e.g. ``3.weight``)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy


class Conv2D(_BackendLayer):
    """2-D convolution over NCHW input; weight (K, C, R, S), bias (K,), He-normal initialisation.

    ``need_input_grad=False`` (set by :class:`~fastcnn.model.Sequential` on its first layer) skips
    dx in backward, which then returns None.
    """

    _x: np.ndarray                  # the input of the last forward, for backward

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, *,
                 rng: np.random.Generator | None = None, dtype: npt.DTypeLike = np.float32,
                 backend: str | None = None) -> None:
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        dtype = _float_dtype(dtype)
        super().__init__(backend)
        rng = np.random.default_rng(0) if rng is None else rng
        R, S = self.kernel_size
        fan_in = self.in_channels * R * S
        w = rng.standard_normal((self.out_channels, self.in_channels, R, S)) * math.sqrt(2.0 / fan_in)
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_channels, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.need_input_grad = True

    def config(self) -> dict:
        return {**super().config(), "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def output_shape(self, H: int, W: int) -> IntPair:
        """(P, Q) of the output for an H x W input."""
        return conv_output_size(H, W, *self.kernel_size, self.stride, self.padding)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_once(self, x, self.params["weight"], lambda: _check_conv_input(self, self, x))
        self._x = x
        return self._output(self.ops.conv2d_forward(x, self.params["weight"], self.params["bias"], self.stride,
                                                    self.padding))

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        self._check_grad(dy)
        dx, dw, db = self.ops.conv2d_backward(dy, self._x, self.params["weight"], self.stride,
                                              self.padding, need_dx=self.need_input_grad)
        self.grads["weight"] = dw
        self.grads["bias"] = db
        return dx

    def __repr__(self) -> str:
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


class _Pool2D(_BackendLayer):
    _x_shape: tuple[int, ...]       # the input shape of the last forward, for backward

    def __init__(self, kernel_size: int | Sequence[int] = 2, stride: int | Sequence[int] | None = None, *,
                 backend: str | None = None) -> None:
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", 1)
        super().__init__(backend)

    def config(self) -> dict:
        return {**super().config(), "kernel_size": list(self.kernel_size), "stride": list(self.stride)}

    def _check(self, x: np.ndarray) -> None:
        _check_input(self, x, 4, "(N, C, H, W)")
        _check_pool_size(self, self.kernel_size, x.shape)
        self._x_shape = x.shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride})"


class MaxPool2D(_Pool2D):
    """Max pooling, no padding, floor mode; ties send the gradient to the first maximum (row-major)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        y, self._argmax = self.ops.maxpool2d_forward(x, self.kernel_size, self.stride)
        return self._output(y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return self.ops.maxpool2d_backward(dy, self._argmax, self._x_shape, self.kernel_size, self.stride)


class AvgPool2D(_Pool2D):
    """Average pooling, no padding, floor mode."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._check(x)
        return self._output(self.ops.avgpool2d_forward(x, self.kernel_size, self.stride))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return self.ops.avgpool2d_backward(dy, self._x_shape, self.kernel_size, self.stride)


class ReLU(_BackendLayer):
    """y = max(x, 0); the gradient passes where x > 0 (read back from y, so no mask is stored)."""

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__(backend)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_input(self, x, None, "of any shape")
        self._y = self.ops.relu_forward(x)
        return self._output(self._y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return self.ops.relu_backward(dy, self._y)


class FusedLayer(_BackendLayer):
    """A run of layers computed as one op. ``parts`` are the layers it replaces, in order; the
    fused layer reads their configuration and shares their parameter dicts, so parameter names,
    values and checkpoints are those of the parts. Its repr shows the parts."""

    slot = 0        # which part's place in the layer list the fused layer takes (its parameters' names)

    def __init__(self, parts: Sequence[_BackendLayer]) -> None:
        self.parts = tuple(parts)
        super().__init__(self.parts[0].backend_name)

    def set_backend(self, backend: str | None) -> None:
        super().set_backend(backend)
        for part in self.parts:
            part.set_backend(self.backend_name)

    def _label(self) -> str:
        # The user built the layers it replaced, not the fused layer: name them too.
        return f"{type(self).__name__} (fused {' + '.join(type(p).__name__ for p in self.parts)})"

    def config(self) -> dict:
        raise TypeError(f"{type(self).__name__} has no config of its own: Sequential.config() lists the layers "
                        f"it fuses")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.parts))})"


class ReLUMaxPool2D(FusedLayer):
    """ReLU then MaxPool2D in one pass: y = maxpool(relu(x)), the ReLU's gradient mask applied by
    the pool's backward (the op's ``relu=True``). Max pool and ReLU commute, so values and
    gradients equal the two layers'; the ReLU output, as large as the input, is never written."""

    _x_shape: tuple[int, ...]
    _argmax: np.ndarray

    def __init__(self, relu: ReLU, pool: MaxPool2D) -> None:
        if not isinstance(relu, ReLU) or not isinstance(pool, MaxPool2D):
            raise TypeError(f"ReLUMaxPool2D fuses a ReLU and a MaxPool2D, got {relu!r}, {pool!r}")
        super().__init__((relu, pool))
        self.kernel_size, self.stride = pool.kernel_size, pool.stride

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_input(self, x, 4, "(N, C, H, W)")
        _check_pool_size(self, self.kernel_size, x.shape)
        self._x_shape = x.shape
        y, self._argmax = self.ops.maxpool2d_forward(x, self.kernel_size, self.stride, relu=True)
        return self._output(y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return self.ops.maxpool2d_backward(dy, self._argmax, self._x_shape, self.kernel_size, self.stride)


class ConvReLUMaxPool2D(FusedLayer):
    """Conv2D, ReLU and MaxPool2D as one op of the backend (``conv2d_relu_maxpool_forward``): with a
    2x2 / stride 2 pool the Numba kernels never store the convolution's output. Backward is one op
    too (``conv2d_relu_maxpool_backward``): dw, db and dx (None for a first layer,
    ``need_input_grad=False``) from the pooled gradient. The Numba kernels multiply only its
    nonzeros where the layer is wide enough (kernels/conv_pooled.py), take a first layer's tiny
    reduction as dot products, and elsewhere build its dense form inside the convolution's
    kernels, a chunk or an image at a time (kernels/fused.py).

    ``params`` and ``grads`` are the convolution's own dicts: ``0.weight`` stays ``0.weight``."""

    _x: np.ndarray
    _argmax: np.ndarray

    def __init__(self, conv: Conv2D, relu: ReLU, pool: MaxPool2D) -> None:
        if not (isinstance(conv, Conv2D) and isinstance(relu, ReLU) and isinstance(pool, MaxPool2D)):
            raise TypeError(f"ConvReLUMaxPool2D fuses a Conv2D, a ReLU and a MaxPool2D, got {conv!r}, {relu!r}, "
                            f"{pool!r}")
        super().__init__((conv, relu, pool))
        self.conv, self.pool = conv, pool
        self.params, self.grads = conv.params, conv.grads

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        conv, pool = self.conv, self.pool
        _check_once(self, x, self.params["weight"], lambda: self._check(x))
        self._x = x
        y, self._argmax = self.ops.conv2d_relu_maxpool_forward(x, self.params["weight"], self.params["bias"],
                                                               conv.stride, conv.padding, pool.kernel_size,
                                                               pool.stride)
        return self._output(y)

    def _check(self, x: np.ndarray) -> None:
        conv = self.conv
        _check_conv_input(self, conv, x)
        P, Q = conv.output_shape(x.shape[2], x.shape[3])
        _check_pool_size(self, self.pool.kernel_size, (x.shape[0], conv.out_channels, P, Q))

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        self._check_grad(dy)
        conv, pool = self.conv, self.pool
        dx, dw, db = self.ops.conv2d_relu_maxpool_backward(dy, self._argmax, self._x, self.params["weight"],
                                                           conv.stride, conv.padding, pool.kernel_size, pool.stride,
                                                           need_dx=conv.need_input_grad)
        self.grads["weight"] = dw
        self.grads["bias"] = db
        return dx


class Flatten(Layer):
    """(N, ...) -> (N, F)."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            raise ValueError(f"Flatten expects input of shape (N, ...), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        self._shape = x.shape
        return self._output(x.reshape(x.shape[0], -1))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return dy.reshape(self._shape)


_RAW64 = (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox, np.random.SFC64)


class Dropout(_BackendLayer):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p), so evaluation is the identity. Randomness comes only from ``rng`` (a seeded
    ``numpy.random.Generator`` owned by the model), never from the global ``np.random``.

    Each training forward draws one 64-bit key from ``rng``; the mask is a counter-based function
    of that key and each element's index (:mod:`fastcnn.reference.dropout`), computed in parallel
    on the Numba backend with the same bits for any thread count. An element is dropped when its
    16-bit draw is below round(p * DROPOUT_STEPS), so p is applied at 1/65536 resolution (exactly
    for p = 0.5) and the scale uses that same quantised p, which keeps the layer unbiased.
    """

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None, backend: str | None = None) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        super().__init__(backend)
        self.p = float(p)
        self._threshold = int(round(self.p * DROPOUT_STEPS))
        if self._threshold >= DROPOUT_STEPS:
            raise ValueError(f"dropout probability p must be below {DROPOUT_STEPS - 1}/{DROPOUT_STEPS}, got {p!r}")
        self.rng = np.random.default_rng(0) if rng is None else rng
        self._mask = None

    def config(self) -> dict:
        return {**super().config(), "p": self.p}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training or self._threshold == 0:
            self._mask = None
            return self._output(x)
        y, self._mask = self.ops.dropout_forward(x, self._key(), self._threshold)
        return self._output(y)

    def _key(self) -> int:
        """The training forward's 64-bit key, one draw from ``rng``."""
        bits = self.rng.bit_generator
        # A 64-bit generator's raw output is the draw integers(0, 2**64) makes, at a tenth of its
        # cost (measured 10 us of a step's serial time); any other generator goes through integers.
        return int(bits.random_raw()) if type(bits) in _RAW64 else int(self.rng.integers(0, 2**64, dtype=np.uint64))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        return dy if self._mask is None else self.ops.dropout_backward(dy, self._mask)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class Linear(_BackendLayer):
    """y = x @ weight.T + bias; weight (out, in) as in PyTorch, N(0, 1/in) initialisation. The
    backend's ops compute it: BLAS on numpy, on numba a kernel split over the threads (bit-identical
    for any thread count, within rounding of BLAS's results)."""

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator | None = None,
                 dtype: npt.DTypeLike = np.float32, backend: str | None = None) -> None:
        super().__init__(backend)
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        dtype = _float_dtype(dtype)
        rng = np.random.default_rng(0) if rng is None else rng
        w = rng.standard_normal((self.out_features, self.in_features)) * math.sqrt(1.0 / self.in_features)
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_features, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def config(self) -> dict:
        return {**super().config(), "in_features": self.in_features, "out_features": self.out_features}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_once(self, x, self.params["weight"], lambda: _check_linear_input(self, self, x))
        self._x = x
        return self._output(self.ops.linear_forward(x, self.params["weight"], self.params["bias"]))   # (N, F_out)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        dx, self.grads["weight"], self.grads["bias"] = self.ops.linear_backward(dy, self._x, self.params["weight"])
        return dx                                                        # (N, F_in)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features})"


def _check_linear_input(layer: Layer, linear: Linear, x: np.ndarray) -> None:
    """The checks of a linear layer's input, named after ``layer`` (the Linear or a fused layer)."""
    _check_input(layer, x, 2, f"(N, {linear.in_features})")
    if x.shape[1] != linear.in_features:
        raise ValueError(f"{layer._label()} expects input of shape (N, {linear.in_features}), got shape {x.shape}")
    _check_dtype(layer, x, linear.params["weight"])


class DropoutLinear(FusedLayer):
    """Dropout then Linear as one op of the backend: in training ``dropout_linear_forward``, whose
    Numba kernel drops its rows of the input, then multiplies them, in the linear layer's forward
    call, and ``dropout_linear_backward``, which applies the mask to dx in the linear layer's
    input-gradient call (one kernel call and wrapper each way instead of two); in evaluation, or
    with p = 0, the linear layer alone. The same values, masks and gradients as the two layers,
    and the same draws from the dropout's ``rng``. It takes the Linear's place in the layer list
    (``slot = 1``), the Dropout's holding an Identity, so ``8.weight`` stays ``8.weight``."""

    slot = 1
    _xd: np.ndarray
    _mask: np.ndarray | None

    def __init__(self, dropout: Dropout, linear: Linear) -> None:
        if not isinstance(dropout, Dropout) or not isinstance(linear, Linear):
            raise TypeError(f"DropoutLinear fuses a Dropout and a Linear, got {dropout!r}, {linear!r}")
        super().__init__((dropout, linear))
        self.dropout, self.linear = dropout, linear
        self.params, self.grads = linear.params, linear.grads

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        dropout, linear = self.dropout, self.linear
        _check_once(self, x, self.params["weight"], lambda: _check_linear_input(self, linear, x))
        if not training or dropout._threshold == 0:
            self._xd, self._mask = x, None
            return self._output(self.ops.linear_forward(x, self.params["weight"], self.params["bias"]))
        y, self._xd, self._mask = self.ops.dropout_linear_forward(x, dropout._key(), dropout._threshold,
                                                                  self.params["weight"], self.params["bias"])
        return self._output(y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._check_grad(dy)
        w = self.params["weight"]
        if self._mask is None:
            dx, dw, db = self.ops.linear_backward(dy, self._xd, w)
        else:
            dx, dw, db = self.ops.dropout_linear_backward(dy, self._xd, self._mask, w)
        self.grads["weight"], self.grads["bias"] = dw, db
        return dx


class BatchNorm2D(_BackendLayer):
    """Batch normalisation over (N, H, W) per channel.

    Training: normalise with the batch's mean and biased variance and update the running
    statistics (running = (1 - momentum) * running + momentum * batch, unbiased variance as in
    PyTorch). Evaluation: normalise with the running statistics. On the numba backend the training
    pass runs as kernels over the channels in parallel (fastcnn.kernels.batchnorm: bit-identical for
    any thread count, within rounding of these NumPy formulas).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype: npt.DTypeLike = np.float32, backend: str | None = None) -> None:
        super().__init__(backend)
        self.num_features = _positive_int(num_features, "num_features")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        dtype = _float_dtype(dtype)
        C = self.num_features
        self.params = {"weight": np.ones(C, dtype), "bias": np.zeros(C, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": np.zeros(C, dtype), "running_var": np.ones(C, dtype)}
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def config(self) -> dict:
        return {**super().config(), "num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_input(self, x, 4, f"(N, {self.num_features}, H, W)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2D expects input of shape (N, {self.num_features}, H, W), "
                             f"got shape {x.shape}")
        _check_dtype(self, x, self.params["weight"])
        g, b = self.params["weight"][:, None, None], self.params["bias"][:, None, None]
        if not training:
            self._cache = None          # backward differentiates training-mode forwards only
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            return self._output((x - mean[:, None, None]) / np.sqrt(var[:, None, None] + self.eps) * g + b)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(f"use a batch of 2 or more images in training: BatchNorm2D needs more than one value per "
                             f"channel (N*H*W = {m}) to estimate a variance (evaluation, training=False, takes any)")
        if self.backend_name == "numba":
            from fastcnn.kernels.batchnorm import batchnorm_train_forward
            y, x_hat, mean, var, inv_std = batchnorm_train_forward(x, self.params["weight"], self.params["bias"],
                                                                   self.eps)
        else:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
            x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
            y = x_hat * g + b
        self._cache = (x_hat, inv_std)
        mom = self.momentum
        unbiased = var * (m / (m - 1))
        self.buffers["running_mean"] = ((1 - mom) * self.buffers["running_mean"] + mom * mean).astype(x.dtype)
        self.buffers["running_var"] = ((1 - mom) * self.buffers["running_var"] + mom * unbiased).astype(x.dtype)
        return self._output(y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("call forward(x, training=True) before backward: BatchNorm2D.backward differentiates "
                               "a training-mode forward")
        self._check_grad(dy)
        x_hat, inv_std = self._cache
        if self.backend_name == "numba":
            from fastcnn.kernels.batchnorm import batchnorm_backward
            dx, self.grads["weight"], self.grads["bias"] = batchnorm_backward(dy, x_hat, self.params["weight"], inv_std)
            return dx
        self.grads["bias"] = dy.sum(axis=(0, 2, 3))
        self.grads["weight"] = (dy * x_hat).sum(axis=(0, 2, 3))
        g = self.params["weight"]
        dx_hat = dy * g[:, None, None]
        # dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), means over (N, H, W)
        mean_d = dx_hat.mean(axis=(0, 2, 3), keepdims=True)
        mean_dx = (dx_hat * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        return (dx_hat - mean_d - x_hat * mean_dx) * inv_std[:, None, None]

    def __repr__(self) -> str:
        return f"BatchNorm2D({self.num_features})"
