"""The base of every layer: :class:`Layer` (the interface, and the bookkeeping that ties a backward
to its forward), ``_BackendLayer`` (a layer over an op of the chosen backend), and the argument and
input checks whose error messages name the layer. The layers themselves are in
:mod:`fastcnn.layers`, which re-exports these names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fastcnn.backend import Ops, get_backend, resolve_backend_name

if TYPE_CHECKING:
    from fastcnn.layers import Conv2D

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

IntPair = tuple[int, int]


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _float_dtype(dtype: npt.DTypeLike) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_input(layer: Layer, x: object, ndim: int | None, what: str) -> None:
    """Raise a ValueError/TypeError that says what the layer expected and what it got (ndim None: any)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer._label()} expects a numpy array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{layer._label()} expects input of shape {what}, got shape {x.shape}")
    if x.dtype not in FLOAT_DTYPES:
        fix = ("convert images with fastcnn.to_float(x) (float32, MNIST-normalised): "
               if np.issubdtype(x.dtype, np.integer) else "")
        raise TypeError(f"{fix}{layer._label()} expects float32 or float64 input, got {x.dtype}")


def _check_dtype(layer: Layer, x: np.ndarray, weight: np.ndarray) -> None:
    """Input and parameters must share one dtype (the kernels compute in one precision; NumPy would
    silently promote to float64)."""
    if x.dtype != weight.dtype:
        raise TypeError(f"convert the input with x.astype(np.{weight.dtype}) or build the layer with "
                        f"dtype=np.{x.dtype}: {layer._label()} has {weight.dtype} parameters but got {x.dtype} input")


def _check_conv_input(layer: Layer, conv: Conv2D, x: np.ndarray) -> None:
    """The checks of a convolution's input, named after ``layer`` (the conv or a fused layer)."""
    _check_input(layer, x, 4, f"(N, {conv.in_channels}, H, W)")
    (R, S), (ph, pw) = conv.kernel_size, conv.padding
    if x.shape[1] != conv.in_channels or x.shape[2] + 2 * ph < R or x.shape[3] + 2 * pw < S:
        raise ValueError(f"{layer._label()} expects input of shape (N, {conv.in_channels}, H >= {R - 2 * ph}, "
                         f"W >= {S - 2 * pw}), got shape {x.shape}")
    _check_dtype(layer, x, conv.params["weight"])


def _check_once(layer: Layer, x: object, weight: np.ndarray, check: Callable[[], None]) -> None:
    """Run ``check`` (the layer's input checks, raising on a bad ``x``) unless ``x`` has the shape and
    dtype of the last input that passed them with a weight of this dtype: in a training step the
    checks cost more than the kernels' own wrappers, in the Python between kernels that runs on
    one thread."""
    signature = (x.shape, x.dtype, weight.dtype) if type(x) is np.ndarray else None
    if signature is None or signature != layer.__dict__.get("_checked"):
        check()
        layer.__dict__["_checked"] = signature


def _check_pool_size(layer: Layer, kernel_size: IntPair, shape: tuple[int, ...]) -> None:
    """A pool window must fit in the (N, C, H, W) ``shape`` it slides over."""
    kh, kw = kernel_size
    if shape[2] < kh or shape[3] < kw:
        raise ValueError(f"{layer._label()} expects input of shape (N, C, H >= {kh}, W >= {kw}), "
                         f"got shape {tuple(shape)}")


class Layer:
    """Base class: no parameters, identity bookkeeping."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}      # non-trained state (BatchNorm running statistics)

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self.forward(x, training)

    def config(self) -> dict:
        """The layer as plain JSON types: ``{"type": class name, **constructor arguments}``, which
        :func:`fastcnn.architecture.layer_from_config` turns back into an equal layer (new weights)."""
        return {"type": type(self).__name__}

    def _label(self) -> str:
        """The layer's name in error messages: its class name (a fused layer's also names the layers
        it replaced, see FusedLayer._label)."""
        return type(self).__name__

    def _output(self, y: np.ndarray) -> np.ndarray:
        """Remember the shape and dtype of the output ``y`` forward returns, which backward's dy must have."""
        self._dy_spec = (y.shape, y.dtype)
        return y

    def _check_grad(self, dy: object) -> None:
        """dy must be the gradient of the last forward's output: same shape, same dtype. The Numba kernels
        index dy by the shapes forward saw, without bounds checks, so a mismatch must stop here."""
        spec = getattr(self, "_dy_spec", None)
        if spec is None:
            raise RuntimeError(f"call forward before backward: {self._label()}.backward differentiates the last "
                               f"forward")
        shape, dtype = spec
        if isinstance(dy, np.ndarray) and (dy.shape, dy.dtype) == (shape, dtype):
            return
        got = f"shape {dy.shape} and dtype {dy.dtype}" if isinstance(dy, np.ndarray) else type(dy).__name__
        raise ValueError(f"pass the gradient of the last forward's output: {self._label()}.backward expects dy of "
                         f"shape {shape} and dtype {dtype}, got {got}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _BackendLayer(Layer):
    """A layer whose heavy lifting is an op of the op contract."""

    def __init__(self, backend: str | None) -> None:
        super().__init__()
        self.set_backend(backend)

    def set_backend(self, backend: str | None) -> None:
        """Switch implementation ('numpy' or 'numba'); None means $FASTCNN_BACKEND or the default."""
        self.backend_name = resolve_backend_name(backend)
        self.ops: Ops = get_backend(self.backend_name)

    def __getstate__(self) -> dict:
        # The ops module is not copyable; copies (copy.deepcopy) look it up again by name.
        state = dict(self.__dict__)
        del state["ops"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.ops = get_backend(self.backend_name)
