"""The PNGs ``fastcnn-eval`` draws: the confusion matrix and the most confidently wrong test images
(``--out``), and the grid of ``--predict`` images as the network sees them (``--predict-grid``). Each
is rendered with Matplotlib's Agg canvas (no display needed) and written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fastcnn._atomic import atomic_write

__all__ = ["MAX_LABELLED_CLASSES", "plot_confident_errors", "plot_confusion_matrix", "plot_predictions"]

#: Up to this many classes the confusion matrix writes each cell's count and names every class;
#: beyond, it is a colour map with the axes' default ticks (text in 65,536 cells takes minutes).
MAX_LABELLED_CLASSES = 30


def _save_figure_atomic(fig, path):
    """Render ``fig`` to PNG at ``path`` via a temporary file in the same folder and a rename."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def plot_confusion_matrix(cm, path, class_names=None, title=None):
    """Write a labelled confusion matrix (rows: true class, columns: predicted) with counts."""
    from matplotlib.figure import Figure
    n = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    threshold = cm.max() / 2 if cm.size else 0
    if n <= MAX_LABELLED_CLASSES:                 # a text per cell: readable, and drawn in time, for few classes
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > threshold else "black")
        ax.set_xticks(range(n), names, rotation=45 if class_names else 0, ha="right" if class_names else "center")
        ax.set_yticks(range(n), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    return _save_figure_atomic(fig, path)


def plot_confident_errors(images, labels, pred, probs, path, top=25, class_names=None):
    """Write a grid of the ``top`` misclassified images with the highest predicted probability.
    Returns (path, number shown)."""
    from matplotlib.figure import Figure
    wrong = np.flatnonzero(pred != labels)
    conf = probs[wrong, pred[wrong]]
    chosen = wrong[np.argsort(-conf, kind="stable")][:top]
    name = (lambda k: class_names[k]) if class_names else str
    cols = max(1, min(5, len(chosen)))
    rows = max(1, -(-len(chosen) // cols))
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows + 0.4))
    if len(chosen) == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    for k, idx in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.asarray(images[idx]).reshape(images.shape[-2:]), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {name(labels[idx])}/pred {name(pred[idx])} (p={probs[idx, pred[idx]]:.2f})",
                     fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Most confidently wrong test images ({len(chosen)} of {len(wrong)} errors)", fontsize=10)
    fig.tight_layout()
    return _save_figure_atomic(fig, path), len(chosen)


def plot_predictions(images, names: list[str], labels: list[str], path: Path, cols: int = 6) -> Path:
    """Write a grid of the images the network classified (each (H, W) grey or (3, H, W) colour, as it
    saw it, [0, 1] shown from black to white), titled with the file name and the prediction."""
    from matplotlib.figure import Figure
    n = len(images)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows + 0.3))
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = images[k]
        ax.imshow(img.transpose(1, 2, 0) if img.ndim == 3 else img, cmap="gray", vmin=0.0, vmax=1.0)
        name = names[k] if len(names[k]) <= 22 else names[k][:10] + "..." + names[k][-9:]
        ax.set_title(f"{name}\n{labels[k]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("fastcnn-eval --predict: each image as the network sees it", fontsize=10)
    fig.tight_layout()
    return _save_figure_atomic(fig, path)
