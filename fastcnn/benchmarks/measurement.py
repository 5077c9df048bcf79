"""How fastcnn-bench and bench/ measure: timers (their contention marks: :mod:`fastcnn.cpumeter`), the
``numpy.matmul`` rate, machine information, and the op, training, evaluation and thread-scaling
measurements, each checked against the NumPy reference before it is timed."""
from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np

import fastcnn
from fastcnn import reference
from fastcnn.backend import blas_guard, get_backend, usable_cpus
from fastcnn.benchmarks.op_cases import OpCase
from fastcnn.benchmarks.workload import BATCH_SIZE, BLOCK_BATCHES, EVAL_BATCH_SIZE, TEST_IMAGES, TRAIN_IMAGES
from fastcnn.cpumeter import CpuMeter
from fastcnn.data import to_float
from fastcnn.model import mnist_cnn
from fastcnn.optim import AdamW
from fastcnn.testing import assert_agree
from fastcnn.train import DEFAULT_LR, DEFAULT_WEIGHT_DECAY

MATMUL_N = 2048


# ------------------------------------------------------------------------------------------ timers

def time_calls(fn: Callable, *, min_rounds: int = 5, min_time: float = 0.2, max_rounds: int = 1000,
               warmup: int = 1) -> list[float]:
    """Call ``fn()`` ``warmup`` times untimed, then at least ``min_rounds`` times and until
    ``min_time`` seconds have passed; returns the list of per-call seconds."""
    return time_interleaved([fn], min_rounds=min_rounds, min_time=min_time, max_rounds=max_rounds,
                            warmup=warmup)[0]


SETTLE_SECONDS = 0.02   # the pause before each call (an op's) or block of steps when frameworks alternate


def time_interleaved(fns: list[Callable], *, min_rounds: int = 5, min_time: float = 0.2, max_rounds: int = 1000,
                     warmup: int = 1, settle: float = 0.0) -> list[list[float]]:
    """Call several functions in turn (f0, f1, f0, f1, ...), so a change of machine load hits all
    of them alike; returns one list of per-call seconds per function. ``settle``: seconds to sleep,
    then one untimed call, before each timed call: one framework's threads still spinning after its
    call do not share the cores with the next (see measure_steps), and each call is timed right
    after one of its own, as in a loop of its own (a call straight after a sleep runs on cold
    caches and an idle core)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_rounds or (time.perf_counter() - start < min_time and len(times[0]) < max_rounds):
        for fn, out in zip(fns, times):
            if settle:
                time.sleep(settle)
                fn()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return times


# ------------------------------------------------------------------------------ reference rates

def measure_matmul(n: int = MATMUL_N, repeats: int = 5, dtype=np.float32, min_time: float = 0.0,
                   threads: int | None = None) -> dict:
    """The best of at least ``repeats`` calls (and ``min_time`` seconds) of ``numpy.matmul`` on two
    n x n matrices, BLAS on ``threads`` threads (None: its normal thread count). Pass the threads
    every other measurement uses: on a machine with more cores than those, BLAS on all of them
    would outrun a yardstick it is compared with. The best, not the mean: another process taking a
    core halves a single call's rate."""
    from threadpoolctl import threadpool_limits  # lazy, as everywhere: it inspects every loaded library

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        used = max((lib.get("num_threads") or 1 for lib in blas_info()), default=1)
        with CpuMeter() as meter:
            times = time_calls(lambda: np.matmul(a, b, out=c), min_rounds=repeats, min_time=min_time, warmup=1)
    best = min(times)
    return {"n": n, "dtype": np.dtype(dtype).name, "repeats": len(times), "seconds": best, "threads": used,
            "gflops": 2.0 * n ** 3 / best / 1e9, **meter.summary(used)}


def blas_info() -> list[dict]:
    """The BLAS libraries NumPy loaded, from threadpoolctl: API, version, threads, core type."""
    try:
        from threadpoolctl import threadpool_info
        return [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                           "architecture")}
                for info in threadpool_info() if info.get("user_api") == "blas"]
    except Exception:                                      # noqa: BLE001 - informational only
        return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict:
    """CPU model, cores, library versions, Numba threading and BLAS (for the JSON and chart titles)."""
    import matplotlib
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:                                     # no parallel region has run yet
        layer = f"not started ({numba.config.THREADING_LAYER})"
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):                      # pragma: no cover - not Unix
        load = None
    from fastcnn.kernels._config import wide_vectors_in_use
    from fastcnn.kernels._tile import MR, NR
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "matplotlib": matplotlib.__version__, "fastcnn": fastcnn.__version__,
            "numba_threads": numba.get_num_threads(), "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
            "numba_threading_layer": layer, "register_tile": f"{MR}x{NR}", "wide_vectors": wide_vectors_in_use(),
            "blas": blas_info(), "load_average": load}


def machine_label(info: dict) -> str:
    """One line for chart titles: CPU, cores and library versions."""
    blas = info.get("blas") or []
    blas_txt = f" ({blas[0]['internal_api']} {blas[0]['version']})" if blas else ""
    return (f"{info['cpu_model']}, {info['cpu_count']} cores | Python {info['python']}, "
            f"NumPy {info['numpy']}{blas_txt}, Numba {info['numba']} ({info['numba_threading_layer']})")


# ------------------------------------------------------------------------------------------- ops

def warm_up_kernels(cases: list[OpCase], backends: tuple = ("numba",)) -> float:
    """Compile every kernel ``cases`` use (pass them at a tiny batch: same dtypes and code paths as
    the real shapes); returns the seconds it took."""
    t0 = time.perf_counter()
    for name in backends:
        ops = get_backend(name)
        with blas_guard(name):
            for case in cases:
                case.run(ops, case.make_inputs())
    return time.perf_counter() - t0


class FastcnnRunner:
    """Runs op cases through one fastcnn backend (the NumPy reference or the Numba kernels)."""

    def __init__(self, name: str):
        self.name = name
        self.ops = get_backend(name)

    def guard(self):
        return blas_guard(self.name)

    def call(self, case: OpCase, inputs: dict) -> Callable | None:
        return lambda: case.run(self.ops, inputs)


def _entry(case: OpCase, times: list[float], meter: dict) -> dict:
    sec = min(times)
    return {"seconds": sec, "median_seconds": float(np.median(times)), "rounds": len(times),
            "rate": case.rate(sec), "checked": True, **meter}


def measure_ops(cases: list[OpCase], runners: dict, *, threads: int, min_rounds: int = 5,
                min_time: float = 0.25, seed: int = 0, interleave: tuple = ("numba", "torch")) -> list[dict]:
    """Check, then time, every op case with every runner (name -> object with ``call(case, inputs)``
    returning a function or None, and ``guard()``). ``seconds`` is the best time per call, the usual
    estimate on a shared machine; the median is kept too.

    Runners named in ``interleave`` are timed alternately (same load for both). A convolution's
    backward-weight and backward-input+weight calls are timed together, and a derived
    ``backward-input`` row (the difference of their best times) follows them: the op contract
    computes dx only together with dw."""
    rows = []
    by_layer: dict[str, list[OpCase]] = {}
    for case in cases:
        by_layer.setdefault(case.layer, []).append(case)
    groups = [[n for n in runners if n not in interleave]] + [[n for n in runners if n in interleave]]
    groups = [[n] for n in groups[0]] + ([groups[1]] if groups[1] else [])
    for layer, layer_cases in by_layer.items():
        data = {}
        for case in layer_cases:
            inputs = case.make_inputs(seed)
            data[case.name] = (inputs, case.run(reference, inputs))
        row_of = {c.name: {"name": c.name, "layer": c.layer, "kind": c.kind, "unit": c.unit, "work": c.work,
                           "group": c.group, "intensity": c.intensity, "note": c.note, "derived": False,
                           "sparse": getattr(c, "sparse", False), "backends": {}} for c in layer_cases}
        pair = [c for c in layer_cases if c.kind in ("backward-weight", "backward-input+weight")]
        pair = pair if len(pair) == 2 else []
        units = [pair] if pair else []
        units += [[c] for c in layer_cases if c not in pair]
        for group in groups:
            for unit in units:
                calls = []
                for name in group:
                    runner = runners[name]
                    for case in unit:
                        inputs, expected = data[case.name]
                        fn = runner.call(case, inputs)
                        if fn is None:
                            continue
                        with runner.guard():
                            case.check(fn(), expected)    # a wrong kernel fails here, before any timing
                        calls.append((name, case, fn, runner))
                if not calls:
                    continue
                with contextlib.ExitStack() as guards, CpuMeter() as meter:
                    for name in group:
                        guards.enter_context(runners[name].guard())
                    # Frameworks side by side: each call after a pause (PyTorch's threads spin on
                    # after its calls; a fastcnn call right after one measured up to 2.5x slower).
                    settle = SETTLE_SECONDS if len(group) > 1 else 0.0
                    rounds = min_rounds * (2 if settle else 1)
                    times = time_interleaved([fn for _, _, fn, _ in calls], settle=settle, min_rounds=rounds,
                                             min_time=min_time * len(unit))
                summary = meter.summary(threads)
                for (name, case, _, _), t in zip(calls, times):
                    row_of[case.name]["backends"][name] = _entry(case, t, summary)
        rows += list(row_of.values())
        if pair:
            rows.append(_derived_row(layer, pair, row_of))
    for row in rows:
        b = row["backends"]
        row["speedup"] = (b["numpy"]["seconds"] / b["numba"]["seconds"]
                          if b.get("numpy", {}).get("seconds") and b.get("numba", {}).get("seconds") else None)
        row["contended"] = any(e.get("contended") for e in b.values())
    return rows


def _derived_row(layer: str, pair: list[OpCase], row_of: dict) -> dict:
    weight, both = pair
    work = both.work - weight.work
    shape = weight.shape
    isz = weight.dtype.itemsize
    least = (math.prod(shape.y_shape) + math.prod(shape.w_shape) + math.prod(shape.x_shape)) * isz
    row = {"name": f"{layer} backward-input", "layer": layer, "kind": "backward-input", "unit": "GFLOP/s",
           "work": work, "group": weight.group, "intensity": work / least, "derived": True,
           "note": "derived: best backward-input+weight time minus best backward-weight time", "backends": {}}
    for name, entry in row_of[both.name]["backends"].items():
        w = row_of[weight.name]["backends"].get(name)
        if not w:
            continue
        diff = entry["seconds"] - w["seconds"]
        sec = diff if diff > 0 else None
        row["backends"][name] = {"seconds": sec, "rounds": entry["rounds"], "checked": True,
                                 "rate": work / sec / 1e9 if sec else None,
                                 **{k: entry[k] for k in ("cpu_seconds_per_second", "other_load", "threads",
                                                          "contended")}}
    return row


# ------------------------------------------------------------------------- training and evaluation

def mnist_batches(dataset, count: int, batch_size: int = BATCH_SIZE, seed: int = 0, dtype=np.float32) -> list:
    """``count`` real training batches (x float32 normalised, y int64) in a seeded shuffled order."""
    order = np.random.default_rng(seed).permutation(len(dataset.x_train))
    count = max(1, min(count, len(order) // batch_size))
    out = []
    for i in range(count):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
        out.append((to_float(dataset.x_train[idx], dtype), dataset.y_train[idx]))
    return out


def eval_data(dataset, images: int, dtype=np.float32) -> tuple:
    """The first ``images`` test images (float32) and labels, as one pair of arrays."""
    images = max(1, min(images, len(dataset.x_test)))
    return to_float(dataset.x_test[:images], dtype), dataset.y_test[:images]


def make_trainer(backend: str, seed: int = 0, dropout: float = 0.5) -> tuple:
    """The MNIST network on ``backend`` with AdamW at fastcnn-train's default learning rate and
    weight decay (the rate of its first step: the cosine schedule starts there)."""
    model = mnist_cnn(seed=seed, backend=backend, dropout=dropout)
    return model, AdamW(model, lr=DEFAULT_LR["adamw"], weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])


def train_step_result(backend: str, batch: tuple, seed: int = 0) -> tuple:
    """One training step from the seeded initial weights: (loss, {param name: gradient})."""
    model, opt = make_trainer(backend, seed)
    loss, _ = model.train_step(batch[0], batch[1], opt)
    return loss, {name: np.array(g, copy=True) for name, _, g in model.named_parameters()}


def check_train_step(backend: str, batch: tuple, expected: tuple, seed: int = 0) -> None:
    """Raise AssertionError unless one training step on ``backend`` gives the reference's loss
    and gradients (``expected`` from :func:`train_step_result` on "numpy")."""
    loss, grads = train_step_result(backend, batch, seed)
    ref_loss, ref_grads = expected
    assert_agree(np.float32(loss), np.float32(ref_loss), f"{backend} training step: loss")
    for name, g in ref_grads.items():
        assert_agree(grads[name], g, f"{backend} training step: gradient of {name}")


def eval_logits(backend: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    model, _ = make_trainer(backend, seed)
    return model.forward(x, training=False)


def check_eval(backend: str, x: np.ndarray, expected_logits: np.ndarray, seed: int = 0) -> None:
    """Raise AssertionError unless the backend's evaluation logits agree with the reference's."""
    assert_agree(eval_logits(backend, x, seed), expected_logits, f"{backend} evaluation logits")


def measure_steps(steps: dict, batches: list, warmup: int = 2, threads: int = 1, block: int | None = None) -> dict:
    """Time training steps (name -> function(x, y)) over real batches; the first ``warmup`` batches are
    untimed. An epoch is extrapolated from the rate (60,000 images = 469 batches of 128, the last
    holding 96). Returns per name: seconds per batch (mean and median), images/s, epoch seconds, and
    the CPU meter of the run (its pauses left out).

    With several functions they take turns in blocks of ``block`` batches (BLOCK_BATCHES): each
    runs the block's batches back to back, as in its own training loop, then the next runs the
    same batches, so a drift of the machine's speed hits all alike. Each block starts
    SETTLE_SECONDS after the last one ended, with one untimed step on its first batch: PyTorch's
    OpenMP threads keep spinning for milliseconds after its step (libgomp's spin count), and a
    fastcnn step timed right after one shared a core with them (19.3 against 12.4 ms on 2 cores,
    while PyTorch's own step did not change); and a step timed right after a pause pays for the
    idle machine (workers and cores woken, caches refilled), which no step of an epoch does:
    alternated batch by batch, each after the pause, fastcnn's step took 7.9 ms and PyTorch's 25.9,
    in blocks of 8 batches 7.1 and 25.1 ms (means of 64 steps each, one process, 2-core Zen 5)."""
    warmup = min(warmup, len(batches) - 1)
    for x, y in batches[:warmup]:
        for step in steps.values():
            step(x, y)
    timed = batches[warmup:]
    block = max(1, block or BLOCK_BATCHES) if len(steps) > 1 else max(1, len(timed))
    times: dict = {name: [] for name in steps}
    images = 0
    paused = 0.0
    with CpuMeter() as meter:
        for b0 in range(0, len(timed), block):
            part = timed[b0:b0 + block]
            for name, step in steps.items():
                if len(steps) > 1:
                    t = time.perf_counter()
                    time.sleep(SETTLE_SECONDS)
                    paused += time.perf_counter() - t
                    step(*part[0])
                for x, y in part:
                    t = time.perf_counter()
                    step(x, y)
                    times[name].append(time.perf_counter() - t)
            images += sum(len(x) for x, _ in part)
    meter.wall = max(meter.wall - paused, 1e-9)
    out = {}
    for name, t in times.items():
        total = sum(t)
        rate = images / total
        out[name] = {"backend": name, "batches": len(t), "warmup_batches": warmup, "images": images,
                     "seconds_per_batch": total / len(t), "median_seconds_per_batch": float(np.median(t)),
                     "images_per_s": rate, "epoch_seconds": TRAIN_IMAGES / rate, **meter.summary(threads)}
    return out


def fastcnn_step(backend: str, seed: int = 0) -> Callable:
    """A training-step function ``(x, y) -> None`` of the MNIST network on ``backend``."""
    model, opt = make_trainer(backend, seed)
    return lambda x, y: model.train_step(x, y, opt)


def measure_evaluation(backend: str, x: np.ndarray, y: np.ndarray, *, threads: int, batch_size: int = EVAL_BATCH_SIZE,
                       seed: int = 0, repeats: int = 3) -> dict:
    """Time ``model.evaluate`` over (x, y) ``repeats`` times after one untimed warm-up batch and
    keep the fastest pass (the least disturbed by other programs); extrapolate to the 10,000-image
    test set."""
    model, _ = make_trainer(backend, seed)
    model.evaluate(x[:batch_size], y[:batch_size], batch_size)
    passes = []
    for _ in range(repeats):
        with CpuMeter() as meter:
            model.evaluate(x, y, batch_size)
        passes.append((meter.wall, meter.summary(threads)))
    seconds, summary = min(passes, key=lambda p: p[0])
    rate = len(x) / seconds
    return {"backend": backend, "images": len(x), "batch_size": batch_size, "seconds": seconds,
            "passes": repeats, "pass_seconds": [p[0] for p in passes], "images_per_s": rate,
            "test_set_seconds": TEST_IMAGES / rate, **summary}


def thread_counts(max_threads: int) -> list[int]:
    """1..max_threads, thinned to powers of two (plus the maximum) beyond 8."""
    if max_threads <= 8:
        return list(range(1, max_threads + 1))
    counts = [1 << i for i in range(int(math.log2(max_threads)) + 1)]
    return counts + ([max_threads] if counts[-1] != max_threads else [])


def measure_thread_scaling(batches: list, max_threads: int, warmup: int = 2, seed: int = 0) -> list[dict]:
    """Numba training epoch time at 1..max_threads threads (``numba.set_num_threads``)."""
    import numba
    before = numba.get_num_threads()
    rows = []
    try:
        for t in thread_counts(max_threads):
            numba.set_num_threads(t)
            row = measure_steps({"numba": fastcnn_step("numba", seed)}, batches, warmup, threads=t)["numba"]
            row["threads"] = t
            rows.append(row)
    finally:
        numba.set_num_threads(before)
    base = rows[0]["epoch_seconds"]
    for row in rows:
        row["speedup"] = base / row["epoch_seconds"]
        row["efficiency"] = row["speedup"] / row["threads"]
    return rows


def record_rate(benchmark, work: int, unit: str = "GFLOP/s", peak_gflops: float | None = None,
                matmul_gflops: float | None = None, /, **extra) -> float | None:
    """For the pytest-benchmark suite: after ``benchmark`` ran, store the rate of its median round
    (``work`` FLOPs or bytes per round) in ``benchmark.extra_info`` as ``gflops`` (with
    ``fraction_of_peak`` and ``fraction_of_matmul``) or ``gbytes_per_s``, plus ``extra``. Returns
    the rate, or None when benchmarking is disabled."""
    benchmark.extra_info.update(extra)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None or not stats.median:
        return None
    rate = work / stats.median / 1e9
    if unit == "GFLOP/s":
        benchmark.extra_info["gflops"] = round(rate, 3)
        if peak_gflops:
            benchmark.extra_info["fraction_of_peak"] = round(rate / peak_gflops, 4)
        if matmul_gflops:
            benchmark.extra_info["fraction_of_matmul"] = round(rate / matmul_gflops, 4)
    else:
        benchmark.extra_info["gbytes_per_s"] = round(rate, 3)
    return rate
