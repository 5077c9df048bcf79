"""One fastcnn-bench run: measure the machine, then every op, training epoch and evaluation, in an
order that keeps the reference rates clean (BLAS before any Numba thread exists); returns the
results dict written as results.json."""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastcnn.benchmarks import roofline
from fastcnn.benchmarks.measurement import (
    MATMUL_N,
    FastcnnRunner,
    check_eval,
    check_train_step,
    eval_data,
    eval_logits,
    fastcnn_step,
    machine_info,
    measure_evaluation,
    measure_matmul,
    measure_ops,
    measure_steps,
    measure_thread_scaling,
    mnist_batches,
    thread_counts,
    train_step_result,
    warm_up_kernels,
)
from fastcnn.benchmarks.workload import (
    BATCH_SIZE,
    BATCHES_PER_EPOCH,
    EVAL_BATCH_SIZE,
    at_batch,
    general_cases,
    network_budget,
    network_cases,
)
from fastcnn.data import load_dataset

SCHEMA = "fastcnn-bench/2"
BACKEND_ORDER = ("numpy", "numba")                    # reference first, for speedups


@dataclass
class Settings:
    out: Path = Path("bench-results")
    backends: tuple = BACKEND_ORDER
    threads: int = 0                   # thread scaling over 1..threads (0: none)
    quick: bool = False
    batches: int = 0
    reference_batches: int = 0
    warmup_batches: int = 2
    eval_images: int = 10_000
    eval_repeats: int = 3
    op_min_rounds: int = 5
    op_min_time: float = 0.25
    matmul_n: int = MATMUL_N
    matmul_repeats: int = 5
    matmul_min_time: float = 1.5
    peak_min_time: float = 0.5
    general: bool = True
    compare: str | None = None         # "torch"
    data_dir: object = None
    seed: int = 0
    charts: bool = True
    extra: dict = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[fastcnn-bench] {msg}", file=sys.stderr, flush=True)


def measure_limits(s: Settings, threads: int, log=_log) -> dict:
    """The reference rates: numpy.matmul (first, before Numba starts its threads), the FMA peak
    and the memory bandwidth, and what BLAS runs compared with the CPU."""
    from fastcnn.benchmarks.measurement import blas_info
    log(f"matmul: float32 {s.matmul_n}x{s.matmul_n} on {threads} threads, best of >= {s.matmul_repeats} calls "
        f"and {s.matmul_min_time} s")
    matmul = measure_matmul(s.matmul_n, s.matmul_repeats, min_time=s.matmul_min_time, threads=threads)
    log(f"FMA peak: Numba multiply-add chains on 1 and {threads} threads (compiles two small kernels)")
    peak = roofline.measure_fma_peak(threads, min_time=s.peak_min_time, repeats=3 if s.quick else 5)
    peak["per_cycle"] = roofline.plausibility(peak["one_thread_gflops"], peak["vector_bits"], roofline.cpu_mhz())
    bandwidth = roofline.measure_bandwidth(threads, megabytes=96 if s.quick else 192)
    cpu_bits = roofline.cpu_vector_bits(roofline.cpu_flags())
    blas = roofline.blas_check(blas_info(), cpu_bits)
    notes = roofline.peak_check(peak, cpu_bits) + ([blas["message"]] if blas["message"] else [])
    # Any rate a program reaches is a lower bound on the machine's: where BLAS outruns the FMA
    # micro-benchmark (its chains short of two FMAs per cycle), the fractions are taken against BLAS.
    peak["fma_gflops"], peak["source"] = peak["gflops"], "fma"
    if matmul["gflops"] > peak["gflops"]:
        peak["gflops"], peak["source"] = matmul["gflops"], "numpy.matmul"
        notes.append(f"numpy.matmul ({matmul['gflops']:.0f} GFLOP/s) outran the FMA micro-benchmark "
                     f"({peak['fma_gflops']:.0f} GFLOP/s): every fraction of peak is against the matmul rate")
    return {"matmul": matmul, "peak": peak, "bandwidth": bandwidth,
            "cpu": {"vector_bits": cpu_bits, "isa": roofline.isa_name(cpu_bits)}, "blas": blas,
            "notes": notes}


def _add_fractions(rows: list[dict], limits: dict) -> None:
    peak, matmul = limits["peak"]["gflops"], limits["matmul"]["gflops"]
    bw = limits["bandwidth"]["gbytes_per_s"]
    for row in rows:
        flops = row["unit"] == "GFLOP/s"
        row["allowed_fraction"] = roofline.allowed_fraction(row["intensity"], peak, bw) if flops else None
        for entry in row["backends"].values():
            r = entry.get("rate")
            entry["fraction_of_peak"] = r / peak if flops and r else None
            entry["fraction_of_matmul"] = r / matmul if flops and r else None
        torch = row["backends"].get("torch", {}).get("seconds")
        numba = row["backends"].get("numba", {}).get("seconds")
        row["fastcnn_over_torch"] = numba / torch if torch and numba else None


def _with_rates(row: dict, flops_per_image: int, limits: dict, seconds_key: str, ideal_seconds: float) -> dict:
    """Add GFLOP/s, the fractions of peak and of matmul, the ideal time and the ratio to it to a
    checked training or evaluation row (``seconds_key``: its extrapolated epoch or test-set time)."""
    row["gflops"] = flops_per_image * row["images_per_s"] / 1e9
    row["fraction_of_peak"] = row["gflops"] / limits["peak"]["gflops"]
    row["fraction_of_matmul"] = row["gflops"] / limits["matmul"]["gflops"]
    row[f"ideal_{seconds_key}"] = ideal_seconds
    row["ratio_to_ideal"] = row[seconds_key] / ideal_seconds
    row["checked"] = True
    return row


def slowest_op(rows: list[dict], backend: str = "numba") -> dict | None:
    """The convolution row furthest below what its arithmetic intensity allows."""
    def shortfall(row):
        e = row["backends"].get(backend, {})
        return e["fraction_of_peak"] / row["allowed_fraction"]
    cands = [r for r in rows if r["unit"] == "GFLOP/s" and r.get("allowed_fraction")
             and r["backends"].get(backend, {}).get("fraction_of_peak")]
    if not cands:
        return None
    worst = min(cands, key=shortfall)
    return {"name": worst["name"], "group": worst["group"], "fraction_of_peak":
            worst["backends"][backend]["fraction_of_peak"], "allowed_fraction": worst["allowed_fraction"],
            "of_allowed": shortfall(worst)}


def run_benchmarks(settings: Settings, log=_log) -> dict:
    """Measure everything fastcnn-bench reports; returns the results dict (see results.json)."""
    import numba

    started = time.perf_counter()
    s = settings
    try:
        load_at_start = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):                      # pragma: no cover - not Unix
        load_at_start = None
    threads = numba.get_num_threads()
    torch_side = None
    if s.compare == "torch":
        from fastcnn.benchmarks.torch_compare import TorchSide
        torch_side = TorchSide(threads)                    # fails early, with its one-line error
    budget = network_budget()
    dataset = load_dataset("mnist", data_dir=s.data_dir)   # fail early when the data is missing
    log(f"MNIST from {dataset.source_dir}")
    results: dict = {"schema": SCHEMA,
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "ops": [], "training": {}, "evaluation": {}, "thread_scaling": []}
    limits = measure_limits(s, threads, log)
    results["limits"] = limits
    peak_rate = limits["peak"]["gflops"] * 1e9
    results["network"] = {**budget, "batches_per_epoch": BATCHES_PER_EPOCH,
                          "ideal_epoch_seconds": budget["epoch_flops"] / peak_rate,
                          "ideal_test_set_seconds": budget["test_set_flops"] / peak_rate,
                          "matmul_epoch_seconds": budget["epoch_flops"] / (limits["matmul"]["gflops"] * 1e9)}

    cases = network_cases(BATCH_SIZE) + (general_cases() if s.general else [])
    if "numba" in s.backends:
        log("compiling the Numba kernels (not timed)")
        small = network_cases(2) + (at_batch(general_cases(), 1) if s.general else [])
        results["compile_seconds"] = warm_up_kernels(small, ("numba",))

    runners = {name: FastcnnRunner(name) for name in s.backends}
    if torch_side:
        runners["torch"] = torch_side
    log(f"ops at the network's shapes (batch {BATCH_SIZE}){' and the general shapes' if s.general else ''}, "
        "float32, each checked against the NumPy reference first")
    net = [c for c in cases if c.group == "network"]
    gen = [c for c in cases if c.group == "general"]
    rows = measure_ops(net, runners, threads=threads, min_rounds=s.op_min_rounds, min_time=s.op_min_time, seed=s.seed)
    if gen:
        general_runners = {k: v for k, v in runners.items() if k != "numpy"} or runners
        rows += measure_ops(gen, general_runners, threads=threads, min_rounds=s.op_min_rounds,
                            min_time=s.op_min_time, seed=s.seed)
    _add_fractions(rows, limits)
    results["ops"] = rows
    results["slowest_op"] = slowest_op(rows)

    # ---- training
    need = s.warmup_batches + max(s.batches if "numba" in s.backends else 0,
                                  s.reference_batches if "numpy" in s.backends else 0)
    batches = mnist_batches(dataset, need, seed=s.seed)
    expected = train_step_result("numpy", batches[0], s.seed)
    for name in s.backends:
        count = s.reference_batches if name == "numpy" else s.batches
        log(f"training on {name}: {s.warmup_batches} warm-up + {count} timed batches of {BATCH_SIZE}")
        check_train_step(name, batches[0], expected, s.seed)
        steps = {name: fastcnn_step(name, s.seed)}
        if name == "numba" and torch_side:
            torch_side.check_train_step(batches[0], s.seed)
            steps["torch"] = torch_side.train_step(s.seed)
        own = threads if name != "numpy" else 1
        measured = measure_steps(steps, batches[:s.warmup_batches + count], s.warmup_batches, threads=own)
        for key, row in measured.items():
            results["training"][key] = _with_rates(row, budget["train_flops_per_image"], limits, "epoch_seconds",
                                                   results["network"]["ideal_epoch_seconds"])
    tr = results["training"]
    if {"numpy", "numba"} <= set(tr):
        results["training_speedup"] = tr["numpy"]["epoch_seconds"] / tr["numba"]["epoch_seconds"]
    if {"numba", "torch"} <= set(tr):
        results["training_fastcnn_over_torch"] = tr["numba"]["epoch_seconds"] / tr["torch"]["epoch_seconds"]

    # ---- evaluation
    x_test, y_test = eval_data(dataset, s.eval_images)
    ref_logits = eval_logits("numpy", x_test[:EVAL_BATCH_SIZE], s.seed)
    for name in s.backends:
        log(f"evaluation on {name}: {len(x_test)} test images in batches of {EVAL_BATCH_SIZE}")
        check_eval(name, x_test[:EVAL_BATCH_SIZE], ref_logits, s.seed)
        row = measure_evaluation(name, x_test, y_test, threads=threads if name != "numpy" else 1, seed=s.seed,
                                 repeats=s.eval_repeats)
        results["evaluation"][name] = _with_rates(row, budget["eval_flops_per_image"], limits, "test_set_seconds",
                                                  results["network"]["ideal_test_set_seconds"])

    # ---- thread scaling
    if "numba" in s.backends and s.threads >= 1:
        log(f"thread scaling of the Numba training epoch: {thread_counts(s.threads)} threads")
        rows = measure_thread_scaling(batches[:s.warmup_batches + s.batches], s.threads, s.warmup_batches, s.seed)
        for row in rows:
            row["ideal_epoch_seconds"] = results["network"]["ideal_epoch_seconds"]
        results["thread_scaling"] = rows
        if s.threads >= 2:
            from fastcnn.benchmarks.scaling import layer_scaling
            log(f"per-layer scaling of the Numba training step: profiled at 1 and {s.threads} threads")
            results["layer_scaling"] = layer_scaling(batches[:s.warmup_batches + s.batches], s.threads,
                                                     s.warmup_batches, s.seed)

    results["machine"] = machine_info()          # after the kernels ran: the threading layer is known
    results["machine"]["load_average_at_start"] = load_at_start
    if torch_side:
        results["machine"]["torch"] = torch_side.info()
    results["settings"] = {"quick": s.quick, "backends": list(s.backends), "compare": s.compare,
                           "batch_size": BATCH_SIZE, "dtype": "float32",
                           "batches": {"numba": s.batches, "numpy": s.reference_batches},
                           "warmup_batches": s.warmup_batches, "eval_images": len(x_test),
                           "eval_repeats": s.eval_repeats, "threads": threads, "max_threads": s.threads,
                           "op_min_rounds": s.op_min_rounds, "op_min_time": s.op_min_time,
                           "general_shapes": s.general, "data_dir": str(dataset.source_dir), "seed": s.seed,
                           **s.extra}
    results["elapsed_seconds"] = time.perf_counter() - started
    return results

