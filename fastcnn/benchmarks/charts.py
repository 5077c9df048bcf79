"""The three PNG charts of fastcnn-bench (Agg canvas, no pyplot state), written atomically; a chart
whose data was measured under contention says so in its title."""
from __future__ import annotations

from pathlib import Path

from fastcnn._atomic import atomic_write
from fastcnn.benchmarks.measurement import machine_label

CHARTS = ("fraction_of_peak_per_op.png", "epoch_seconds.png", "thread_scaling.png")
COLORS = {"numpy": "#4c72b0", "numba": "#dd8452", "torch": "#8172b3", "ideal": "#55a868"}
CONTENDED = " [contended: other programs took cores]"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib loads slowly
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, title: str, results: dict, contended: bool, path: Path) -> Path:
    fig.suptitle(f"{title}{CONTENDED if contended else ''}\n{machine_label(results['machine'])}", fontsize=9)
    fig.tight_layout()
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def _fraction_chart(results: dict, path: Path) -> Path:
    fig = _figure(9, 7)
    ax = fig.add_subplot()
    rows = [r for r in results["ops"] if r["unit"] == "GFLOP/s"
            and r["backends"].get("numba", {}).get("fraction_of_peak")][::-1]
    peak = results["limits"]["peak"]
    if rows:
        names = [("~ " if r["derived"] else "") + r["name"] for r in rows]
        y = range(len(rows))
        has_torch = any(r["backends"].get("torch", {}).get("fraction_of_peak") for r in rows)
        h = 0.4 if has_torch else 0.8
        vals = [100 * r["backends"]["numba"]["fraction_of_peak"] for r in rows]
        ax.barh([i + (h / 2 if has_torch else 0) for i in y], vals, height=h, color=COLORS["numba"],
                label="fastcnn (Numba)")
        if has_torch:
            tv = [100 * (r["backends"].get("torch", {}).get("fraction_of_peak") or 0) for r in rows]
            ax.barh([i - h / 2 for i in y], tv, height=h, color=COLORS["torch"], label="PyTorch")
        ax.scatter([100 * (r.get("allowed_fraction") or 0) for r in rows], list(y), marker="|", s=200,
                   color="black", label="allowed by arithmetic intensity", zorder=3)
        ax.set_yticks(list(y), names, fontsize=7)
        ax.set_xlabel(f"% of the measured float32 FMA peak ({peak['gflops']:.0f} GFLOP/s, {peak['threads']} threads)",
                      fontsize=8)
        ax.axvline(100, color="gray", lw=0.8, ls="--")
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no Numba convolution timed (--backends without numba)", ha="center", va="center")
        ax.set_axis_off()
    contended = any(r.get("contended") for r in rows) or peak["contended"]
    return _finish(fig, "Convolutions: fraction of the FMA peak (~ = derived)", results, contended, path)


def _epoch_chart(results: dict, path: Path) -> Path:
    fig = _figure(9, 4.5)
    contended = False
    for i, (section, key, ideal_key, label) in enumerate((
            ("training", "epoch_seconds", "ideal_epoch_seconds", "seconds per 60,000-image training epoch"),
            ("evaluation", "test_set_seconds", "ideal_test_set_seconds", "seconds per 10,000-image test set"))):
        ax = fig.add_subplot(1, 2, i + 1)
        data = results[section]
        names = list(data) + ["ideal (FMA peak)"]
        vals = [data[b][key] for b in data] + [results["network"][ideal_key]]
        contended = contended or any(data[b].get("contended") for b in data)
        bars = ax.bar(names, vals, color=[COLORS.get(b, COLORS["ideal"]) for b in names])
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.1f} s", ha="center", va="bottom",
                    fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(0, max(vals) * 1.15)
    return _finish(fig, "MNIST training epoch and evaluation time (batch 128, float32)", results, contended, path)


def _scaling_chart(results: dict, path: Path) -> Path:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    rows = results["thread_scaling"]
    if rows:
        th = [r["threads"] for r in rows]
        sec = [r["epoch_seconds"] for r in rows]
        ax.plot(th, sec, "o-", color=COLORS["numba"], label="Numba, measured")
        ax.plot(th, [sec[0] / t for t in th], "--", color="gray", label="perfect scaling from 1 thread")
        ax.axhline(results["network"]["ideal_epoch_seconds"], color=COLORS["ideal"], ls=":",
                   label=f"ideal at the FMA peak ({results['limits']['peak']['gflops']:.0f} GFLOP/s)")
        for t, v, r in zip(th, sec, rows):
            ax.annotate(f"{v:.1f} s ({r['speedup']:.2f}x)", (t, v), textcoords="offset points", xytext=(4, 6),
                        fontsize=8)
        ax.set_xticks(th)
        ax.set_xlim(0.5, th[-1] + 0.5 + 0.15 * len(th))
        ax.set_xlabel("Numba threads (numba.set_num_threads)")
        ax.set_ylabel("seconds per 60,000-image epoch")
        ax.set_ylim(0, max(sec) * 1.2)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no thread scaling measured (numba backend not selected)", ha="center", va="center")
        ax.set_axis_off()
    return _finish(fig, "Thread scaling of the Numba training epoch", results,
                   any(r.get("contended") for r in rows), path)


def plot_charts(results: dict, out_dir: Path) -> list[Path]:
    """Write the three PNG charts into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [_fraction_chart(results, out_dir / CHARTS[0]), _epoch_chart(results, out_dir / CHARTS[1]),
            _scaling_chart(results, out_dir / CHARTS[2])]
