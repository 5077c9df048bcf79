"""warm_up: compile (or load from Numba's cache) the kernels a model's training step uses, before
the first batch, and say so before any real compilation starts.

What to compile comes from the model itself: its layers run once on two images with a recorder in
place of the kernels (model_plan), and the recorded calls are replayed on small arrays of the same
shapes, so only the drivers and routes those layers reach are compiled. ``warm_up(dtype)`` plans
the default MNIST network.

Compilation is single-threaded in Numba, and most of it is LLVM optimising and compiling the
drivers with the workers linked into them. So on an empty cache with two or more CPUs the
plan is split in two: this process replays the calls that reach the register tile, and the step's
own checks and loss, while a helper process replays the rest (the first layer's fused forward,
pooling, dropout, the linear layer, the optimizer) into the same on-disk cache; this process then
loads those from the cache. The two halves reach disjoint sets of cached functions
(tests/test_kernels.py checks it), so no cache entry ever has two writers (the race of numba
issue #4807 needs two processes writing one function's entries).
Without the cache, or if the helper fails, this process compiles both halves itself: the same
code, only slower.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np
from numba.core import event

from fastcnn.backend import usable_cpus
from fastcnn.kernels._config import CACHE, compiled_features
from fastcnn.kernels.conv import SMALL_L

# About what a first run takes on the 2-core development machines, both halves in one process or split
# with the helper: measured 8.5 and 4.8 s on the Zen 5 one (docs/performance-log.md, 2026-12-07), which
# compiles about 1.6x faster than the Zen 3 one (the prange version: 13.1-13.8 against 21.6 s).
ESTIMATED_COMPILE_SECONDS = {"alone": 12.0, "split": 7.0}


class _FirstCompile(event.Listener):
    """Calls ``callback`` once, when the first real compilation starts (Numba emits no
    'numba:compile' event for a function it loads from its on-disk cache)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback, self.fired = callback, False

    def on_start(self, ev: event.Event) -> None:
        if not self.fired:
            self.fired = True
            self.callback()

    def on_end(self, ev: event.Event) -> None:
        pass


@contextlib.contextmanager
def first_compile(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, call ``callback()`` once, when the first real Numba compilation starts."""
    with event.install_listener("numba:compile", _FirstCompile(callback)):
        yield


# A warm-up plan is the list of kernel calls one training step of a model makes, each as
# (op, args) with every array replaced by ("array", shape, dtype): recorded by running the model's
# layers once on two images with the NumPy reference standing in for every op, then replayed on
# small arrays of those shapes (the values do not matter, the types and routes do). Plain tuples,
# so a helper process receives its half as a literal.

class _Recorder:
    """Stands in for the kernels module in a layer (``layer.ops``): records each op's call as a
    plan entry and returns the NumPy reference's result, so the layers after it see real shapes."""

    def __init__(self, calls: list) -> None:
        from fastcnn import reference
        self.reference, self.calls = reference, calls

    def __getattr__(self, op: str) -> Callable:
        def call(*args, **kwargs):
            self.calls.append((op, tuple(_spec(a) for a in args), tuple(sorted((k, _spec(v)) for k, v in
                                                                                 kwargs.items()))))
            return getattr(self.reference, op)(*args, **kwargs)
        return call


def _spec(value):
    if isinstance(value, np.ndarray):
        return ("array", tuple(int(d) for d in value.shape), value.dtype.name)
    if isinstance(value, (tuple, list)):
        return tuple(_spec(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return value


def _value(spec, rng: np.random.Generator):
    if isinstance(spec, tuple) and len(spec) == 3 and spec[0] == "array":
        _, shape, dtype = spec
        if np.dtype(dtype).kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        return np.zeros(shape, dtype)          # argmax tables: window offset 0 is always valid
    if isinstance(spec, tuple):
        return tuple(_value(v, rng) for v in spec)
    return spec


def model_plan(model, input_shape=None) -> list:
    """The kernel calls one training step of ``model`` (a :class:`~fastcnn.model.Sequential`)
    makes, in order and without repeats, for a batch of images of ``input_shape`` (C, H, W;
    default ``model.input_shape``). Its own layers are untouched: a copy runs on the reference."""
    import copy

    from fastcnn.layerbase import _BackendLayer
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("warm_up needs the model's input shape: build the Sequential with input_shape=(C, H, W) "
                         "or pass input_shape")
    calls: list = []
    recorder = _Recorder(calls)
    layers = copy.deepcopy(list(model.layers))
    dtype = next((p.dtype for layer in layers for p in getattr(layer, "params", {}).values()), np.dtype(np.float32))
    for layer in layers:
        for part in (layer, *getattr(layer, "parts", ())):
            if isinstance(part, _BackendLayer):
                part.ops = recorder
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(dtype)
    recorder.all_finite(x)                             # the step's input check
    with np.errstate(all="ignore"):
        for layer in layers:
            x = layer.forward(x, training=True)
        if x.ndim == 2:                                # logits: the loss of a classifier's step
            recorder.softmax_cross_entropy(x, np.zeros(len(x), np.int64))
            recorder.count_correct(x, np.zeros(len(x), np.int64))
        g = np.ones_like(x)
        for layer in reversed(layers):
            if g is None:
                break
            g = layer.backward(g)
    return list(dict.fromkeys(calls))


def optimizer_plan(optimizer, dtype: np.dtype) -> list:
    """The optimizer kernel's call (one specialisation serves every model): ``optimizer`` an
    :class:`~fastcnn.optim.Optimizer`, its name ("adamw", "sgd") or None (no call)."""
    if optimizer is None:
        return []
    name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    a = (("array", (4,), np.dtype(dtype).name),)
    if name.lower() == "adamw":
        return [("optim.adamw_step", (a, a, a, a, (0.9, 0.999), 1.0, 1.0, 1e-8, 0.0, True), ())]
    if name.lower() == "sgd":
        return [("optim.sgd_step", (a, a, a, 0.1, 0.9, 0.0), ())]
    raise ValueError(f"warm_up knows the optimizers 'adamw' and 'sgd', got {optimizer!r}")


def _need_dx(call) -> bool:
    """Whether a planned backward call asks for the input gradient (its need_dx, default True)."""
    op, args, kwargs = call
    position = 5 if op == "conv2d_backward" else 8
    return bool(dict(kwargs).get("need_dx", args[position] if len(args) > position else True))


def _small(call) -> bool:
    """Whether a planned fused forward or backward takes the tiny-reduction route (kernels/fused.py:
    C*R*S < SMALL_L under a 2x2 / stride 2 pool, the first layer's)."""
    op, args, _ = call
    where = {"conv2d_relu_maxpool_forward": (1, 5), "conv2d_relu_maxpool_backward": (3, 6)}.get(op)
    if where is None or len(args) < where[1] + 2:
        return False
    _, (_, C, R, S), _ = args[where[0]]
    return C * R * S < SMALL_L and tuple(map(tuple, args[where[1]:where[1] + 2])) == ((2, 2), (2, 2))


def _pads(call) -> bool:
    """Whether a planned convolution call may reach a tiny-reduction driver (C*R*S < SMALL_L: the
    fused first layer's, or conv._forward_small with pad_chw and rows_axpy), in its forward or in
    an input gradient computed as a stride-1 forward (K*R*S < SMALL_L)."""
    op, args, _ = call
    where = {"conv2d_forward": (1, False), "conv2d_relu_maxpool_forward": (1, False),
             "conv2d_backward": (2, True), "conv2d_relu_maxpool_backward": (3, True)}.get(op)
    if where is None or len(args) <= where[0]:
        return False
    _, (K, C, R, S), _ = args[where[0]]
    return C * R * S < SMALL_L or (where[1] and _need_dx(call) and K * R * S < SMALL_L)


# The step's own ops outside the layers. They compile with the tile's half: for the MNIST network
# that half took 5.8 s and the other 6.5 s with them, 6.4 and 5.8 s without (one process each,
# empty cache, 2-core Zen 5).
STEP_OPS = ("all_finite", "softmax_cross_entropy", "count_correct")


def _uses_tile(call) -> bool:
    """Whether a planned call reaches the register tile's drivers (compiled in this process)."""
    op, args, _ = call
    if op == "conv2d_relu_maxpool_backward" and _small(call):    # dx, if asked for, on the tile
        return _need_dx(call)
    if op in ("conv2d_forward", "conv2d_backward", "conv2d_relu_maxpool_backward"):
        return True
    if op == "conv2d_relu_maxpool_forward":      # a long reduction runs the convolution kernels
        _, (K, C, R, S), _ = args[1]
        return C * R * S >= SMALL_L
    return False


def split_plan(plan: list) -> tuple[list, list]:
    """(calls reaching the register tile, the rest): two halves whose compiled functions are
    disjoint (tests/test_kernels.py checks it for the MNIST network), so two processes can fill one
    cache without two writers of one entry. A fused forward or backward on the tile's side may fall
    back to the max-pool kernels (kernels/fused.py, kernels/conv.py), so the plan's max-pool forwards
    and backwards go to that side with it, and a call there that may reach a tiny-reduction driver
    (_pads) takes every other such call with it (they share pad_chw and rows_axpy)."""
    tile = [c for c in plan if _uses_tile(c)]
    if any(_pads(c) for c in tile):
        tile = [c for c in plan if c in tile or _pads(c)]
    for fused, pool in (("conv2d_relu_maxpool_forward", "maxpool2d_forward"),
                        ("conv2d_relu_maxpool_backward", "maxpool2d_backward")):
        if any(c[0] == fused for c in tile):
            tile = [c for c in plan if c in tile or c[0] == pool]
    if tile:                                # balance the halves: these share nothing with the layers
        tile = [c for c in plan if c in tile or c[0] in STEP_OPS]
    return tile, [c for c in plan if c not in tile]


def replay(calls: list) -> None:
    """Run each planned call on small arrays of its recorded shapes (compiles or loads its kernels)."""
    from fastcnn import kernels
    from fastcnn.kernels import optim  # noqa: F401  (the optimizer ops, "optim.<name>")
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    # One thread: the same compiled kernels, and no worker threads, whose handoff functions
    # (_parallel) would then compile in both warm-up processes (two writers of one cache entry).
    numba.set_num_threads(1)
    try:
        with np.errstate(all="ignore"):
            for op, args, kwargs in calls:
                fn = kernels
                for part in op.split("."):
                    fn = getattr(fn, part)
                fn(*(_value(a, rng) for a in args), **{k: _value(v, rng) for k, v in kwargs})
    finally:
        numba.set_num_threads(threads)


def mnist_plan(dtype: np.dtype) -> list:
    """The default MNIST network's plan (:func:`fastcnn.mnist_cnn`) for ``dtype``, with AdamW."""
    from fastcnn.model import mnist_cnn
    return model_plan(mnist_cnn(dtype=dtype, backend="numba")) + optimizer_plan("adamw", dtype)


def convolution_ops(dtype: np.dtype) -> None:
    """The MNIST network's calls that reach the register tile (this process's half)."""
    replay(split_plan(mnist_plan(np.dtype(dtype)))[0])


def pooling_ops(dtype: np.dtype) -> None:
    """The MNIST network's other calls: the fused first layer's forward, pooling, dropout (the
    helper's half)."""
    replay(split_plan(mnist_plan(np.dtype(dtype)))[1])


def start_helper(calls: list) -> subprocess.Popen:
    """A process that replays ``calls`` (a plan's half) into the shared cache: the same interpreter,
    environment and import path, so the same fastcnn, cache directory and Numba settings, and this
    process's CPU features (the cache key's), whatever decided them here."""
    code = f"import fastcnn.kernels._warmup as w; w.replay({calls!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "NUMBA_CPU_FEATURES": compiled_features()}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compile_split(first: Callable[[], None], second: Callable[[], None],
                  helper: Callable[[], subprocess.Popen] | None,
                  on_compile: Callable[[], None] | None) -> None:
    """Run ``first`` then ``second``, calling ``on_compile`` when the first real compilation starts.
    If that happens in ``first`` and ``helper`` is given, also start it (a process compiling
    ``second``'s kernels into the cache) and wait for it before ``second``, which then loads them
    from the cache (or compiles what the helper did not). The helper is killed if this process
    stops early."""
    started: list[subprocess.Popen] = []
    in_first = True

    def on_first() -> None:
        if on_compile is not None:
            on_compile()
        if helper is not None and in_first:
            started.append(helper())

    try:
        with first_compile(on_first):
            first()
            in_first = False
            for proc in started:
                proc.wait()
            second()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def warm_up(target: Any = np.float32, *, on_compile: Callable[[float], None] | None = None,
            input_shape: tuple[int, int, int] | None = None, optimizer: Any = "adamw") -> float:
    """Compile or load, before the first batch, the kernels a training step uses; return the
    seconds spent. ``target``: a :class:`~fastcnn.model.Sequential` (what its layers need, for
    batches of ``input_shape``, default its own ``input_shape``), or a dtype, float32 or float64
    (the default MNIST network, :func:`fastcnn.mnist_cnn`, in that dtype). ``on_compile(
    estimated_seconds)`` is called once before the first real compilation, and not at all when
    every kernel loads from the cache. ``optimizer`` (an Optimizer, "adamw", "sgd" or None): whose
    parallel step to compile too (for a dtype: AdamW, fastcnn-train's default)."""
    from fastcnn.model import Sequential
    if isinstance(target, Sequential):
        dtype = next((w.dtype for _, w, _ in target.named_parameters()), np.dtype(np.float32))
        plan = model_plan(target, input_shape) + optimizer_plan(optimizer, dtype)
    else:
        try:
            dt = np.dtype(target)
        except TypeError:
            raise TypeError(f"warm_up needs a Sequential model or a dtype (float32 or float64), "
                            f"got {target!r}") from None
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"warm_up needs float32 or float64, got {dt}")
        plan = mnist_plan(dt)[:-1] + optimizer_plan(optimizer, dt)
    tile_calls, other_calls = split_plan(plan)
    split = CACHE and usable_cpus() >= 2 and bool(tile_calls) and bool(other_calls)
    estimate = ESTIMATED_COMPILE_SECONDS["split" if split else "alone"]
    t0 = time.perf_counter()
    compile_split(lambda: _first_half(tile_calls), lambda: replay(other_calls),
                  (lambda: start_helper(other_calls)) if split else None,
                  None if on_compile is None else (lambda: on_compile(estimate)))
    return time.perf_counter() - t0


def _first_half(calls: list) -> None:
    """This process's half, and the worker threads of parallel_for (their handoff functions
    compile or load here, never in the helper)."""
    replay(calls)
    from fastcnn.kernels._parallel import start_workers
    start_workers()
