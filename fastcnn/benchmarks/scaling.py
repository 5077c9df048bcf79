"""Per-layer thread scaling of the Numba training step, its serial share and what Amdahl's law
then allows: the same step profiled (:meth:`~fastcnn.model.Sequential.start_profile`) at one
thread and at N.

For a part of the step that takes a seconds at one thread and b at N, the serial time s in it
follows from b = s + (a - s) / N: s = (N b - a) / (N - 1), clipped to [0, a]. The step's serial
share f is the sum of s over the parts divided by the one-thread step, and Amdahl's law bounds
the step's speedup at T threads by 1 / (f + (1 - f) / T). The per-part figures are as noisy as
the machine: other programs on the cores read as serial time.
"""
from __future__ import annotations

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
    for x, y in batches[:warmup]:
        model.train_step(x, y, opt)
    model.start_profile()
    for x, y in batches[warmup:]:
        model.train_step(x, y, opt)
    return model.stop_profile().to_dict()


def layer_scaling(batches: list, threads: int, warmup: int = 2, seed: int = 0) -> dict:
    """Profile the Numba training step of the MNIST network at 1 and ``threads`` threads over
    ``batches`` ((x, y) pairs; the first ``warmup`` untimed). Returns the rows (part, ms at 1 and
    at N, speedup, serial ms), the step's times, its serial share and Amdahl's bound at
    AMDAHL_THREADS threads."""
    import numba

    from fastcnn.benchmarks.measurement import make_trainer
    before = numba.get_num_threads()
    profiles = {}
    try:
        for t in (1, threads):
            numba.set_num_threads(t)
            model, opt = make_trainer("numba", seed)
            profiles[t] = _profile(model, opt, batches, warmup)
    finally:
        numba.set_num_threads(before)
    rows = []
    for a, b in zip(profiles[1]["rows"], profiles[threads]["rows"]):
        one, many = a["ms_per_batch"], b["ms_per_batch"]
        rows.append({"name": a["name"], "direction": a["direction"], "ms_1": one, "ms_n": many,
                     "speedup": one / many if many > 0 else None,
                     "serial_ms": serial_seconds(one, many, threads)})
    step_1, step_n = profiles[1]["step_ms"], profiles[threads]["step_ms"]
    share = sum(r["serial_ms"] for r in rows) / step_1 if step_1 > 0 else 0.0
    return {"threads": threads, "step_ms_1": step_1, "step_ms_n": step_n, "speedup": step_1 / step_n,
            "serial_share": share, "amdahl_threads": AMDAHL_THREADS,
            "amdahl_speedup": amdahl(share, AMDAHL_THREADS), "rows": rows}


def format_layer_scaling(result: dict) -> str:
    """The result of :func:`layer_scaling` as a text table with its summary line."""
    n = result["threads"]
    lines = [f"{'part of the step':<34}  {'ms, 1 thread':>12}  {f'ms, {n} threads':>13}  {'speedup':>7}  "
             f"{'serial ms':>9}"]
    for r in result["rows"]:
        name = f"{r['name']} {r['direction']}".strip()
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(f"{name:<34}  {r['ms_1']:12.3f}  {r['ms_n']:13.3f}  {speedup:>7}  {r['serial_ms']:9.3f}")
    lines.append(f"step: {result['step_ms_1']:.2f} ms at 1 thread, {result['step_ms_n']:.2f} ms at {n} "
                 f"({result['speedup']:.2f}x); serial share {100 * result['serial_share']:.1f} %, so Amdahl's law "
                 f"allows {result['amdahl_speedup']:.1f}x at {result['amdahl_threads']} threads")
    return "\n".join(lines)
