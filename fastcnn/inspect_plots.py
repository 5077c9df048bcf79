"""Pictures of what :mod:`fastcnn.inspect` computes (matplotlib, off-screen Agg canvas):

* :func:`plot_filters`: every convolution layer's filters as a grid, one colour scale per layer
  (symmetric about 0, blue negative, red positive) with its colour bar. A first layer with one or
  two input channels shows each filter per channel; with three channels as one colour image; a
  deeper layer shows, per filter, its strongest input channel (largest weight norm; or the mean
  over input channels with ``deep="mean"``).
* :func:`plot_inspection`: one page per image: the prepared input, the saliency overlaid on it, the
  top classes as bars, then every layer's output maps in order, each layer as one mosaic with its
  own colour scale and colour bar.

Both write a PNG atomically and return its path.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fastcnn._atomic import atomic_write
from fastcnn.inspect import Filters, Inspection

__all__ = ["mosaic", "plot_filters", "plot_inspection"]

_DIVERGING = "RdBu_r"
_GAP = "0.45"           # the colour between tiles: grey, unlike any weight (0 is white) or activation


def _cmap(name):
    import matplotlib
    return matplotlib.colormaps[name].with_extremes(bad=_GAP)


def _columns(k: int) -> int:
    """Tiles per row: 8 up to 32 tiles, 16 beyond, fewer when there are fewer."""
    return min(k, 8 if k <= 32 else 16)


def _save_png(fig, path, dpi=100) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write(Path(path), lambda fh: fh.write(buf.getvalue()))


def mosaic(tiles: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """(K, H, W) tiles -> one (rows*(H+gap)-gap, cols*(W+gap)-gap) image, row by row, NaN in the gaps
    and empty cells (drawn as background)."""
    tiles = np.asarray(tiles, dtype=np.float64)
    k, h, w = tiles.shape
    cols = max(1, min(cols, k))
    rows = -(-k // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[i]
    return out


def _limit(a: np.ndarray) -> float:
    m = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 0.0
    return m if m > 0 else 1.0


def _filter_tiles(f: Filters, first: bool, deep: str) -> tuple[np.ndarray, str, int]:
    """(tiles, caption, columns) of one layer's filters for :func:`plot_filters`; 3-channel first
    layers give (K, R, S, 3) colour tiles."""
    w = np.asarray(f.weight, np.float64)
    k, c = w.shape[:2]
    if first and c == 3:
        return w.transpose(0, 2, 3, 1), "as colour (R, G, B)", _columns(k)
    if first and c <= 2:
        tiles = w.transpose(1, 0, 2, 3).reshape(c * k, *w.shape[2:])     # one row block per input channel
        cols = _columns(k)
        what = "one filter per cell" if c == 1 else "input channel 0's filters, then channel 1's"
        return tiles, what, cols
    if deep == "mean":
        return w.mean(axis=1), f"mean over {c} input channels", _columns(k)
    strongest = np.sqrt((w ** 2).sum(axis=(2, 3))).argmax(axis=1)
    return w[np.arange(k), strongest], f"each filter's strongest of {c} input channels", _columns(k)


def plot_filters(filters: list[Filters], path, *, title: str | None = None, deep: str = "strongest") -> Path:
    """Write every convolution layer's filters to the PNG ``path`` (see the module description)."""
    from matplotlib.figure import Figure

    if deep not in ("strongest", "mean"):
        raise ValueError(f"deep must be 'strongest' or 'mean', got {deep!r}")
    if not filters:
        raise ValueError("the model has no convolution layer: there are no filters to draw")
    blocks = []
    for n, f in enumerate(filters):
        tiles, what, cols = _filter_tiles(f, n == 0, deep)
        if tiles.ndim == 4:                                       # colour: one mosaic per colour plane
            image = np.stack([mosaic(tiles[..., j], cols) for j in range(3)], axis=-1)
        else:
            image = mosaic(tiles, cols)
        blocks.append((f, image, what))
    width = 9.0
    heights = [max(1.2, width * 0.75 * im.shape[0] / im.shape[1]) + 0.5 for _, im, _ in blocks]
    fig = Figure(figsize=(width, sum(heights) + 0.5))
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (f, image, what) in zip(subfigs, blocks):
        ax = sub.add_subplot()
        m = _limit(image)
        if image.ndim == 3:          # colour: a shared scale maps [-m, m] to [0, 1] for every plane
            shown = np.where(np.isnan(image), float(_GAP), (image + m) / (2 * m))
            ax.imshow(np.clip(shown, 0, 1), interpolation="nearest")
            im = ax.imshow(np.full(image.shape[:2], np.nan), cmap="gray", vmin=-m, vmax=m)
        else:
            im = ax.imshow(image, cmap=_cmap(_DIVERGING), vmin=-m, vmax=m, interpolation="nearest")
        sub.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="weight")
        k, c, r, s = f.weight.shape
        ax.set_title(f"layer {f.index} Conv2D {c}\u2192{k}: {k} filters {r}x{s}, {what}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Convolution filters (one colour scale per layer, 0 = white)", fontsize=11)
    return _save_png(fig, path)


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A (C, H, W) network input as something imshow draws: gray (H, W) or RGB (H, W, 3) in [0, 1]."""
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    if image.shape[0] == 3:
        return scaled.transpose(1, 2, 0), None
    return scaled.mean(axis=0), "gray"


def plot_inspection(insp: Inspection, path, *, title: str | None = None,
                    class_names: list[str] | None = None) -> Path:
    """Write one image's inspection page to the PNG ``path`` (see the module description)."""
    from matplotlib.figure import Figure

    name = (lambda k: class_names[k]) if class_names else str
    spatial = [m for m in insp.maps if m.output.ndim == 3]
    flat = [m for m in insp.maps if m.output.ndim == 1 and m.name != "Flatten" and m is not insp.maps[-1]]
    width = 12.0
    tiles = []
    for m in spatial:
        k, h, w = m.output.shape
        tiles.append(mosaic(m.output, 16 if k >= 16 else k))
    heights = [2.6] + [max(1.0, width * 0.85 * t.shape[0] / t.shape[1]) + 0.4 for t in tiles] + [1.2] * len(flat)
    total = sum(heights) + 0.45 * len(heights) + 1.0     # room for each row's title and the page's
    fig = Figure(figsize=(width, total))
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights, hspace=0.6, wspace=0.35,
                            top=1 - 1.0 / total, bottom=0.3 / total, left=0.05, right=0.95)

    shown, cmap = _display(insp.input)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(shown, cmap=cmap, interpolation="nearest")
    ax.set_title(f"prepared input {insp.input.shape[1]}x{insp.input.shape[2]}", fontsize=9)
    ax.set_axis_off()

    ax = fig.add_subplot(grid[0, 1])
    sal = np.abs(insp.saliency).max(axis=0)
    sal = sal / sal.max() if sal.max() > 0 else sal
    ax.imshow(shown, cmap=cmap, interpolation="nearest")
    im = ax.imshow(np.ma.masked_less(sal, 0.05), cmap="inferno", alpha=0.7, vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"saliency of class {name(insp.predicted)}:\n|d logit / d pixel|, largest = 1", fontsize=9)
    ax.set_axis_off()

    ax = fig.add_subplot(grid[0, 2])
    labels = [name(c) for c, _ in insp.top][::-1]
    probs = [p for _, p in insp.top][::-1]
    bars = ax.barh(range(len(probs)), probs, color=["#9bb"] * (len(probs) - 1) + ["#d62"])
    ax.set_yticks(range(len(probs)), labels)
    ax.set_xlim(0, 1.15)
    for bar, p in zip(bars, probs):
        ax.text(bar.get_width() + 0.02, bar.get_y() + bar.get_height() / 2, f"{p:.1%}", va="center", fontsize=9)
    ax.set_title(f"top {len(probs)} classes", fontsize=9)
    ax.set_xlabel("probability")

    for row, (m, image) in enumerate(zip(spatial, tiles), start=1):
        ax = fig.add_subplot(grid[row, :])
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        if lo < 0:                    # signed maps (conv, BatchNorm): 0 is white
            lim = _limit(image)
            im = ax.imshow(image, cmap=_cmap(_DIVERGING), vmin=-lim, vmax=lim, interpolation="nearest")
        else:                         # after ReLU: black is 0
            im = ax.imshow(image, cmap=_cmap("magma"), vmin=0, vmax=hi if hi > 0 else 1, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
        k, h, w = m.output.shape
        ax.set_title(f"layer {m.index} {m.layer}: {k} maps {h}x{w}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for row, m in enumerate(flat, start=1 + len(spatial)):
        ax = fig.add_subplot(grid[row, :])
        ax.bar(range(len(m.output)), m.output, width=1.0, color="#456")
        ax.set_title(f"layer {m.index} {m.layer}: {len(m.output)} values", fontsize=9)
        ax.set_xlim(-0.5, len(m.output) - 0.5)
    k, p = insp.top[0]
    fig.suptitle(title or f"prediction {name(k)} (p={p:.2f})", fontsize=12, y=1 - 0.25 / total)
    return _save_png(fig, path)

