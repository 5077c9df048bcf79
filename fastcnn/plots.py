"""Training curves as PNG files, drawn with Matplotlib's Agg canvas (no display, no pyplot state).

``save_plots(history, plots_dir)`` writes:

* ``train_loss.png``: loss per epoch, training (mean over the epoch) and test (after it);
* ``test_acc.png``: accuracy (%) per epoch, test and training.

The titles name both curves (the file names are kept for compatibility).

Each file is rendered to a temporary file in ``plots_dir`` and renamed over the final name, so a
crash or interrupt never leaves a half-written PNG behind.
"""
from __future__ import annotations

from pathlib import Path

from fastcnn._atomic import atomic_write

__all__ = ["save_plots", "PLOT_FILES"]

PLOT_FILES = ("train_loss.png", "test_acc.png")


def _figure(title, ylabel, epochs, series):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, values, style in series:
        ax.plot(epochs, values, style, label=label, linewidth=1.8, markersize=6)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(epochs) <= 20:
        ax.set_xticks(list(epochs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_plots(history: list[dict], plots_dir: str | Path) -> list[Path]:
    """Write ``train_loss.png`` and ``test_acc.png`` for ``history`` (a list of per-epoch dicts with
    ``epoch``, ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``; accuracies as fractions;
    with a validation split ``val_loss`` and ``val_acc``, and the test keys only where scored)
    into ``plots_dir`` (created if missing). Returns the two paths."""
    if not history:
        raise ValueError("no epochs to plot")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    epochs = [int(m["epoch"]) for m in history]
    if not any("val_loss" in m for m in history):
        loss = _figure("Loss per epoch: training and test", "cross-entropy loss", epochs,
                       [("train (mean over the epoch)", [m["train_loss"] for m in history], "o-"),
                        ("test (after the epoch)", [m["test_loss"] for m in history], "s--")])
        acc = _figure("Accuracy per epoch: test and training", "accuracy (%)", epochs,
                      [("test (after the epoch)", [100.0 * m["test_acc"] for m in history], "o-"),
                       ("train (during the epoch, dropout on)", [100.0 * m["train_acc"] for m in history], "s--")])
    else:       # a validation split: validation per epoch; test only where it was scored per epoch
        nan = float("nan")
        test = any("test_loss" in m for m in history)
        loss = _figure("Loss per epoch: training, validation" + (" and test" if test else ""), "cross-entropy loss",
                       epochs, [("train (mean over the epoch)", [m["train_loss"] for m in history], "o-"),
                                ("validation (after the epoch)", [m.get("val_loss", nan) for m in history], "s--"),
                                *([("test (after the epoch)", [m.get("test_loss", nan) for m in history], "^:")]
                                  if test else [])])
        acc = _figure("Accuracy per epoch: validation" + (", test" if test else "") + " and training", "accuracy (%)",
                      epochs, [("validation (after the epoch)", [100.0 * m.get("val_acc", nan) for m in history], "o-"),
                               *([("test (after the epoch)", [100.0 * m.get("test_acc", nan) for m in history], "^:")]
                                 if test else []),
                               ("train (during the epoch, dropout on)", [100.0 * m["train_acc"] for m in history],
                                "s--")])
    paths = []
    for name, fig in zip(PLOT_FILES, (loss, acc), strict=True):
        paths.append(atomic_write(plots_dir / name, lambda fh, fig=fig: fig.savefig(fh, format="png")))
    return paths
