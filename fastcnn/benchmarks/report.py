"""The fastcnn-bench report: the printed tables, the contention marks, and results.json (written
atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcnn._atomic import write_json as atomic_json
from fastcnn.benchmarks.workload import BATCH_SIZE, BLOCK_BATCHES, EVAL_BATCH_SIZE, TRAIN_IMAGES

MARK = "!"               # after a figure measured while other programs took cores


def _fmt_time(sec: float | None) -> str:
    if sec is None:
        return "-"
    return f"{sec * 1e3:.2f} ms" if sec < 1 else f"{sec:.2f} s"


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _table(headers: list, rows: list) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    align = ["<"] + [">"] * (len(headers) - 1)

    def line(cells):
        return "  ".join(f"{c!s:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def contended_sections(results: dict) -> list[str]:
    """Names of the sections with at least one measurement taken while other programs used the
    cores it needed (see :class:`fastcnn.cpumeter.CpuMeter`)."""
    limits = results.get("limits", {})
    out = []
    if (any(limits.get(k, {}).get("contended") for k in ("matmul", "peak", "bandwidth"))
            or limits.get("peak", {}).get("one_thread", {}).get("contended")):
        out.append("reference rates")
    if any(r.get("contended") for r in results.get("ops", []) if r.get("group") == "network"):
        out.append("network ops")
    if any(r.get("contended") for r in results.get("ops", []) if r.get("group") == "general"):
        out.append("general shapes")
    for section in ("training", "evaluation"):
        if any(row.get("contended") for row in results.get(section, {}).values()):
            out.append(section)
    if any(row.get("contended") for row in results.get("thread_scaling", [])):
        out.append("thread scaling")
    return out


def _mark(flag: bool) -> str:
    return f" {MARK}" if flag else ""


def _heading(title: str, contended: bool) -> str:
    return title + (f"  [{MARK} contended: other programs took cores; figures marked {MARK} are pessimistic]"
                    if contended else "")


def _per_cycle(peak: dict) -> str:
    pc = peak.get("per_cycle") or {}
    if not pc.get("flops_per_cycle"):
        return ""
    return (f" = {pc['flops_per_cycle']:.1f} FLOP/cycle at {pc['mhz']:.0f} MHz (2 FMA pipes of "
            f"{peak['vector_bits']} bits: {pc['two_pipe_flops_per_cycle']})")


def _header(results: dict) -> list[str]:
    m, lim = results["machine"], results["limits"]
    mm, peak, bw, blas = lim["matmul"], lim["peak"], lim["bandwidth"], lim["blas"]
    blas_libs = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, core "
                          f"{b.get('architecture') or '?'})" for b in m.get("blas") or []) or "?"
    torch = m.get("torch")
    out = [f"WARNING: {note}" for note in lim.get("notes", []) if not note.startswith("BLAS runs below")]
    if not out and (peak["contended"] or mm["contended"]):
        out.append("WARNING: other programs took cores while the reference rates were measured: the peak may be "
                   "low and every fraction of it too high; run again on a quiet machine")
    out += [(f"fastcnn-bench on {m['cpu_model']} ({m['cpu_count']} cores, {lim['cpu']['isa']}), Python {m['python']}, "
             f"NumPy {m['numpy']}, Numba {m['numba']} ({m['numba_threading_layer']}, {m['numba_threads']} threads)"
             + (f", register tile {m['register_tile']}" if m.get("register_tile") else "")),
            f"BLAS: {blas_libs}" + (f"; PyTorch {torch['version']} ({torch['threads']} threads)" if torch else "")]
    if blas.get("message"):
        out.append(f"note: {blas['message']}")
    forms = ", ".join(f"{k} {v['vector_bits']}-bit" for k, v in peak["formulations"].items())
    out += ["",
            _heading("Reference rates (float32)",
                     any(lim[k].get("contended") for k in ("matmul", "peak", "bandwidth"))),
            _table(["rate", "value", "CPU/wall", "other load"], [
                [f"FMA peak, {peak['threads']} threads (Numba {peak['formulation']}, {peak['vector_bits']}-bit FMAs)",
                 f"{peak.get('fma_gflops', peak['gflops']):.1f} GFLOP/s{_mark(peak['contended'])}",
                 _fmt(peak["cpu_seconds_per_second"], ".2f"), _fmt(peak["other_load"], ".2f")],
                ["FMA peak, 1 thread",
                 f"{peak['one_thread_gflops']:.1f} GFLOP/s{_mark(peak['one_thread']['contended'])}{_per_cycle(peak)}",
                 _fmt(peak["one_thread"]["cpu_seconds_per_second"], ".2f"),
                 _fmt(peak["one_thread"]["other_load"], ".2f")],
                [f"numpy.matmul {mm['n']}x{mm['n']}"
                 + (f", {mm['threads']} threads" if mm.get("threads") else "") + f" (best of {mm['repeats']})",
                 f"{mm['gflops']:.1f} GFLOP/s{_mark(mm['contended'])} = "
                 f"{mm['gflops'] / peak.get('fma_gflops', peak['gflops']):.0%} of the FMA peak",
                 _fmt(mm["cpu_seconds_per_second"], ".2f"), _fmt(mm["other_load"], ".2f")],
                [f"memory bandwidth (triad, {bw['bytes'] / 2**20:.0f} MiB)",
                 f"{bw['gbytes_per_s']:.1f} GB/s{_mark(bw['contended'])}",
                 _fmt(bw["cpu_seconds_per_second"], ".2f"), _fmt(bw["other_load"], ".2f")]]),
            (f"(every 'of peak' and 'ideal' below is against {peak['gflops']:.1f} GFLOP/s, "
             + (f"the {peak['threads']}-thread FMA peak" if peak.get("source", "fma") == "fma"
                else "the numpy.matmul rate, which outran the FMA micro-benchmark")
             + f"; formulations measured: {forms}; 'of matmul' is the second yardstick)")]
    return out


def _op_table(results: dict, group: str, backends: list[str]) -> list[str]:
    rows_in = [r for r in results["ops"] if r["group"] == group]
    if not rows_in:
        return []
    shown = [b for b in backends if any(b in r["backends"] for r in rows_in)]
    torch = "torch" in shown
    headers = ["op (float32; best time)", "work"] + [f"{b} time" for b in shown] + [f"{b} rate" for b in shown]
    headers += (["speedup"] if {"numpy", "numba"} <= set(shown) else []) + ["numba of peak", "allowed",
                                                                          "numba of matmul"]
    headers += ["fastcnn / torch", "torch of peak"] if torch else []
    rows = []
    for r in rows_in:
        b = r["backends"]
        flops = r["unit"] == "GFLOP/s"
        work = f"{r['work'] / 1e6:.0f} MFLOP" if flops else f"{r['work'] / 1e6:.1f} MB"
        unit = r["unit"].split("/")[0]
        cells = [("~ " if r["derived"] else "") + r["name"] + (" (s)" if r.get("sparse") else "")
                 + _mark(r.get("contended")), work]
        cells += [_fmt_time(b.get(k, {}).get("seconds")) for k in shown]
        cells += [_fmt(b.get(k, {}).get("rate"), ".1f", f" {unit}/s") for k in shown]
        if {"numpy", "numba"} <= set(shown):
            cells.append(_fmt(r.get("speedup"), ".1f", "x"))
        n = b.get("numba", {})
        cells += [_fmt(n.get("fraction_of_peak"), ".0%"), _fmt(r.get("allowed_fraction"), ".0%"),
                  _fmt(n.get("fraction_of_matmul"), ".0%")]
        if torch:
            cells += [_fmt(r.get("fastcnn_over_torch"), ".2f"), _fmt(b.get("torch", {}).get("fraction_of_peak"), ".0%")]
        rows.append(cells)
    title = (f"Ops of the network (batch {BATCH_SIZE})" if group == "network"
             else "General shapes (forward and backward of convolutions users build; no NumPy timing)")
    out = [_heading(title, any(r.get("contended") for r in rows_in)), _table(headers, rows)]
    if group == "network":
        out.append("(~ = derived as backward-input+weight minus backward-weight; pooling moves bytes: GB/s, "
                   "no fraction; allowed = the fraction of peak the op's arithmetic intensity permits at the "
                   "measured bandwidth" + ("; fastcnn / torch = time ratio, below 1 fastcnn is faster" if torch else "")
                   + ")")
        if any(r.get("sparse") for r in rows_in):
            out.append("(s) = numba multiplies only the max pool's winners (its sparse backward); its rate and "
                       "fraction count the dense FLOPs, so they can pass the peak")
    else:
        notes = {r["layer"]: r["note"].split("; ")[-1] for r in rows_in if not r["derived"]}
        out.append("shapes: " + "; ".join(f"{k}: {v}" for k, v in notes.items()))
    slow = results.get("slowest_op")
    if slow and slow["group"] == group:
        out.append(f"slowest against its roofline: {slow['name']} at {slow['fraction_of_peak']:.0%} of peak "
                   f"({slow['of_allowed']:.0%} of the {slow['allowed_fraction']:.0%} its intensity allows)")
    return out + [""]


def _passes(n: int) -> str:
    return "one pass" if n == 1 else f"fastest of {n} passes"


def format_report(results: dict) -> str:
    """The human-readable tables fastcnn-bench prints."""
    net, st = results["network"], results["settings"]
    backends = st["backends"] + (["torch"] if st.get("compare") == "torch" else [])
    out = _header(results) + [""]
    out += _op_table(results, "network", backends) + _op_table(results, "general", backends)

    tr = results["training"]
    out.append(_heading(f"Training epoch ({TRAIN_IMAGES:,} images, batch {BATCH_SIZE}, forward+backward+AdamW, "
                        f"real MNIST; {net['epoch_flops'] / 1e12:.3f} TFLOP per epoch)",
                        any(r.get("contended") for r in tr.values())))
    rows = []
    for b in backends:
        t = tr.get(b)
        if t:
            rows.append([b + _mark(t["contended"]), t["batches"], _fmt_time(t["seconds_per_batch"]),
                         f"{t['images_per_s']:.0f}", f"{t['epoch_seconds']:.1f} s",
                         f"{t['ideal_epoch_seconds']:.1f} s", f"{t['ratio_to_ideal']:.1f}x",
                         f"{t['fraction_of_peak']:.0%}", f"{t['fraction_of_matmul']:.0%}",
                         f"{t['cpu_seconds_per_second']:.2f}", _fmt(t.get("other_load"), ".2f")])
    out.append(_table(["backend", "batches", "per batch", "images/s", "s/epoch", "ideal s/epoch", "ratio",
                       "of peak", "of matmul", "CPU/wall", "other load"], rows))
    if results.get("training_speedup"):
        out.append(f"numba speedup per epoch over the NumPy reference: {results['training_speedup']:.1f}x")
    if results.get("training_fastcnn_over_torch"):
        out.append(f"fastcnn / torch epoch time: {results['training_fastcnn_over_torch']:.2f} "
                   f"(steps alternated in blocks of {BLOCK_BATCHES} batches, each block after a 20 ms pause "
                   "and one untimed step)")
    out.append(f"(ideal = epoch FLOPs at the FMA peak; the first {st['warmup_batches']} batches of each run are "
               "warm-up and not timed)")
    performed, numba_row = net.get("numba_epoch_flops_at_most"), tr.get("numba")
    if performed and numba_row and performed < net["epoch_flops"]:
        peak = results["limits"]["peak"]["gflops"] * 1e9
        out.append(f"(these are dense FLOPs, what PyTorch performs; numba's sparse backward multiplies at most one "
                   f"pixel per max-pool window: at most {performed / 1e12:.3f} TFLOP per epoch, "
                   f"{performed / numba_row['epoch_seconds'] / peak:.0%} of peak counted so)")
    out.append("")

    ev = results["evaluation"]
    out.append(_heading(f"Evaluation ({st['eval_images']} test images in batches of {EVAL_BATCH_SIZE}, "
                        f"{_passes(st['eval_repeats'])}, extrapolated to 10,000; "
                        f"{net['test_set_flops'] / 1e9:.1f} GFLOP per test set)",
                        any(r.get("contended") for r in ev.values())))
    rows = [[b + _mark(e["contended"]), f"{e['images_per_s']:.0f}", f"{e['test_set_seconds']:.2f} s",
             f"{e['ideal_test_set_seconds']:.2f} s", f"{e['ratio_to_ideal']:.1f}x", f"{e['fraction_of_peak']:.0%}",
             f"{e['fraction_of_matmul']:.0%}", f"{e['cpu_seconds_per_second']:.2f}", _fmt(e.get("other_load"), ".2f")]
            for b, e in ev.items()]
    out.append(_table(["backend", "images/s", "s/test set", "ideal", "ratio", "of peak", "of matmul", "CPU/wall",
                       "other load"], rows))

    scaling = results["thread_scaling"]
    if scaling:
        out += ["", _heading("Thread scaling of the Numba training epoch (numba.set_num_threads)",
                             any(r.get("contended") for r in scaling))]
        rows = [[f"{r['threads']}{_mark(r['contended'])}", _fmt_time(r["seconds_per_batch"]),
                 f"{r['images_per_s']:.0f}",
                 f"{r['epoch_seconds']:.1f} s", f"{r['speedup']:.2f}x", f"{r['efficiency']:.0%}",
                 f"{r['cpu_seconds_per_second']:.2f}", _fmt(r.get("other_load"), ".2f")] for r in scaling]
        out.append(_table(["threads", "per batch", "images/s", "s/epoch", "speedup", "efficiency", "CPU/wall",
                           "other load"], rows))
    if results.get("layer_scaling"):
        from fastcnn.benchmarks.scaling import format_layer_scaling
        out += ["", "Per-layer speedup of the Numba training step, and its serial share (profiled at 1 and N threads)",
                format_layer_scaling(results["layer_scaling"])]
    out += ["", (f"(CPU/wall: CPU seconds this process got per second; other load: cores other programs used "
                 f"meanwhile; {MARK}: other programs took cores this measurement needed, so its time is pessimistic)")]
    starved = contended_sections(results)
    if starved:
        out.append(f"note: contended sections: {', '.join(starved)}; run again on a quiet machine")
    out += ["", f"measured in {results['elapsed_seconds']:.0f} s"
            + (f" (kernel compilation {results['compile_seconds']:.0f} s, not timed)" if "compile_seconds" in results
               else "")]
    return "\n".join(out)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(results: dict, path: Path) -> Path:
    """results.json, written atomically (never half-written)."""
    return atomic_json(path, results, default=_json_default)
