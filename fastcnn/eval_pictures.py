"""``fastcnn-eval MODEL --filters PNG`` and ``fastcnn-eval MODEL --inspect IMAGE|test:N ... --out DIR``:
the options, their checks and their run, kept apart from the rest of :mod:`fastcnn.evaluate`.

``--filters PNG`` draws every convolution layer's filters (:func:`fastcnn.inspect_plots.plot_filters`).
``--inspect`` writes one page per image into ``--out`` (``inspect_<name>.png``,
:func:`fastcnn.inspect_plots.plot_inspection`): an image file is prepared like an MNIST digit
(:func:`fastcnn.images.prepare_digit`), ``test:N`` is the N-th image (from 0) of the model's test set.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from fastcnn._cli import UsageError, probe_writable, write_line
from fastcnn.images import IMAGE_SUFFIXES, InputError, prepare_digit, read_colour_image, read_image

_TEST_REF = re.compile(r"test:(\d+)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filters", type=Path, default=None, metavar="PNG",
                   help="draw every convolution layer's filters into this PNG")
    p.add_argument("--inspect", nargs="+", default=None, metavar="IMAGE",
                   help="write one page per image into --out (inspect_NAME.png): the prepared input, every "
                        "layer's output maps, the saliency of the prediction and the top 3 classes; IMAGE is a "
                        ".png/.jpg/.npy file (prepared like an MNIST digit) or test:N, the N-th test image")


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError for a --filters name that is not a PNG or an --inspect entry that is neither an image
    file name nor test:N; checks the output folders can be written."""
    if args.filters is not None:
        if args.filters.suffix.lower() != ".png":
            raise UsageError(f"--filters writes a PNG: give a name ending in .png, not {args.filters}")
        probe_writable(args.filters.parent, "--filters folder", create=False)
    for entry in args.inspect or []:
        if not _TEST_REF.fullmatch(entry) and Path(entry).suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"--inspect takes image files (.png, .jpg, .jpeg, .npy) or test:N, not {entry!r}")
    if args.inspect:
        probe_writable(args.out, "--out", create=False)


def wanted(args: argparse.Namespace) -> bool:
    return args.filters is not None or bool(args.inspect)


def _page_name(entry: str) -> str:
    m = _TEST_REF.fullmatch(entry)
    stem = f"test_{m.group(1)}" if m else Path(entry).stem
    return "inspect_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + ".png"


def run(args: argparse.Namespace, model, dtype, side: int, names, load_test_images, err) -> int:
    """Draw ``--filters`` and every ``--inspect`` page; an unusable image is a one-line error through
    ``err`` and the others are still drawn. ``load_test_images()`` -> the test images (N, C, H, W)
    uint8, called once, only for test:N. Returns the exit status (0 or 1)."""
    import numpy as np

    from fastcnn.data import to_float
    from fastcnn.evaluate import normalise
    from fastcnn.inspect import conv_filters, inspect_image
    from fastcnn.inspect_plots import plot_filters, plot_inspection
    from fastcnn.normalization import data_facts

    norm = data_facts(model).normalization           # images are scaled as in training
    channels, height, width = model.input_shape or (1, side, side)
    status = 0
    if args.filters is not None:
        args.filters.parent.mkdir(parents=True, exist_ok=True)
        write_line(f"wrote {plot_filters(conv_filters(model), args.filters, title=f'Filters of {args.checkpoint}')}")
    test_images = None
    for entry in args.inspect or []:
        m = _TEST_REF.fullmatch(entry)
        try:
            if m:
                if test_images is None:
                    test_images = load_test_images()
                n = int(m.group(1))
                if n >= len(test_images):
                    raise InputError(f"{entry}: the test set has {len(test_images)} images (test:0 .. "
                                     f"test:{len(test_images) - 1})")
                x, what = to_float(test_images[n:n + 1], dtype, **norm.kwargs())[0], f"test image {n}"
            else:
                if channels == 3 and Path(entry).suffix.lower() != ".npy":     # a colour model sees colour
                    img = read_colour_image(entry, (height, width))
                else:                                                        # a digit, in every channel
                    prep = prepare_digit(read_image(entry), size=side, box=round(side * 20 / 28), what=entry)
                    img = np.repeat(prep.image[None], channels, axis=0)
                x, what = normalise(img[None], dtype, norm)[0], Path(entry).name
        except InputError as exc:
            err(exc)
            status = 1
            continue
        result = inspect_image(model, x)
        k, p = result.top[0]
        label = names[k] if names else str(k)
        args.out.mkdir(parents=True, exist_ok=True)
        path = plot_inspection(result, args.out / _page_name(entry), class_names=names,
                               title=f"{what}: predicted {label} (p={p:.2f})")
        write_line(f"{entry}: {'class' if names else 'digit'} {label} (p={p:.2f}); wrote {path}")
    return status


__all__ = ["add_arguments", "check_arguments", "run", "wanted"]
