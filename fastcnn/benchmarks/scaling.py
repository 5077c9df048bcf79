"""Per-layer thread scaling of the Numba training step, its serial share and what Amdahl's law
then allows: the same step profiled (:meth:`~fastcnn.model.Sequential.start_profile`) at one
thread and at N.

For a part of the step that takes a seconds at one thread and b at N, the serial time s in it
follows from b = s + (a - s) / N: s = (N b - a) / (N - 1), clipped to [0, a]; summed over the
parts and divided by the one-thread step, that fit counts the parallel parts' imperfect scaling
(memory bandwidth, handoffs) as serial too. The step's serial share f proper is measured: the time
of an N-thread step outside the kernel calls split over the threads
(:func:`fastcnn.kernels._parallel.split_seconds`), divided by the one-thread step, both timed again
without the profile (its clocks around every layer are not part of a training step). Amdahl's law
bounds the step's speedup at T threads by 1 / (f + (1 - f) / T).

Noise moves both estimates (a part slowed at N threads adds serial time, one slowed at 1 thread
takes some away, and the fit clips each part at zero), so the profiles alternate between 1 and N
threads for several rounds and each part's time is the median of its rounds. Other programs on
the cores still read as serial time.
"""
from __future__ import annotations

import time
from statistics import median

AMDAHL_THREADS = 16


def serial_seconds(one: float, many: float, threads: int) -> float:
    """The serial part of a part that takes ``one`` s at 1 thread and ``many`` s at ``threads``."""
    if threads < 2:
        raise ValueError("the serial part needs timings at two or more threads")
    return min(max((threads * many - one) / (threads - 1), 0.0), one)


def amdahl(serial_share: float, threads: int) -> float:
    """The speedup over one thread Amdahl's law allows at ``threads`` with this serial share."""
    return 1.0 / (serial_share + (1.0 - serial_share) / threads)


def _profile(model, opt, batches: list, warmup: int) -> dict:
    """The profile of the steps after ``warmup``, with ``split_ms``: the ms per step spent in
    kernel calls split over two or more threads."""
    from fastcnn.kernels._parallel import split_seconds
    for x, y in batches[:warmup]:
        model.train_step(x, y, opt)
    model.start_profile()
    split = split_seconds()
    for x, y in batches[warmup:]:
        model.train_step(x, y, opt)
    split = split_seconds() - split
    profile = model.stop_profile().to_dict()
    return {**profile, "split_ms": 1e3 * split / max(profile["batches"], 1)}


def _unprofiled(model, opt, batches: list, warmup: int) -> tuple[float, float]:
    """(ms per step, ms per step outside the kernel calls split over two or more threads) of the
    steps after ``warmup``, no profile attached."""
    from fastcnn.kernels._parallel import split_seconds
    for x, y in batches[:warmup]:
        model.train_step(x, y, opt)
    split, start = split_seconds(), time.perf_counter()
    for x, y in batches[warmup:]:
        model.train_step(x, y, opt)
    wall, split = time.perf_counter() - start, split_seconds() - split
    steps = max(len(batches) - warmup, 1)
    return 1e3 * wall / steps, 1e3 * (wall - split) / steps


def layer_scaling(batches: list, threads: int, warmup: int = 2, seed: int = 0, rounds: int = 3) -> dict:
    """Profile the Numba training step of the MNIST network at 1 and ``threads`` threads over
    ``batches`` ((x, y) pairs; the first ``warmup`` untimed), alternating for ``rounds`` rounds.
    Returns the rows (part, median ms at 1 and at N, speedup, serial ms), the step's median times,
    its serial share and Amdahl's bound at AMDAHL_THREADS threads."""
    import numba

    from fastcnn.benchmarks.measurement import make_trainer
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds!r}")
    before = numba.get_num_threads()
    profiles: dict[int, list[dict]] = {1: [], threads: []}
    plain: dict[int, list[tuple[float, float]]] = {1: [], threads: []}
    try:
        for _ in range(rounds):
            for t in (1, threads):
                numba.set_num_threads(t)
                model, opt = make_trainer("numba", seed)
                profiles[t].append(_profile(model, opt, batches, warmup))
                plain[t].append(_unprofiled(model, opt, batches, warmup))
    finally:
        numba.set_num_threads(before)

    def ms(t: int, i: int) -> float:
        return median([p["rows"][i]["ms_per_batch"] for p in profiles[t]])

    rows = []
    for i, part in enumerate(profiles[1][0]["rows"]):
        one, many = ms(1, i), ms(threads, i)
        rows.append({"name": part["name"], "direction": part["direction"], "ms_1": one, "ms_n": many,
                     "speedup": one / many if many > 0 else None,
                     "serial_ms": serial_seconds(one, many, threads)})
    step_1 = median([step for step, _ in plain[1]])
    step_n = median([step for step, _ in plain[threads]])
    one_thread_ms = median([outside for _, outside in plain[threads]])
    serial = min(max(one_thread_ms / step_1, 0.0), 1.0) if step_1 > 0 else 0.0
    profiled_1 = median([p["step_ms"] for p in profiles[1]])
    fitted = sum(r["serial_ms"] for r in rows) / profiled_1 if profiled_1 > 0 else 0.0
    return {"threads": threads, "rounds": rounds, "step_ms_1": step_1, "step_ms_n": step_n,
            "speedup": step_1 / step_n, "one_thread_ms": one_thread_ms, "serial_share": serial,
            "amdahl_speedup": amdahl(serial, AMDAHL_THREADS), "fitted_serial_share": fitted,
            "fitted_amdahl_speedup": amdahl(fitted, AMDAHL_THREADS), "amdahl_threads": AMDAHL_THREADS,
            "rows": rows}


def format_layer_scaling(result: dict) -> str:
    """The result of :func:`layer_scaling` as a text table with its summary line."""
    n = result["threads"]
    lines = [f"{'part of the step':<34}  {'ms, 1 thread':>12}  {f'ms, {n} threads':>13}  {'speedup':>7}  "
             f"{'serial ms':>9}"]
    for r in result["rows"]:
        name = f"{r['name']} {r['direction']}".strip()
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"{name:<34}  {r['ms_1']:12.3f}  {r['ms_n']:13.3f}  {speedup:>7}  {r['serial_ms']:9.3f}")
    T = result["amdahl_threads"]
    lines.append(f"step without the profile (median of {result['rounds']} alternated rounds): "
                 f"{result['step_ms_1']:.2f} ms at 1 thread, "
                 f"{result['step_ms_n']:.2f} ms at {n} ({result['speedup']:.2f}x)")
    lines.append(f"serial share {100 * result['serial_share']:.1f} % of the 1-thread step: at {n} threads "
                 f"{result['one_thread_ms']:.2f} ms of it ran on one thread (outside the kernels' split calls); "
                 f"Amdahl's law then allows {result['amdahl_speedup']:.1f}x at {T} threads")
    lines.append(f"fitted to the speedups above (serial share plus the parallel parts' imperfect scaling): "
                 f"{100 * result['fitted_serial_share']:.1f} %, {result['fitted_amdahl_speedup']:.1f}x at {T} threads")
    return "\n".join(lines)
