"""A sweep's summary (``summary.csv``, ``summary.json``) and comparison plots.

One record per run: its name, group, status (completed, interrupted, diverged, failed,
not-started), the reason when it did not complete, its configuration, final and best test accuracy
(and the epoch of the best), final training loss, the epoch times (training loop only, as in
``fastcnn-train``'s metrics) and where its files are.

Plots (PNG, written atomically), one line per group (runs that differ only in the seed: the mean
over the seeds, with a band from the lowest to the highest seed):

* ``sweep_test_acc.png``: test accuracy (%) after each epoch;
* ``sweep_train_loss.png``: mean training loss of each epoch;
* ``sweep_final_acc.png``: a bar per group, best first, the mean final test accuracy of its
  completed runs, each seed's value as a dot.

Ranking: runs are ranked by final test accuracy, unless they hold out a validation split: then by
the validation accuracy of the model each run kept, and the two accuracy plots show validation
accuracy too. The test set, scored once at the end of each such run, is reported beside it but
never used to choose: choosing by the test set would make its accuracy an optimistic estimate.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from fastcnn._atomic import atomic_write

__all__ = [
    "CSV_COLUMNS",
    "PLOT_FILES",
    "comparison_figures",
    "group_curves",
    "rank",
    "rank_key",
    "record",
    "save_comparison_plots",
    "write_summary",
]

PLOT_FILES = {"test_acc": "sweep_test_acc.png", "train_loss": "sweep_train_loss.png",
              "final_acc": "sweep_final_acc.png"}
_CONFIG_COLUMNS = ("optimizer", "lr", "lr_schedule", "momentum", "weight_decay", "dropout", "batchnorm", "batch_size",
                   "epochs", "val_split", "early_stop", "augment", "seed", "dtype", "backend", "threads",
                   "limit_train", "limit_test")
CSV_COLUMNS = ("run", "group", "status", "rank", "ranked_by", "epochs_done", "val_acc", "final_test_acc",
               "best_val_acc", "best_test_acc", "best_epoch", "final_train_loss", "mean_epoch_seconds",
               *_CONFIG_COLUMNS, "reason", "metrics")


def record(spec, result: dict, out_dir: str | Path, dataset: str) -> dict:
    """The summary record of run ``spec`` (a :class:`~fastcnn.sweep.grid.RunSpec`) from its
    ``result`` (see :func:`fastcnn.sweep.worker.run_one`).

    Without a validation split, ``final_test_acc`` is the last epoch's test accuracy and the best
    epoch is the one of the highest test accuracy. With one, the epochs carry validation scores:
    ``val_acc`` is the validation accuracy of the model the run kept (the last epoch's, or with early
    stopping the epoch of the lowest validation loss), ``best_val_acc`` / ``best_epoch`` the highest
    per-epoch validation accuracy, and ``final_test_acc`` the test accuracy scored once, after
    training, on the kept model (None until the run completes)."""
    from dataclasses import asdict
    doc = result.get("document") or {}
    history = doc.get("epochs") or []
    has_val = spec.config.val_split is not None
    key = "val_acc" if has_val else "test_acc"
    scored = [(i, m[key]) for i, m in enumerate(history) if m.get(key) is not None]
    best = max(scored, key=lambda t: (t[1], -t[0]))[0] if scored else None
    seconds = [m["seconds"] for m in history if m.get("seconds") is not None]
    run_dir = Path(out_dir) / spec.name
    val_acc = final_test = None
    if has_val:
        early = doc.get("early_stopping") if isinstance(doc.get("early_stopping"), dict) else {}
        kept = early.get("best_epoch") or (history[-1]["epoch"] if history else None)
        val_acc = next((m.get("val_acc") for m in history if m["epoch"] == kept), None)
        final_test = (doc.get("final_test") or {}).get("test_acc") if isinstance(doc.get("final_test"), dict) \
            else None
    else:
        final_test = scored[-1][1] if scored else None
    return {"run": spec.name, "group": spec.group, "status": result["status"], "reason": result.get("reason"),
            "config": {**asdict(spec.config), "dataset": dataset},
            "epochs_done": len(history),
            "ranked_by": "val_acc" if has_val else "final_test_acc",
            "val_acc": val_acc,
            "best_val_acc": history[best]["val_acc"] if has_val and scored else None,
            "final_test_acc": final_test,
            "best_test_acc": history[best]["test_acc"] if not has_val and scored else None,
            "best_epoch": history[best]["epoch"] if scored else None,
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "epoch_seconds": seconds,
            "mean_epoch_seconds": sum(seconds) / len(seconds) if seconds else None,
            "history": [{k: m[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                                           "test_acc") if k in m} for m in history],
            "resumed_from": result.get("resumed_from"),
            "metrics": str(run_dir / "metrics.json"), "checkpoint": str(run_dir / "checkpoint.npz")}


def rank_key(records: list[dict]) -> str:
    """What the sweep's runs are ranked by: ``"val_acc"`` when any run holds out a validation split
    (the test set then only reports the chosen runs, it never chooses), else ``"final_test_acc"``."""
    return "val_acc" if any(r.get("ranked_by") == "val_acc" for r in records) else "final_test_acc"


def rank(records: list[dict]) -> list[dict]:
    """Set each record's ``rank`` (1: best) by :func:`rank_key`, highest first; a completed run before
    any other, a run without the score last (rank None). Returns the records in rank order."""
    key = rank_key(records)
    scored = [r for r in records if r.get(key) is not None]
    scored.sort(key=lambda r: (r["status"] != "completed", -r[key]))
    for i, r in enumerate(scored, 1):
        r["rank"] = i
    rest = [r for r in records if r.get(key) is None]
    for r in rest:
        r["rank"] = None
    return scored + rest


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: r.get(k) for k in CSV_COLUMNS if k in r}
        row.update({k: r["config"].get(k) for k in _CONFIG_COLUMNS})
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_summary(out_dir: str | Path, records: list[dict], sweep: dict) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.json`` (``{"sweep": sweep, "ranking": ..., "runs": records}``)
    atomically. The runs keep their order; each gets its ``rank`` (see :func:`rank`) and ``ranking``
    says by what (``by``) and lists the run names best first (``runs``)."""
    out_dir = Path(out_dir)
    ranked = rank(records)
    ranking = {"by": rank_key(records), "runs": [r["run"] for r in ranked if r["rank"] is not None]}
    text = json.dumps({"sweep": sweep, "ranking": ranking, "runs": records}, indent=2, allow_nan=True) + "\n"
    js = atomic_write(out_dir / "summary.json", lambda fh: fh.write(text.encode("utf-8")))
    table = _csv_text(records)
    cs = atomic_write(out_dir / "summary.csv", lambda fh: fh.write(table.encode("utf-8")))
    return cs, js


def group_curves(records: list[dict], key: str) -> dict[str, dict]:
    """Per group (in first-seen order): ``{"epochs": [...], "mean": [...], "low": [...], "high": [...],
    "runs": n}`` of metric ``key`` over the runs of the group that have that epoch (a run stopped early
    contributes its epochs only)."""
    out: dict[str, dict] = {}
    for r in records:
        if r["history"]:
            out.setdefault(r["group"], {"members": []})["members"].append(r["history"])
    for g in out.values():
        epochs = sorted({m["epoch"] for h in g["members"] for m in h})
        values = [[m[key] for h in g["members"] for m in h if m["epoch"] == e and m.get(key) is not None]
                  for e in epochs]
        keep = [i for i, v in enumerate(values) if v]
        g.update(epochs=[epochs[i] for i in keep], mean=[math.fsum(values[i]) / len(values[i]) for i in keep],
                 low=[min(values[i]) for i in keep], high=[max(values[i]) for i in keep], runs=len(g["members"]))
        del g["members"]
    return out


def _new_figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.2, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _curve_figure(records: list[dict], key: str, title: str, ylabel: str, scale: float):
    from matplotlib.ticker import MaxNLocator
    fig, ax = _new_figure(title, "epoch", ylabel)
    curves = group_curves(records, key)
    for group, c in curves.items():
        label = group if c["runs"] == 1 else f"{group} (mean of {c['runs']} seeds, band: min-max)"
        (line,) = ax.plot(c["epochs"], [scale * v for v in c["mean"]], "o-", label=label, linewidth=1.8,
                          markersize=5)
        line.set_gid(group)
        if c["runs"] > 1:
            ax.fill_between(c["epochs"], [scale * v for v in c["low"]], [scale * v for v in c["high"]],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _bar_figure(records: list[dict]):
    key = rank_key(records)
    what = "validation accuracy of the kept model" if key == "val_acc" else "final test accuracy"
    fig, ax = _new_figure(f"{what[0].upper()}{what[1:]} (completed runs, best first)", "",
                          "val acc (%)" if key == "val_acc" else "test accuracy (%)")
    groups: dict[str, list[float]] = {}
    for r in records:
        if r["status"] == "completed" and r.get(key) is not None:
            groups.setdefault(r["group"], []).append(100.0 * r[key])
    groups = dict(sorted(groups.items(), key=lambda kv: -math.fsum(kv[1]) / len(kv[1])))
    names = list(groups)
    means = [math.fsum(v) / len(v) for v in groups.values()]
    bars = ax.bar(range(len(names)), means, color="tab:blue", alpha=0.75)
    for i, (bar, name) in enumerate(zip(bars, names)):
        bar.set_gid(name)
        ax.plot([i] * len(groups[name]), groups[name], "k.", markersize=6)
        ax.annotate(f"{means[i]:.2f}", (i, means[i]), ha="center", va="bottom", fontsize="small",
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3
                  else "center", fontsize="small")
    if means:
        every = [v for vals in groups.values() for v in vals]
        lo, hi = min(every), max(every)
        pad = max(0.5, (hi - lo) * 0.5)
        ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    fig.tight_layout()
    return fig


def comparison_figures(records: list[dict]) -> dict:
    """The three comparison figures (Matplotlib ``Figure`` objects, keys as :data:`PLOT_FILES`). Each
    curve (``Line2D``) and bar carries its group name as ``gid``. With a validation split the
    accuracy curves and bars are validation accuracy (what ranks the runs; the test set is scored
    once per run and is in the summary), and the bars are in rank order."""
    if rank_key(records) == "val_acc":
        acc = _curve_figure(records, "val_acc", "Validation accuracy after each epoch", "val acc (%)", 100.0)
    else:
        acc = _curve_figure(records, "test_acc", "Test accuracy after each epoch", "test accuracy (%)", 100.0)
    return {"test_acc": acc,
            "train_loss": _curve_figure(records, "train_loss", "Training loss (mean over each epoch)",
                                        "cross-entropy loss", 1.0),
            "final_acc": _bar_figure(records)}


def save_comparison_plots(out_dir: str | Path, records: list[dict]) -> list[Path]:
    """Write the comparison plots into ``out_dir`` (atomically); returns their paths."""
    paths = []
    for key, fig in comparison_figures(records).items():
        paths.append(atomic_write(Path(out_dir) / PLOT_FILES[key], lambda fh, fig=fig: fig.savefig(fh, format="png")))
    return paths
