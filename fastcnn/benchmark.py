"""Measuring fastcnn: the numbers behind bench/ (the pytest-benchmark suite) and ``fastcnn-bench``.

What lives here, shared by both:

* work counts: FLOPs of a convolution pass (forward, backward-input and backward-weight each cost
  ``2*N*K*C*R*S*P*Q``), bytes a max-pool pass moves, and the FLOPs the mission network spends per
  training image (forward + backward-input for every conv but the first + backward-weight for every
  conv + the linear layer's forward and backward: about 1.37 TFLOP per 60,000-image epoch) and per
  evaluated image;
* the op shapes of the mission network at batch N (:func:`mission_shapes`) and one :class:`OpCase`
  per benchmarked op, with its inputs, its call through the op contract and its check against the
  NumPy reference (:mod:`fastcnn.testing` tolerances), so a wrong fast kernel never posts a time;
* the machine's reference rate (best float32 ``numpy.matmul`` GFLOP/s on large square matrices,
  BLAS at its normal thread count), machine information, and timers for ops, training steps on
  real MNIST batches, evaluation and Numba thread scaling;
* :func:`bench_main`, the ``fastcnn-bench`` command: a compact comparison that prints a table and
  writes ``results.json`` and three PNG charts.

Only the multiply-adds of convolutions and the linear layer are counted as FLOPs (the usual
convention); pooling, ReLU, the loss and the optimizer are memory-bound and counted as free.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastcnn._cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, positive_int, print_error
from fastcnn.convmath import conv_flops, conv_output_size, pool_output_size

BATCH_SIZE = 128
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
BATCHES_PER_EPOCH = math.ceil(TRAIN_IMAGES / BATCH_SIZE)      # 469 (the last one has 96 images)
EVAL_BATCH_SIZE = 1000
BACKEND_ORDER = ("numpy", "numba")                               # reference first, for speedups
MATMUL_N = 2048
SCHEMA = "fastcnn-bench/1"
PROG = "fastcnn-bench"


# ------------------------------------------------------------------------------------ work counts

def pool_forward_bytes(N, C, H, W, kernel=2, stride=None, itemsize=4):
    """Bytes a max-pool forward moves at least: read x, write y and the int32 argmax."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (H * W * itemsize + P * Q * (itemsize + 4))


def pool_backward_bytes(N, C, H, W, kernel=2, stride=None, itemsize=4):
    """Bytes a max-pool backward moves at least: read dy and argmax, write dx."""
    P, Q = pool_output_size(H, W, kernel, stride)
    return N * C * (P * Q * (itemsize + 4) + H * W * itemsize)


def network_flops(model=None, image_shape=(1, 28, 28)):
    """FLOPs per image of a :class:`~fastcnn.model.Sequential` (default: the mission network).

    Returns ``{"train": ..., "eval": ..., "layers": [...]}``. Training counts, per conv, forward +
    backward-weight + backward-input unless the layer needs no input gradient (the first one);
    per linear layer forward + dW + dx. Evaluation counts the forward passes only."""
    from fastcnn.layers import Conv2D, Linear, _Pool2D

    if model is None:
        from fastcnn.model import mnist_cnn
        model = mnist_cnn(backend="numpy")
    C, H, W = image_shape
    layers, train, evaluate = [], 0, 0
    for i, layer in enumerate(model.unfused_layers()):
        if isinstance(layer, Conv2D):
            R, S = layer.kernel_size
            fwd = conv_flops(1, C, H, W, layer.out_channels, R, S, layer.stride, layer.padding)
            passes = 2 + (1 if layer.need_input_grad else 0)
            H, W = layer.output_shape(H, W)
            C = layer.out_channels
        elif isinstance(layer, _Pool2D):
            H, W = pool_output_size(H, W, layer.kernel_size, layer.stride)
            continue
        elif isinstance(layer, Linear):
            fwd = 2 * layer.in_features * layer.out_features
            passes = 3
        else:
            continue
        layers.append({"index": i, "layer": repr(layer), "forward": fwd, "train": passes * fwd})
        train += passes * fwd
        evaluate += fwd
    return {"train": train, "eval": evaluate, "layers": layers}


def mission_flops():
    """The mission network's FLOP budget: per image and per epoch / test set."""
    f = network_flops()
    return {"train_flops_per_image": f["train"], "eval_flops_per_image": f["eval"],
            "epoch_flops": f["train"] * TRAIN_IMAGES, "test_set_flops": f["eval"] * TEST_IMAGES,
            "layers": f["layers"]}


# ------------------------------------------------------------------------------- shapes and op cases

@dataclass(frozen=True)
class ConvShape:
    """One convolution of the network: x (N,C,H,W), w (K,C,R,S)."""
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
    def out_size(self):
        return conv_output_size(self.H, self.W, self.R, self.S, self.stride, self.padding)

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self):
        return (self.K, self.C, self.R, self.S)

    @property
    def y_shape(self):
        return (self.N, self.K, *self.out_size)

    @property
    def flops(self):
        """FLOPs of one pass (forward, backward-input or backward-weight)."""
        return conv_flops(self.N, self.C, self.H, self.W, self.K, self.R, self.S, self.stride, self.padding)


@dataclass(frozen=True)
class FusedShape(ConvShape):
    """The first layer as the model runs it: conv, ReLU and max-pool in one op
    (``conv2d_relu_maxpool_forward`` / ``_backward``); FLOPs are the convolution's."""
    pool: tuple = (2, 2)
    pool_stride: tuple = (2, 2)

    @property
    def pooled_shape(self):
        P, Q = self.out_size
        return (self.N, self.K, *pool_output_size(P, Q, self.pool, self.pool_stride))


@dataclass(frozen=True)
class PoolShape:
    """One max-pool of the network (ReLU fused, as Sequential runs it): x (N,C,H,W)."""
    layer: str
    N: int
    C: int
    H: int
    W: int
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def y_shape(self):
        return (self.N, self.C, *pool_output_size(self.H, self.W, self.kernel, self.stride))

    def forward_bytes(self, itemsize=4):
        return pool_forward_bytes(self.N, self.C, self.H, self.W, self.kernel, self.stride, itemsize)

    def backward_bytes(self, itemsize=4):
        return pool_backward_bytes(self.N, self.C, self.H, self.W, self.kernel, self.stride, itemsize)


def mission_shapes(batch=BATCH_SIZE):
    """The mission network's conv and pool shapes at batch ``batch``, in network order."""
    return {
        "conv1": ConvShape("conv1", batch, 1, 28, 28, 32),
        "pool1": PoolShape("pool1", batch, 32, 28, 28),
        "conv2": ConvShape("conv2", batch, 32, 14, 14, 64),
        "pool2": PoolShape("pool2", batch, 64, 14, 14),
    }


@dataclass
class OpCase:
    """One benchmarked op: how to make its inputs, call it through a backend, and check it.

    ``work`` is FLOPs (``unit == "GFLOP/s"``) or bytes (``"GB/s"``) per call."""
    layer: str
    kind: str
    unit: str
    work: int
    shape: object
    note: str = ""
    dtype: object = np.float32

    @property
    def name(self):
        return f"{self.layer} {self.kind}"

    @property
    def id(self):
        return self.name.replace(" ", "-")

    @property
    def is_conv(self):
        return isinstance(self.shape, ConvShape)

    def make_inputs(self, seed=0):
        """Random inputs at the case's shape (float32 standard normal, He-scaled weights)."""
        rng = np.random.default_rng(seed)
        dt = np.dtype(self.dtype)

        def normal(shape, scale=1.0):
            return (rng.standard_normal(shape) * scale).astype(dt)

        s = self.shape
        if isinstance(s, FusedShape):
            x = normal(s.x_shape)
            w = normal(s.w_shape, math.sqrt(2.0 / (s.C * s.R * s.S)))
            b = normal((s.K,), 0.1)
            if self.kind == "forward":
                return {"x": x, "w": w, "b": b}
            from fastcnn import reference
            _, argmax = reference.conv2d_relu_maxpool_forward(x, w, b, s.stride, s.padding, s.pool, s.pool_stride)
            return {"dy": normal(s.pooled_shape), "argmax": argmax, "x": x, "w": w}
        if self.is_conv:
            x = normal(s.x_shape)
            w = normal(s.w_shape, math.sqrt(2.0 / (s.C * s.R * s.S)))
            if self.kind == "forward":
                return {"x": x, "w": w, "b": normal((s.K,), 0.1)}
            return {"dy": normal(s.y_shape), "x": x, "w": w}
        x = normal(s.x_shape)
        if self.kind == "forward":
            return {"x": x}
        from fastcnn import reference
        _, argmax = reference.maxpool2d_forward(x, s.kernel, s.stride, relu=True)
        return {"dy": normal(s.y_shape), "argmax": argmax}

    def run(self, ops, inputs):
        """Call the op through ``ops`` (a backend module); returns a tuple of result arrays."""
        s = self.shape
        if isinstance(s, FusedShape):
            if self.kind == "forward":        # argmax is not compared: a near-tie may go either way
                return ops.conv2d_relu_maxpool_forward(inputs["x"], inputs["w"], inputs["b"], s.stride,
                                                       s.padding, s.pool, s.pool_stride)[:1]
            return tuple(ops.conv2d_relu_maxpool_backward(inputs["dy"], inputs["argmax"], inputs["x"],
                                                          inputs["w"], s.stride, s.padding, s.pool,
                                                          s.pool_stride))
        if self.is_conv:
            if self.kind == "forward":
                return (ops.conv2d_forward(inputs["x"], inputs["w"], inputs["b"], s.stride, s.padding),)
            need_dx = self.kind == "backward-input+weight"
            dx, dw, db = ops.conv2d_backward(inputs["dy"], inputs["x"], inputs["w"], s.stride, s.padding,
                                             need_dx=need_dx)
            return (dx, dw, db) if need_dx else (dw, db)
        if self.kind == "forward":
            return tuple(ops.maxpool2d_forward(inputs["x"], s.kernel, s.stride, relu=True))
        return (ops.maxpool2d_backward(inputs["dy"], inputs["argmax"], s.x_shape, s.kernel, s.stride),)

    def result_names(self):
        if isinstance(self.shape, FusedShape):
            return ("y",) if self.kind == "forward" else ("dw", "db")
        if self.is_conv:
            return {"forward": ("y",), "backward-weight": ("dw", "db"),
                    "backward-input+weight": ("dx", "dw", "db")}[self.kind]
        return ("y", "argmax") if self.kind == "forward" else ("dx",)

    def check(self, result, expected):
        """Raise AssertionError unless ``result`` agrees with the reference's ``expected``
        (floats within :func:`fastcnn.testing.assert_agree`, integer argmax exactly)."""
        from fastcnn.testing import assert_agree
        if len(result) != len(expected):
            raise AssertionError(f"{self.name}: {len(result)} results, reference has {len(expected)}")
        for what, got, want in zip(self.result_names(), result, expected):
            what = f"{self.name}: {what}"
            if np.issubdtype(np.asarray(want).dtype, np.integer):
                if np.shape(got) != np.shape(want) or not np.array_equal(got, want):
                    raise AssertionError(f"{what} differs from the reference")
            else:
                assert_agree(got, want, what)

    def rate(self, seconds):
        """GFLOP/s or GB/s at ``seconds`` per call."""
        return self.work / seconds / 1e9 if seconds and seconds > 0 else None


def op_cases(batch=BATCH_SIZE, dtype=np.float32):
    """Every benchmarked op of the mission network at batch ``batch``, in network order.

    Convolutions: forward; backward-weight (``need_dx=False``: dw and db, all the first layer needs);
    backward-input+weight (``need_dx=True``: dx, dw and db in one call, as the second layer runs it;
    the op contract has no dx-only call, so backward-input alone is derived as the difference).
    Max-pools (ReLU fused, as :class:`~fastcnn.model.Sequential` runs them): forward and backward.
    ``conv1+pool1``: the first layer as the model runs it, one fused op (forward; backward-weight,
    which takes the pooled gradient)."""
    shapes = mission_shapes(batch)
    isz = np.dtype(dtype).itemsize
    cases = []
    for layer in ("conv1", "pool1", "conv1+pool1", "conv2", "pool2"):
        if layer == "conv1+pool1":
            c1 = shapes["conv1"]
            s = FusedShape(layer, c1.N, c1.C, c1.H, c1.W, c1.K, c1.R, c1.S, c1.stride, c1.padding)
            cases.append(OpCase(layer, "forward", "GFLOP/s", s.flops, s, dtype=dtype,
                                note="conv1 + ReLU + pool1 fused, as the model runs them"))
            cases.append(OpCase(layer, "backward-weight", "GFLOP/s", s.flops, s, dtype=dtype,
                                note="dw, db from the pooled gradient, as the model runs them"))
            continue
        s = shapes[layer]
        fused = "the model runs it inside the fused conv1+pool1 op" if layer in ("conv1", "pool1") else ""

        def note(*parts):
            return "; ".join(p for p in (*parts, fused) if p)

        if isinstance(s, ConvShape):
            cases.append(OpCase(layer, "forward", "GFLOP/s", s.flops, s, dtype=dtype, note=note()))
            cases.append(OpCase(layer, "backward-weight", "GFLOP/s", s.flops, s, dtype=dtype,
                                note=note("dw, db (need_dx=False)")))
            note = "dx, dw, db" + (" (not run in training: the first layer needs no dx)"
                                   if layer == "conv1" else "")
            cases.append(OpCase(layer, "backward-input+weight", "GFLOP/s", 2 * s.flops, s, dtype=dtype,
                                note=note))
        else:
            cases.append(OpCase(layer, "forward", "GB/s", s.forward_bytes(isz), s, dtype=dtype,
                                note=note("ReLU fused")))
            cases.append(OpCase(layer, "backward", "GB/s", s.backward_bytes(isz), s, dtype=dtype, note=note()))
    return cases


def warm_up_kernels(backends=("numba",), batch=2):
    """Compile every kernel the benchmarks and training use (tiny batch, same dtypes and code
    paths as the real shapes); returns the seconds it took."""
    from fastcnn.backend import blas_guard, get_backend
    t0 = time.perf_counter()
    for name in backends:
        ops = get_backend(name)
        with blas_guard(name):
            for case in op_cases(batch):
                case.run(ops, case.make_inputs())
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------- timing

def time_calls(fn, *, min_rounds=5, min_time=0.2, max_rounds=1000, warmup=1):
    """Call ``fn()`` ``warmup`` times untimed, then at least ``min_rounds`` times and until
    ``min_time`` seconds have passed; returns the list of per-call seconds."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < min_rounds or (time.perf_counter() - start < min_time and len(times) < max_rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure_matmul(n=MATMUL_N, repeats=5, dtype=np.float32, min_time=0.0):
    """The machine's reference rate: the best of at least ``repeats`` calls (and ``min_time``
    seconds) of ``numpy.matmul`` on two n x n matrices, after one warm-up call, with BLAS at its
    normal thread count. The best, not the mean: on a shared machine another process taking a core
    halves a single call's rate. Returns a dict with ``gflops``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    times = time_calls(lambda: np.matmul(a, b, out=c), min_rounds=repeats, min_time=min_time, warmup=1)
    best = min(times)
    return {"n": n, "dtype": np.dtype(dtype).name, "repeats": len(times), "seconds": best,
            "gflops": 2.0 * n ** 3 / best / 1e9}


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        return [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                           "architecture")}
                for info in threadpool_info() if info.get("user_api") == "blas"]
    except Exception:                                      # pragma: no cover - informational only
        return []


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info():
    """CPU model, cores, library versions, Numba threading and BLAS (for the JSON and chart titles)."""
    import numba
    import fastcnn
    try:
        layer = numba.threading_layer()
    except ValueError:                                     # no parallel region has run yet
        layer = f"not started ({numba.config.THREADING_LAYER})"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:                                 # pragma: no cover - not Linux
        usable = os.cpu_count()
    try:
        import matplotlib
        mpl = matplotlib.__version__
    except ImportError:                                    # pragma: no cover
        mpl = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):                      # pragma: no cover - not Unix
        load = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "matplotlib": mpl,
        "fastcnn": fastcnn.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
        "numba_threading_layer": layer,
        "blas": blas_threads(),
        "load_average": load,          # 1/5/15 min: other work on the machine skews timings
    }


def machine_label(info):
    """One line for chart titles: CPU, cores and library versions."""
    blas = info.get("blas") or []
    blas_txt = f" ({blas[0]['internal_api']} {blas[0]['version']})" if blas else ""
    return (f"{info['cpu_model']}, {info['cpu_count']} cores | Python {info['python']}, "
            f"NumPy {info['numpy']}{blas_txt}, Numba {info['numba']} ({info['numba_threading_layer']})")


# ------------------------------------------------------------------------- training and evaluation

def mnist_batches(dataset, count, batch_size=BATCH_SIZE, seed=0, dtype=np.float32):
    """``count`` real training batches (x float32 normalised, y int64) in a seeded shuffled order."""
    from fastcnn.data import to_float
    order = np.random.default_rng(seed).permutation(len(dataset.x_train))
    count = max(1, min(count, len(order) // batch_size))
    out = []
    for i in range(count):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
        out.append((to_float(dataset.x_train[idx], dtype), dataset.y_train[idx]))
    return out


def eval_data(dataset, images, dtype=np.float32):
    """The first ``images`` test images (float32) and labels, as one pair of arrays."""
    from fastcnn.data import to_float
    images = max(1, min(images, len(dataset.x_test)))
    return to_float(dataset.x_test[:images], dtype), dataset.y_test[:images]


def make_trainer(backend, seed=0):
    """The mission network on ``backend`` with AdamW(lr=1e-3), as fastcnn-train builds it."""
    from fastcnn.model import mnist_cnn
    from fastcnn.optim import AdamW
    model = mnist_cnn(seed=seed, backend=backend)
    return model, AdamW(model, lr=1e-3)


def train_step_result(backend, batch, seed=0):
    """One training step from the seeded initial weights: (loss, {param name: gradient})."""
    model, opt = make_trainer(backend, seed)
    loss, _ = model.train_step(batch[0], batch[1], opt)
    return loss, {name: np.array(g, copy=True) for name, _, g in model.named_parameters()}


def check_train_step(backend, batch, expected, seed=0):
    """Raise AssertionError unless one training step on ``backend`` gives the reference's loss
    and gradients (``expected`` from :func:`train_step_result` on "numpy")."""
    from fastcnn.testing import assert_agree
    loss, grads = train_step_result(backend, batch, seed)
    ref_loss, ref_grads = expected
    assert_agree(np.float32(loss), np.float32(ref_loss), f"{backend} training step: loss")
    for name, g in ref_grads.items():
        assert_agree(grads[name], g, f"{backend} training step: gradient of {name}")


def eval_logits(backend, x, seed=0):
    model, _ = make_trainer(backend, seed)
    return model.forward(x, training=False)


def check_eval(backend, x, expected_logits, seed=0):
    """Raise AssertionError unless the backend's evaluation logits agree with the reference's."""
    from fastcnn.testing import assert_agree
    assert_agree(eval_logits(backend, x, seed), expected_logits, f"{backend} evaluation logits")


def measure_training(backend, batches, warmup=2, seed=0):
    """Time ``train_step`` over real batches: the first ``warmup`` are run untimed, the rest timed
    one by one. An epoch is extrapolated from the rate: 60,000 images = 469 batches of 128, the
    last one holding 96. Returns seconds per batch (mean and median), images/s, the seconds one
    60,000-image epoch takes at that rate, and the process's CPU seconds per wall second (about the
    number of threads at work: well below it when other programs took the cores)."""
    model, opt = make_trainer(backend, seed)
    warmup = min(warmup, len(batches) - 1)
    for x, y in batches[:warmup]:
        model.train_step(x, y, opt)
    times, images = [], 0
    cpu0 = time.process_time()
    for x, y in batches[warmup:]:
        t = time.perf_counter()
        model.train_step(x, y, opt)
        times.append(time.perf_counter() - t)
        images += len(x)
    total = sum(times)
    rate = images / total
    return {"backend": backend, "batches": len(times), "warmup_batches": warmup, "images": images,
            "seconds_per_batch": total / len(times), "median_seconds_per_batch": float(np.median(times)),
            "images_per_s": rate, "epoch_seconds": TRAIN_IMAGES / rate,
            "cpu_seconds_per_second": (time.process_time() - cpu0) / total}


def measure_evaluation(backend, x, y, batch_size=EVAL_BATCH_SIZE, seed=0, repeats=3):
    """Time ``model.evaluate`` over (x, y) ``repeats`` times after one untimed warm-up batch and
    keep the fastest pass (as for the ops: the least disturbed by other programs, and by the
    previous backend's BLAS threads still spinning down); extrapolate to the 10,000-image test set."""
    model, _ = make_trainer(backend, seed)
    model.evaluate(x[:batch_size], y[:batch_size], batch_size)
    passes = []
    for _ in range(repeats):
        cpu0, t = time.process_time(), time.perf_counter()
        model.evaluate(x, y, batch_size)
        seconds = time.perf_counter() - t
        passes.append((seconds, (time.process_time() - cpu0) / seconds))
    seconds, cpu_per_second = min(passes)
    rate = len(x) / seconds
    return {"backend": backend, "images": len(x), "batch_size": batch_size, "seconds": seconds,
            "pass_seconds": [p[0] for p in passes], "images_per_s": rate,
            "test_set_seconds": TEST_IMAGES / rate, "cpu_seconds_per_second": cpu_per_second}


def thread_counts(max_threads):
    """1..max_threads, thinned to powers of two (plus the maximum) beyond 8."""
    if max_threads <= 8:
        return list(range(1, max_threads + 1))
    counts = [1 << i for i in range(int(math.log2(max_threads)) + 1)]
    return counts + ([max_threads] if counts[-1] != max_threads else [])


def measure_thread_scaling(batches, max_threads, warmup=2, seed=0):
    """Numba training epoch time at 1..max_threads threads (``numba.set_num_threads``)."""
    import numba
    before = numba.get_num_threads()
    rows = []
    try:
        for t in thread_counts(max_threads):
            numba.set_num_threads(t)
            row = measure_training("numba", batches, warmup, seed)
            row["threads"] = t
            rows.append(row)
    finally:
        numba.set_num_threads(before)
    base = rows[0]["epoch_seconds"]
    for row in rows:
        row["speedup"] = base / row["epoch_seconds"]
        row["efficiency"] = row["speedup"] / row["threads"]
    return rows


def record_rate(benchmark, work, unit="GFLOP/s", matmul_gflops=None, /, **extra):
    """For the pytest-benchmark suite: after ``benchmark`` ran, store the rate of its median round
    (``work`` FLOPs or bytes per round) in ``benchmark.extra_info`` as ``gflops`` (and
    ``fraction_of_matmul``) or ``gbytes_per_s``, plus ``extra``. Returns the rate, or None when
    benchmarking is disabled."""
    benchmark.extra_info.update(extra)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None or not stats.median:
        return None
    rate = work / stats.median / 1e9
    if unit == "GFLOP/s":
        benchmark.extra_info["gflops"] = round(rate, 3)
        if matmul_gflops:
            benchmark.extra_info["fraction_of_matmul"] = round(rate / matmul_gflops, 4)
    else:
        benchmark.extra_info["gbytes_per_s"] = round(rate, 3)
    return rate


# ------------------------------------------------------------------------------- the whole run

@dataclass
class Settings:
    out: Path = Path("bench-results")
    backends: tuple = BACKEND_ORDER
    threads: int = 0
    quick: bool = False
    batches: int = 0
    reference_batches: int = 0
    warmup_batches: int = 2
    eval_images: int = TEST_IMAGES
    eval_repeats: int = 3
    op_min_rounds: int = 5
    op_min_time: float = 0.25
    matmul_n: int = MATMUL_N
    matmul_repeats: int = 5
    matmul_min_time: float = 1.5
    data_dir: object = None
    seed: int = 0
    charts: bool = True
    extra: dict = field(default_factory=dict)


def _log(msg):
    print(f"[fastcnn-bench] {msg}", file=sys.stderr, flush=True)


def run_benchmarks(settings, log=_log):
    """Measure everything ``fastcnn-bench`` reports; returns the results dict (see results.json)."""
    from fastcnn.data import load_dataset

    started = time.perf_counter()
    s = settings
    try:
        load_at_start = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):                      # pragma: no cover - not Unix
        load_at_start = None
    flops = mission_flops()
    results = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "settings": {}, "machine": {}, "matmul": {}, "network": {}, "ops": [], "training": {},
               "evaluation": {}, "thread_scaling": []}

    dataset = load_dataset("mnist", data_dir=s.data_dir)                # fail early if it is missing
    log(f"MNIST from {dataset.source_dir}")
    log(f"matmul reference: float32 {s.matmul_n}x{s.matmul_n}, best of >= {s.matmul_repeats} calls "
        f"and {s.matmul_min_time} s")
    # before any Numba thread exists, BLAS at its normal thread count
    mm = measure_matmul(s.matmul_n, s.matmul_repeats, min_time=s.matmul_min_time)
    results["matmul"] = mm
    rate = mm["gflops"] * 1e9
    results["network"] = {**flops, "batches_per_epoch": BATCHES_PER_EPOCH,
                          "ideal_epoch_seconds": flops["epoch_flops"] / rate,
                          "ideal_test_set_seconds": flops["test_set_flops"] / rate}

    if "numba" in s.backends:
        log("compiling the Numba kernels (not timed)")
        results["compile_seconds"] = warm_up_kernels(("numba",))

    # ---- ops
    log(f"ops at batch {BATCH_SIZE}, float32 (each checked against the reference first)")
    results["ops"] = measure_ops(op_cases(BATCH_SIZE), s.backends, mm["gflops"], min_rounds=s.op_min_rounds,
                                 min_time=s.op_min_time, seed=s.seed)

    # ---- training
    n_numba = s.batches
    n_ref = s.reference_batches
    need = s.warmup_batches + max(n_numba if "numba" in s.backends else 0, n_ref if "numpy" in s.backends else 0)
    batches = mnist_batches(dataset, need, seed=s.seed)
    expected = train_step_result("numpy", batches[0], s.seed)
    for name in s.backends:
        count = n_ref if name == "numpy" else n_numba
        log(f"training on {name}: {s.warmup_batches} warm-up + {count} timed batches of {BATCH_SIZE}")
        check_train_step(name, batches[0], expected, s.seed)
        row = measure_training(name, batches[:s.warmup_batches + count], s.warmup_batches, s.seed)
        row["gflops"] = flops["train_flops_per_image"] * row["images_per_s"] / 1e9
        row["fraction_of_matmul"] = row["gflops"] / mm["gflops"]
        row["ideal_epoch_seconds"] = results["network"]["ideal_epoch_seconds"]
        row["ratio_to_ideal"] = row["epoch_seconds"] / row["ideal_epoch_seconds"]
        row["checked"] = True
        results["training"][name] = row
    if {"numpy", "numba"} <= set(results["training"]):
        results["training_speedup"] = (results["training"]["numpy"]["epoch_seconds"]
                                       / results["training"]["numba"]["epoch_seconds"])

    # ---- evaluation
    x_test, y_test = eval_data(dataset, s.eval_images)
    ref_logits = eval_logits("numpy", x_test[:EVAL_BATCH_SIZE], s.seed)
    for name in s.backends:
        log(f"evaluation on {name}: {len(x_test)} test images in batches of {EVAL_BATCH_SIZE}")
        check_eval(name, x_test[:EVAL_BATCH_SIZE], ref_logits, s.seed)
        row = measure_evaluation(name, x_test, y_test, seed=s.seed, repeats=s.eval_repeats)
        row["gflops"] = flops["eval_flops_per_image"] * row["images_per_s"] / 1e9
        row["fraction_of_matmul"] = row["gflops"] / mm["gflops"]
        row["ideal_test_set_seconds"] = results["network"]["ideal_test_set_seconds"]
        row["ratio_to_ideal"] = row["test_set_seconds"] / row["ideal_test_set_seconds"]
        row["checked"] = True
        results["evaluation"][name] = row

    # ---- thread scaling
    if "numba" in s.backends and s.threads >= 1:
        log(f"thread scaling of the Numba training epoch: {thread_counts(s.threads)} threads")
        rows = measure_thread_scaling(batches[:s.warmup_batches + n_numba], s.threads, s.warmup_batches, s.seed)
        for row in rows:
            row["ideal_epoch_seconds"] = results["network"]["ideal_epoch_seconds"]
        results["thread_scaling"] = rows

    results["machine"] = machine_info()          # after the kernels ran: the threading layer is known
    results["machine"]["load_average_at_start"] = load_at_start
    results["contended"] = contended_sections(results)
    results["settings"] = {"quick": s.quick, "backends": list(s.backends), "batch_size": BATCH_SIZE,
                           "dtype": "float32", "batches": {"numba": n_numba, "numpy": n_ref},
                           "warmup_batches": s.warmup_batches, "eval_images": len(x_test),
                           "eval_repeats": s.eval_repeats,
                           "max_threads": s.threads, "op_min_rounds": s.op_min_rounds,
                           "op_min_time": s.op_min_time, "data_dir": str(dataset.source_dir),
                           "seed": s.seed, **s.extra}
    results["elapsed_seconds"] = time.perf_counter() - started
    return results


def time_interleaved(fns, *, min_rounds=5, min_time=0.2, max_rounds=1000, warmup=1):
    """Like :func:`time_calls` for several functions called in turn (f0, f1, f0, f1, ...), so a
    change of machine load hits all of them alike; returns one list of seconds per function."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times, start = [[] for _ in fns], time.perf_counter()
    while len(times[0]) < min_rounds or (time.perf_counter() - start < min_time and len(times[0]) < max_rounds):
        for fn, out in zip(fns, times):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return times


def _op_entry(case, times, matmul_gflops):
    sec = min(times)
    r = case.rate(sec)
    return {"seconds": sec, "median_seconds": float(np.median(times)), "rounds": len(times), "rate": r,
            "checked": True,
            "fraction_of_matmul": r / matmul_gflops if case.is_conv else None}


def measure_ops(cases, backends, matmul_gflops, *, min_rounds=5, min_time=0.25, seed=0):
    """Check, then time, every op case on every backend. ``seconds`` is the best (minimum) time per
    call, the usual micro-benchmark estimate on a machine shared with other work; the median is kept
    too.

    A conv layer's backward-weight and backward-input+weight are timed interleaved, and a derived
    'backward-input' row (the difference of their best times) follows them: the op contract computes
    dx only together with dw."""
    from fastcnn import reference
    from fastcnn.backend import blas_guard, get_backend

    rows, pending = [], {}
    for case in cases:
        inputs = case.make_inputs(seed)
        pending[case.name] = (case, inputs, case.run(reference, inputs))
    by_layer = {}
    for case in cases:
        by_layer.setdefault(case.layer, []).append(case)
    for layer, layer_cases in by_layer.items():
        pair = [c for c in layer_cases if c.kind in ("backward-weight", "backward-input+weight")]
        layer_rows = {c.name: {"name": c.name, "layer": c.layer, "kind": c.kind, "unit": c.unit, "work": c.work,
                               "note": c.note, "derived": False, "backends": {}} for c in layer_cases}
        derived = None
        if len(pair) == 2:
            work = pair[1].work - pair[0].work
            derived = {"name": f"{layer} backward-input", "layer": layer, "kind": "backward-input",
                       "unit": "GFLOP/s", "work": work, "derived": True,
                       "note": "derived: best backward-input+weight time minus best backward-weight time"
                               + ("; not run in training" if layer == "conv1" else ""),
                       "backends": {}}
        for name in backends:
            ops = get_backend(name)
            with blas_guard(name):
                calls = {}
                for c in layer_cases:
                    _, inputs, expected = pending[c.name]
                    c.check(c.run(ops, inputs), expected)
                    calls[c.name] = (lambda c=c, inputs=inputs: c.run(ops, inputs))
                for c in layer_cases:
                    if c in pair and derived is not None:
                        continue
                    times = time_calls(calls[c.name], min_rounds=min_rounds, min_time=min_time)
                    layer_rows[c.name]["backends"][name] = _op_entry(c, times, matmul_gflops)
                if derived is not None:
                    tw, tb = time_interleaved([calls[pair[0].name], calls[pair[1].name]],
                                              min_rounds=min_rounds, min_time=2 * min_time)
                    for c, times in zip(pair, (tw, tb)):
                        layer_rows[c.name]["backends"][name] = _op_entry(c, times, matmul_gflops)
                    diff = min(tb) - min(tw)
                    sec = diff if diff > 0 else None
                    r = work / sec / 1e9 if sec else None
                    derived["backends"][name] = {"seconds": sec, "rounds": len(tw), "rate": r, "checked": True,
                                                 "fraction_of_matmul": r / matmul_gflops if r else None}
        rows += list(layer_rows.values()) + ([derived] if derived else [])
    for row in rows:
        b = row["backends"]
        row["speedup"] = (b["numpy"]["seconds"] / b["numba"]["seconds"]
                          if b.get("numpy", {}).get("seconds") and b.get("numba", {}).get("seconds") else None)
    return rows


# --------------------------------------------------------------------------------- report

def _fmt_time(sec):
    if sec is None:
        return "-"
    return f"{sec * 1e3:.2f} ms" if sec < 1 else f"{sec:.2f} s"


def _fmt(v, spec, suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _table(headers, rows, align=None):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    align = align or ["<"] + [">"] * (len(headers) - 1)
    line = lambda cells: "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def contended_sections(results, threshold=0.8):
    """Names of the Numba measurements whose process got less than ``threshold`` x the thread
    count in CPU seconds per wall second: other programs had the cores."""
    threads = results["machine"].get("numba_threads") or 1
    out = []
    for section in ("training", "evaluation"):
        row = results[section].get("numba")
        if row and row.get("cpu_seconds_per_second", threads) < threshold * threads:
            out.append(f"numba {section}")
    for row in results.get("thread_scaling", []):
        if row.get("cpu_seconds_per_second", row["threads"]) < threshold * row["threads"]:
            out.append(f"thread scaling at {row['threads']} threads")
    return out


def format_report(results):
    """The human-readable tables fastcnn-bench prints."""
    m, mm, net = results["machine"], results["matmul"], results["network"]
    backends = results["settings"]["backends"]
    both = "numpy" in backends and "numba" in backends
    blas = m.get("blas") or []
    blas_txt = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)" for b in blas) or "?"
    out = [f"fastcnn-bench on {m['cpu_model']} ({m['cpu_count']} cores), Python {m['python']}, "
           f"NumPy {m['numpy']}, Numba {m['numba']} ({m['numba_threading_layer']}, "
           f"{m['numba_threads']} threads), BLAS {blas_txt}",
           f"matmul reference: float32 {mm['n']}x{mm['n']} numpy.matmul = {mm['gflops']:.1f} GFLOP/s "
           f"(best of {mm['repeats']}); every fraction below is of this rate", ""]

    headers = ["op (batch 128, float32; best time)", "work"]
    headers += [f"{b} time" for b in backends] + [f"{b} rate" for b in backends]
    headers += (["speedup"] if both else []) + [f"{b}/matmul" for b in backends]
    rows = []
    for r in results["ops"]:
        work = f"{r['work'] / 1e6:.0f} MFLOP" if r["unit"] == "GFLOP/s" else f"{r['work'] / 1e6:.1f} MB"
        unit = r["unit"].split("/")[0]
        cells = [("~ " if r["derived"] else "") + r["name"], work]
        cells += [_fmt_time(r["backends"].get(b, {}).get("seconds")) for b in backends]
        cells += [_fmt(r["backends"].get(b, {}).get("rate"), ".1f", f" {unit}/s") for b in backends]
        if both:
            cells.append(_fmt(r.get("speedup"), ".1f", "x"))
        cells += [_fmt(r["backends"].get(b, {}).get("fraction_of_matmul"), ".0%") for b in backends]
        rows.append(cells)
    out += [_table(headers, rows),
            "(~ = derived as backward-input+weight minus backward-weight; pooling moves bytes, so it "
            "has GB/s and no matmul fraction)", ""]

    st = results["settings"]
    out.append(f"Training epoch (60,000 images, batch 128, forward+backward+AdamW, real MNIST; "
               f"{net['epoch_flops'] / 1e12:.3f} TFLOP per epoch)")
    rows = []
    for b in backends:
        t = results["training"].get(b)
        if t:
            rows.append([b, t["batches"], _fmt_time(t["seconds_per_batch"]), f"{t['images_per_s']:.0f}",
                         f"{t['epoch_seconds']:.1f} s", f"{t['ideal_epoch_seconds']:.1f} s",
                         f"{t['ratio_to_ideal']:.1f}x", f"{t['fraction_of_matmul']:.0%}",
                         f"{t['cpu_seconds_per_second']:.2f}"])
    out.append(_table(["backend", "batches", "per batch", "images/s", "s/epoch", "ideal s/epoch",
                       "ratio", "of matmul", "CPU/wall"], rows))
    if results.get("training_speedup"):
        out.append(f"numba speedup per epoch: {results['training_speedup']:.1f}x")
    out.append(f"(ideal = epoch FLOPs at the matmul rate; the first {st['warmup_batches']} batches of "
               "each run are warm-up and not timed)")
    out.append("")

    out.append(f"Evaluation ({st['eval_images']} test images in batches of {EVAL_BATCH_SIZE}, fastest of "
               f"{st.get('eval_repeats', 1)} passes, extrapolated to 10,000; "
               f"{net['test_set_flops'] / 1e9:.1f} GFLOP per test set)")
    rows = []
    for b in backends:
        e = results["evaluation"].get(b)
        if e:
            rows.append([b, f"{e['images_per_s']:.0f}", f"{e['test_set_seconds']:.2f} s",
                         f"{e['ideal_test_set_seconds']:.2f} s", f"{e['ratio_to_ideal']:.1f}x",
                         f"{e['fraction_of_matmul']:.0%}", f"{e['cpu_seconds_per_second']:.2f}"])
    out.append(_table(["backend", "images/s", "s/test set", "ideal", "ratio", "of matmul", "CPU/wall"], rows))

    if results["thread_scaling"]:
        out += ["", "Thread scaling of the Numba training epoch (numba.set_num_threads)"]
        rows = [[r["threads"], _fmt_time(r["seconds_per_batch"]), f"{r['images_per_s']:.0f}",
                 f"{r['epoch_seconds']:.1f} s", f"{r['speedup']:.2f}x", f"{r['efficiency']:.0%}",
                 f"{r['cpu_seconds_per_second']:.2f}"]
                for r in results["thread_scaling"]]
        out.append(_table(["threads", "per batch", "images/s", "s/epoch", "speedup", "efficiency", "CPU/wall"],
                          rows))
        out.append("(CPU/wall: CPU seconds the process got per second; below the thread count, other "
                   "programs had the cores)")
    starved = contended_sections(results)
    if starved:
        out += ["", "note: other programs took cores during " + ", ".join(starved) + " (CPU/wall well "
                "below the Numba thread count): those timings are pessimistic; run again on a quiet machine"]
    out += ["", f"measured in {results['elapsed_seconds']:.0f} s"
            + (f" (kernel compilation {results['compile_seconds']:.0f} s, not timed)"
               if "compile_seconds" in results else "")]
    return "\n".join(out)


# --------------------------------------------------------------------------------- charts

CHARTS = ("speedup_per_op.png", "epoch_seconds.png", "thread_scaling.png")


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _title(fig, title, results):
    fig.suptitle(f"{title}\n{machine_label(results['machine'])}", fontsize=9)


def plot_charts(results, out_dir):
    """Write the three PNG charts into ``out_dir``; returns their paths (pyplot-free, Agg)."""
    out_dir = Path(out_dir)
    paths = []
    colors = {"numpy": "#4c72b0", "numba": "#dd8452", "ideal": "#55a868"}

    # 1. speedup per op
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    rows = [r for r in results["ops"] if r.get("speedup")]
    if rows:
        names = [("~ " if r["derived"] else "") + r["name"] for r in rows][::-1]
        speed = [r["speedup"] for r in rows][::-1]
        bars = ax.barh(names, speed, color=[colors["numba"] if v >= 1 else "#c44e52" for v in speed])
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
        for bar, v in zip(bars, speed):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.1f}x", va="center", fontsize=8)
        ax.set_xlabel("time of the NumPy reference / time of the Numba kernel (log scale; dashed: 1x, "
                      "red: slower)", fontsize=8)
        ax.set_xlim(min(0.5, min(speed) / 1.5), max(speed) * 2)
        ax.tick_params(axis="y", labelsize=8)
    else:
        ax.text(0.5, 0.5, "needs both backends (--backends numpy,numba)", ha="center", va="center")
        ax.set_axis_off()
    _title(fig, "Numba speedup per op, batch 128, float32 (~ = derived)", results)
    fig.tight_layout()
    paths.append(out_dir / CHARTS[0])
    fig.savefig(paths[-1])

    # 2. seconds per epoch and per test set, per backend, with the matmul-rate ideal
    fig = _figure(9, 4.5)
    for i, (section, key, ideal_key, label) in enumerate((
            ("training", "epoch_seconds", "ideal_epoch_seconds", "seconds per 60,000-image training epoch"),
            ("evaluation", "test_set_seconds", "ideal_test_set_seconds", "seconds per 10,000-image test set"))):
        ax = fig.add_subplot(1, 2, i + 1)
        data = results[section]
        names = [b for b in BACKEND_ORDER if b in data] + ["ideal (matmul rate)"]
        ideal = results["network"][ideal_key]
        vals = [data[b][key] for b in BACKEND_ORDER if b in data] + [ideal]
        bars = ax.bar(names, vals, color=[colors.get(b, colors["ideal"]) for b in names])
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.1f} s", ha="center",
                    va="bottom", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(0, max(vals) * 1.15)
    _title(fig, "MNIST training epoch and evaluation time per backend (batch 128, float32)", results)
    fig.tight_layout()
    paths.append(out_dir / CHARTS[1])
    fig.savefig(paths[-1])

    # 3. thread scaling
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    rows = results["thread_scaling"]
    if rows:
        th = [r["threads"] for r in rows]
        sec = [r["epoch_seconds"] for r in rows]
        ax.plot(th, sec, "o-", color=colors["numba"], label="Numba, measured")
        ax.plot(th, [sec[0] / t for t in th], "--", color="gray", label="perfect scaling from 1 thread")
        ax.axhline(results["network"]["ideal_epoch_seconds"], color=colors["ideal"], ls=":",
                   label=f"ideal at the matmul rate ({results['matmul']['gflops']:.0f} GFLOP/s)")
        for t, v, r in zip(th, sec, rows):
            ax.annotate(f"{v:.1f} s ({r['speedup']:.2f}x)", (t, v), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
        ax.set_xticks(th)
        ax.set_xlim(0.5, th[-1] + 0.5 + 0.15 * len(th))
        ax.set_xlabel("Numba threads (numba.set_num_threads)")
        ax.set_ylabel("seconds per 60,000-image epoch")
        ax.set_ylim(0, max(sec) * 1.2)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no thread scaling measured (numba backend not selected)", ha="center", va="center")
        ax.set_axis_off()
    _title(fig, "Thread scaling of the Numba training epoch", results)
    fig.tight_layout()
    paths.append(out_dir / CHARTS[2])
    fig.savefig(paths[-1])
    return paths


# --------------------------------------------------------------------------------- the command

def _backends(text):
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in BACKEND_ORDER]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(BACKEND_ORDER)}, "
                                         f"got {text!r}")
    return tuple(b for b in BACKEND_ORDER if b in names)


def build_parser():
    p = Parser(prog=PROG,
                description="Compare the NumPy reference and the Numba kernels of fastcnn: per op at the "
                            "MNIST network's training shapes, per training epoch and evaluation on real "
                            "MNIST, and Numba thread scaling. Prints a table; writes results.json and "
                            "PNG charts.")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="output folder for results.json and the charts (default: bench-results/)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="thread scaling of the Numba epoch over 1..N threads (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="fewer batches, rounds and test images (about a minute, mostly compilation)")
    p.add_argument("--batches", type=positive_int, default=None,
                   help="timed training batches for the Numba backend and per thread count "
                        "(default 60, quick 15); the NumPy reference gets at most 20 (quick 5)")
    p.add_argument("--backends", type=_backends, default=BACKEND_ORDER,
                   help="comma-separated backends to time (default: numpy,numba); results are "
                        "always checked against the NumPy reference")
    p.add_argument("--eval-images", type=positive_int, default=None,
                   help="test images timed for evaluation (default 10000, quick 2000)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the MNIST IDX files (default: $FASTCNN_DATA_DIR, then the cache, "
                        "then a download)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    return p


def settings_from_args(args):
    import numba
    quick = args.quick
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = args.threads if args.threads is not None else max_threads
    if threads > max_threads:
        raise ValueError(f"--threads {threads} exceeds the {max_threads} threads Numba was started with "
                         f"(set NUMBA_NUM_THREADS={threads} to allow more)")
    batches = args.batches or (15 if quick else 60)
    return Settings(
        out=args.out, backends=args.backends, threads=threads, quick=quick, batches=batches,
        reference_batches=min(batches, 5 if quick else 20), warmup_batches=2 if quick else 3,
        eval_images=args.eval_images or (2000 if quick else TEST_IMAGES), eval_repeats=1 if quick else 3,
        op_min_rounds=5 if quick else 10, op_min_time=0.1 if quick else 0.5,
        matmul_n=MATMUL_N, matmul_repeats=5, matmul_min_time=0.5 if quick else 1.5,
        data_dir=args.data_dir, charts=not args.no_charts)


def bench_main(argv=None):
    """The ``fastcnn-bench`` command. Returns the exit status (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print_error(PROG, f"{exc} (see {PROG} --help)")
        return EXIT_USAGE
    except SystemExit as exc:                               # --help
        return int(exc.code or 0)
    try:
        settings = settings_from_args(args)
        settings.out.mkdir(parents=True, exist_ok=True)
        results = run_benchmarks(settings)
        print(format_report(results), flush=True)
        json_path = settings.out / "results.json"
        json_path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n", encoding="utf-8")
        written = [json_path]
        if settings.charts:
            written += plot_charts(results, settings.out)
        print("wrote " + ", ".join(str(p) for p in written), flush=True)
        return 0
    except KeyboardInterrupt:
        print_error(PROG, "interrupted")
        return EXIT_INTERRUPTED
    except AssertionError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "a result disagrees with the reference"
        print_error(PROG, f"check against the NumPy reference failed: {msg}")
        return EXIT_ERROR
    except Exception as exc:                                # noqa: BLE001 - one line, no traceback
        print_error(PROG, str(exc) or type(exc).__name__)
        return EXIT_ERROR


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":                                  # pragma: no cover
    sys.exit(bench_main())
