"""Layers: thin stateful objects over the stateless ops of the chosen backend.

Every layer has ``forward(x, training=False) -> y`` and ``backward(dy) -> dx``; parameters live
in ``layer.params`` and their gradients in ``layer.grads`` under the same names (``weight``,
``bias``, ...). ``backward`` must follow the ``forward`` whose input it differentiates (the layer
keeps what it needs from that call). Convolution and pooling call the op contract of
:mod:`fastcnn.backend`; everything else is plain NumPy on both backends.

Dimension legend: N batch, C channels in, K channels out, H, W height/width in, P, Q out, F features.
"""
from __future__ import annotations

import math

import numpy as np

from fastcnn.backend import get_backend, resolve_backend_name
from fastcnn.convmath import conv_output_size
from fastcnn.convmath import pair

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _positive_int(value, name):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_input(layer, x, ndim, what):
    """Raise a ValueError/TypeError that says what the layer expected and what it got."""
    name = type(layer).__name__
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} expects a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} expects input of shape {what}, got shape {x.shape}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} expects float32 or float64 input, got {x.dtype}")


class Layer:
    """Base class: no parameters, identity bookkeeping."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}      # non-trained state (BatchNorm running statistics)

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, training=False):
        return self.forward(x, training)

    def __repr__(self):
        return f"{type(self).__name__}()"


class _BackendLayer(Layer):
    """A layer whose heavy lifting is an op of the op contract."""

    def __init__(self, backend):
        super().__init__()
        self.set_backend(backend)

    def set_backend(self, backend):
        """Switch implementation ('numpy' or 'numba'); None means $FASTCNN_BACKEND or the default."""
        self.backend_name = resolve_backend_name(backend)
        self.ops = get_backend(self.backend_name)

    def __getstate__(self):
        # The ops module is not copyable; copies (copy.deepcopy) look it up again by name.
        state = dict(self.__dict__)
        del state["ops"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.ops = get_backend(self.backend_name)


class Conv2D(_BackendLayer):
    """2-D convolution over NCHW input; weight (K, C, R, S), bias (K,), He-normal initialisation.

    ``need_input_grad=False`` (set by :class:`~fastcnn.model.Sequential` on its first layer) skips
    dx in backward, which then returns None.

    ``fused_pool``: when Sequential finds this first layer followed by a ReLU and a MaxPool2D, it
    sets ``fused_pool`` to that pool and the three run as one op of the backend
    (``conv2d_relu_maxpool_forward`` / ``_backward``): forward returns the pooled output, backward
    takes the pooled gradient, and the ReLU and the pool pass values and gradients through.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 rng=None, dtype=np.float32, backend=None):
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
        self.fused_pool = None
        self._x = None

    def output_shape(self, H, W):
        return conv_output_size(H, W, *self.kernel_size, self.stride, self.padding)

    def forward(self, x, training=False):
        _check_input(self, x, 4, f"(N, {self.in_channels}, H, W)")
        R, S = self.kernel_size
        (ph, pw) = self.padding
        if x.shape[1] != self.in_channels or x.shape[2] + 2 * ph < R or x.shape[3] + 2 * pw < S:
            raise ValueError(f"Conv2D expects input of shape (N, {self.in_channels}, H >= {R - 2 * ph}, "
                             f"W >= {S - 2 * pw}), got shape {x.shape}")
        w = self.params["weight"]
        if x.dtype != w.dtype:
            raise TypeError(f"Conv2D has {w.dtype} weights but got {x.dtype} input")
        self._x = x
        pool = self.fused_pool
        if pool is None:
            return self.ops.conv2d_forward(x, w, self.params["bias"], self.stride, self.padding)
        P, Q = self.output_shape(x.shape[2], x.shape[3])
        pool._check_size(P, Q, (x.shape[0], self.out_channels, P, Q))
        y, self._argmax = self.ops.conv2d_relu_maxpool_forward(x, w, self.params["bias"], self.stride,
                                                               self.padding, pool.kernel_size, pool.stride)
        return y

    def backward(self, dy):
        if self.fused_pool is not None:
            dw, db = self.ops.conv2d_relu_maxpool_backward(dy, self._argmax, self._x, self.params["weight"],
                                                           self.stride, self.padding,
                                                           self.fused_pool.kernel_size, self.fused_pool.stride)
            self.grads["weight"] = dw
            self.grads["bias"] = db
            return None
        dx, dw, db = self.ops.conv2d_backward(dy, self._x, self.params["weight"], self.stride,
                                              self.padding, need_dx=self.need_input_grad)
        self.grads["weight"] = dw
        self.grads["bias"] = db
        return dx

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding})")


class _Pool2D(_BackendLayer):
    def __init__(self, kernel_size=2, stride=None, *, backend=None):
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", 1)
        super().__init__(backend)
        self._x_shape = None

    def _check(self, x):
        _check_input(self, x, 4, "(N, C, H, W)")
        self._check_size(x.shape[2], x.shape[3], x.shape)
        self._x_shape = x.shape

    def _check_size(self, H, W, shape):
        kh, kw = self.kernel_size
        if H < kh or W < kw:
            raise ValueError(f"{type(self).__name__} expects input of shape (N, C, H >= {kh}, W >= {kw}), "
                             f"got shape {tuple(shape)}")

    def __repr__(self):
        relu = ", relu=True" if getattr(self, "relu", False) else ""
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}{relu})"


class MaxPool2D(_Pool2D):
    """Max pooling, no padding, floor mode; ties send the gradient to the first maximum (row-major).

    ``relu=True`` computes maxpool(relu(x)) in the same pass (set by Sequential's fusion).
    ``fused_into_prev``: the convolution before it computes the pool (see ``Conv2D.fused_pool``);
    this layer then passes values and gradients through.
    """

    def __init__(self, kernel_size=2, stride=None, *, relu=False, backend=None):
        super().__init__(kernel_size, stride, backend=backend)
        self.relu = bool(relu)
        self.fused_into_prev = False

    def forward(self, x, training=False):
        if self.fused_into_prev:
            return x
        self._check(x)
        y, self._argmax = self.ops.maxpool2d_forward(x, self.kernel_size, self.stride, relu=self.relu)
        return y

    def backward(self, dy):
        if self.fused_into_prev:
            return dy
        return self.ops.maxpool2d_backward(dy, self._argmax, self._x_shape, self.kernel_size, self.stride)


class AvgPool2D(_Pool2D):
    """Average pooling, no padding, floor mode."""

    def forward(self, x, training=False):
        self._check(x)
        return self.ops.avgpool2d_forward(x, self.kernel_size, self.stride)

    def backward(self, dy):
        return self.ops.avgpool2d_backward(dy, self._x_shape, self.kernel_size, self.stride)


class ReLU(_BackendLayer):
    """y = max(x, 0); the gradient passes where x > 0 (read back from y, so no mask is stored).

    When :class:`~fastcnn.model.Sequential` fuses this ReLU into the MaxPool2D that follows it,
    ``fused_into_next`` is True and the layer passes values and gradients through unchanged: the
    pool applies the ReLU (max-pool and ReLU commute, and the gradients are identical).
    """

    def __init__(self, *, backend=None):
        super().__init__(backend)
        self.fused_into_next = False

    def forward(self, x, training=False):
        if self.fused_into_next:
            return x
        self._y = self.ops.relu_forward(x)
        return self._y

    def backward(self, dy):
        if self.fused_into_next:
            return dy
        return self.ops.relu_backward(dy, self._y)


class Flatten(Layer):
    """(N, ...) -> (N, F)."""

    def forward(self, x, training=False):
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            raise ValueError(f"Flatten expects input of shape (N, ...), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p), so evaluation is the identity. Randomness comes only from ``rng`` (a seeded
    ``numpy.random.Generator`` owned by the model), never from the global ``np.random``.

    The mask is drawn as 16-bit integers (twice as fast as floats): an element is dropped when its
    draw is below round(p * 65536), so p is applied at 1/65536 resolution (exactly for p = 0.5)
    and the scale uses that same quantised p, which keeps the layer unbiased.
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self._threshold = int(round(self.p * 65536))
        if self._threshold >= 65536:
            raise ValueError(f"dropout probability p must be below 65535/65536, got {p!r}")
        self.rng = np.random.default_rng(0) if rng is None else rng
        self._mask = None

    def forward(self, x, training=False):
        if not training or self._threshold == 0:
            self._mask = None
            return x
        keep = self.rng.integers(0, 65536, size=x.shape, dtype=np.uint16) >= self._threshold
        self._mask = keep * x.dtype.type(65536.0 / (65536 - self._threshold))
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Linear(Layer):
    """y = x @ weight.T + bias; weight (out, in) as in PyTorch, N(0, 1/in) initialisation."""

    def __init__(self, in_features, out_features, *, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        dtype = _float_dtype(dtype)
        rng = np.random.default_rng(0) if rng is None else rng
        w = rng.standard_normal((self.out_features, self.in_features)) * math.sqrt(1.0 / self.in_features)
        self.params = {"weight": w.astype(dtype), "bias": np.zeros(self.out_features, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, training=False):
        _check_input(self, x, 2, f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (N, {self.in_features}), got shape {x.shape}")
        self._x = x
        return x @ self.params["weight"].T + self.params["bias"]        # (N, F_out)

    def backward(self, dy):
        self.grads["weight"] = dy.T @ self._x                            # (F_out, F_in)
        self.grads["bias"] = dy.sum(axis=0)
        return dy @ self.params["weight"]                                # (N, F_in)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features})"


class BatchNorm2D(Layer):
    """Batch normalisation over (N, H, W) per channel.

    Training: normalise with the batch's mean and biased variance and update the running
    statistics (running = (1 - momentum) * running + momentum * batch, unbiased variance as in
    PyTorch). Evaluation: normalise with the running statistics.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, *, dtype=np.float32):
        super().__init__()
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
        self._cache = None

    def forward(self, x, training=False):
        _check_input(self, x, 4, f"(N, {self.num_features}, H, W)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2D expects input of shape (N, {self.num_features}, H, W), "
                             f"got shape {x.shape}")
        g, b = self.params["weight"][:, None, None], self.params["bias"][:, None, None]
        if not training:
            self._cache = None          # backward differentiates training-mode forwards only
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            return (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + self.eps) * g + b
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        m = x.shape[0] * x.shape[2] * x.shape[3]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
        self._cache = (x_hat, inv_std)
        mom = self.momentum
        unbiased = var * (m / max(m - 1, 1))
        self.buffers["running_mean"] = ((1 - mom) * self.buffers["running_mean"] + mom * mean).astype(x.dtype)
        self.buffers["running_var"] = ((1 - mom) * self.buffers["running_var"] + mom * unbiased).astype(x.dtype)
        return x_hat * g + b

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("BatchNorm2D.backward needs a preceding forward(x, training=True)")
        x_hat, inv_std = self._cache
        self.grads["bias"] = dy.sum(axis=(0, 2, 3))
        self.grads["weight"] = (dy * x_hat).sum(axis=(0, 2, 3))
        g = self.params["weight"]
        dx_hat = dy * g[:, None, None]
        # dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), means over (N, H, W)
        mean_d = dx_hat.mean(axis=(0, 2, 3), keepdims=True)
        mean_dx = (dx_hat * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        return (dx_hat - mean_d - x_hat * mean_dx) * inv_std[:, None, None]

    def __repr__(self):
        return f"BatchNorm2D({self.num_features})"
