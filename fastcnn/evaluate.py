"""``fastcnn-eval``: evaluate a saved model on the test set and classify your own images.

    fastcnn-eval CHECKPOINT [--data-dir DIR] [--out DIR] [--backend numba|numpy] [--limit-test N]
                 [--top N] [--test | --no-test]
                 [--predict FILE ... [--raw] [--invert | --no-invert] [--predict-grid PNG]]
                 [--filters PNG] [--inspect IMAGE|test:N ...]

``--filters`` and ``--inspect`` draw the network's filters and, per image, every layer's maps and the
saliency (:mod:`fastcnn.eval_pictures`; see docs/inspect.md).

CHECKPOINT is a file written by ``fastcnn-train --save-model`` or ``--checkpoint`` (or by
:func:`fastcnn.checkpoint.save_checkpoint`).

Test evaluation (the default without ``--predict``; with ``--predict`` only when ``--test`` is given)
uses the test set of the dataset the model was trained on (MNIST, Fashion-MNIST with its class names,
or a custom folder), read from the folder its training found it in, or from ``--data-dir DIR`` (which
is then binding); only the two ``t10k-*`` files are needed. A folder whose images or labels do not fit
the model is refused. It prints the test loss and accuracy and writes two PNGs into ``--out`` (default
``eval/``), each
atomically: ``confusion_matrix.png`` (true class by predicted class, every cell's count written in it
up to :data:`~fastcnn.eval_plots.MAX_LABELLED_CLASSES` classes)
and ``most_confident_errors.png`` (the ``--top`` test images the model got wrong with the highest
probability, titled ``true 4 / pred 9 (p=0.99)``).

``--predict FILE ...`` classifies each image file (``.png``, ``.jpg``/``.jpeg``, or a ``.npy`` array
of integers in 0..255 or floats in [0, 1]; any size) and prints
``FILE: digit 7 (p=0.98; light background: inverted)``. Each image is first prepared as MNIST's
digits were (:func:`fastcnn.images.prepare_digit`): grayscale, inverted when its border is light
(dark ink on paper; ``--invert`` / ``--no-invert`` force it), cropped to the digit, its strokes
brought to MNIST's width, scaled to fit 20 x 20 keeping the aspect ratio, and centred in 28 x 28 by
its centre of mass. ``--raw`` skips all that: the image must then be 28 x 28 already, a light digit
on black (or use ``--invert``). Those sizes are MNIST's; a model of another input shape (C, H, W)
gets H x H (the digit box scaled alike; non-square inputs need ``--raw`` and H x W images), the gray
image repeated in each of its C channels; a colour model (C = 3) gets PNG and JPEG files in colour,
resized to H x W as image folders are read, with no digit preparation (a ``.npy`` is gray: prepared as
above). Every image is scaled by the model's saved normalization
(:func:`fastcnn.normalization.data_facts`). ``--predict-grid PNG`` draws every prepared image, as the
network sees it, with its prediction. CHECKPOINT may come first or after the files.

Errors (a missing, damaged or mismatched checkpoint, missing data, an unreadable image or one of the
wrong shape, type or value range, an image with no digit) print one line ``fastcnn-eval: error: ...``
and exit with status 1; every valid ``--predict`` file is still classified. Usage errors exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from fastcnn import eval_pictures
from fastcnn._cli import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Parser,
    UsageError,
    check_data_dir,
    positive_int,
    print_error,
    probe_writable,
    write_line,
)
from fastcnn._files import OutputRefused, check_output_file, shown
from fastcnn._process import tune_process
from fastcnn.backend import BACKENDS
from fastcnn.checkpoint import CheckpointError, build_model, load_checkpoint
from fastcnn.data import DATASETS, DataError, DataWarning, dataset_spec, find_data_dir, load_dataset, to_float
from fastcnn.datasets.select import SOURCES, detect_source, load_any
from fastcnn.eval_plots import (  # noqa: F401 -- MAX_LABELLED_CLASSES: also imported from here
    MAX_LABELLED_CLASSES,
    plot_confident_errors,
    plot_confusion_matrix,
    plot_predictions,
)
from fastcnn.images import IMAGE_SUFFIXES, InputError, border_level, prepare_digit, read_colour_image, read_image
from fastcnn.normalization import data_facts

PROG = "fastcnn-eval"
CONFUSION_PNG = "confusion_matrix.png"
ERRORS_PNG = "most_confident_errors.png"
_MEAN, _STD = to_float.__kwdefaults__["mean"], to_float.__kwdefaults__["std"]   # training's constants


# ------------------------------------------------------------------------------------ your images

def normalise(images01, dtype, norm=None):
    """[0, 1] pixels (N, H, W), or (N, C, H, W) -> network input (N, C, H, W) with the training
    normalisation (``norm``: a :class:`~fastcnn.normalization.Normalization`; default MNIST's). Pixels
    that are k/255 (8-bit sources) go through :func:`fastcnn.data.to_float` exactly as in training."""
    kwargs = norm.kwargs() if norm is not None else {"mean": _MEAN, "std": _STD}
    images01 = np.asarray(images01, dtype=np.float64)
    if images01.ndim == 3:
        images01 = images01[:, None]
    scaled = images01 * 255.0
    as_bytes = np.rint(scaled)
    if np.all(np.abs(scaled - as_bytes) < 1e-3):
        return to_float(as_bytes.astype(np.uint8), dtype, **kwargs)
    return to_float(images01, dtype, **kwargs)


# --------------------------------------------------------------------------------------- evaluation

def predict_proba(model, x, batch_size=1000):
    """Softmax probabilities (N, classes), float64: :meth:`fastcnn.model.Sequential.predict_proba`."""
    return model.predict_proba(x, batch_size)


def evaluate_probs(probs, labels):
    """-> (mean cross-entropy loss, accuracy, predictions, confusion matrix [true, pred])."""
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    rows = np.arange(len(labels))
    loss = float(-np.log(np.maximum(probs[rows, labels], np.finfo(np.float64).tiny)).mean())
    acc = float((pred == labels).mean())
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return loss, acc, pred, cm


# --------------------------------------------------------------------------------------- the command

def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Evaluate a fastcnn checkpoint on the test set (loss, accuracy, confusion matrix and the most "
        "confidently wrong images as PNGs) and/or classify your own images of digits, prepared the "
        "way MNIST's were."),
        epilog="CHECKPOINT may come before --predict FILE ... or after the files. "
               "Exit status: 0 ok, 1 an error (one line on stderr), 2 a usage error.")
    p.add_argument("checkpoint", type=Path, nargs="?", default=None, metavar="CHECKPOINT",
                   help="checkpoint file written by fastcnn-train")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="folder with the test set's t10k-images/t10k-labels IDX files, gzipped or not; used "
                        "as given (default: the folder the model's training read, else $FASTCNN_DATA_DIR, "
                        "then the cache)")
    p.add_argument("--dataset", choices=SOURCES, default=None,
                   help="test set to use (default: the dataset the model was trained on, else mnist)")
    p.add_argument("--out", type=Path, default=Path("eval"),
                   help=f"folder for {CONFUSION_PNG} and {ERRORS_PNG} (default: eval/)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="implementation of the convolutions (default: $FASTCNN_BACKEND, else numba)")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N",
                   help="evaluate only the first N test images")
    p.add_argument("--top", type=positive_int, default=25, metavar="N",
                   help="how many confidently wrong images to show (default: 25)")
    p.add_argument("--predict", nargs="+", type=Path, default=None, metavar="FILE",
                   help="classify these images: .png, .jpg or .npy (integers 0..255 or floats 0..1), any "
                        "size, dark-on-light or light-on-dark; each is prepared like an MNIST digit "
                        "(inverted if its border is light, cropped, fitted into 20x20, centred by mass)")
    p.add_argument("--raw", action="store_true",
                   help="with --predict: skip the preparation; images must be 28x28, a light digit on black")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="with --predict: --invert inverts every image, --no-invert none (default: those "
                        "whose border is light; with --raw, none)")
    p.add_argument("--predict-grid", type=Path, default=None, metavar="PNG",
                   help="with --predict: write a PNG of each image as the network sees it, with its prediction")
    p.add_argument("--test", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on the test set (default: yes, unless --predict, --filters or --inspect is given)")
    eval_pictures.add_arguments(p)
    return p


def parse_args(parser: Parser, argv=None) -> argparse.Namespace:
    """Parse the command line; CHECKPOINT may also follow ``--predict FILE ...`` (whose ``nargs="+"``
    takes it as one more file): the last name after ``--predict``, when it is not an image, is the
    checkpoint. :class:`UsageError` when there is no checkpoint, no image, or a --predict option
    without --predict."""
    args = parser.parse_args(argv)
    if args.data_dir is None or detect_source(args.data_dir) not in ("npz", "cifar10"):   # files, not folders
        check_data_dir(args.data_dir)
    if args.checkpoint is None:
        if args.predict and args.predict[-1].suffix.lower() not in IMAGE_SUFFIXES:
            args.checkpoint = args.predict.pop()
        else:
            raise UsageError("missing CHECKPOINT: give the model file first (fastcnn-eval MODEL --predict "
                             "FILE ...) or after the image files")
        if not args.predict:
            raise UsageError("--predict needs at least one image file (.png, .jpg, .jpeg or .npy)")
    if args.predict_grid is not None and args.predict_grid.suffix.lower() != ".png":
        raise UsageError(f"--predict-grid writes a PNG: give a name ending in .png, not {args.predict_grid}")
    if not args.predict:
        used = [flag for flag, value in (("--raw", args.raw), ("--invert/--no-invert", args.invert is not None),
                                         ("--predict-grid", args.predict_grid)) if value]
        if used:
            raise UsageError(f"{used[0]} needs --predict FILE ...")
    eval_pictures.check_arguments(args)
    if wants_test(args):
        probe_writable(args.out, "--out", create=False)
    if args.predict_grid is not None:
        probe_writable(args.predict_grid.parent, "--predict-grid folder", create=False)
    _check_outputs(args)
    return args


def _check_outputs(args) -> None:
    """No output replaces an input of this command (an image, the checkpoint) or a file that is not
    one of its PNGs (UsageError)."""
    inputs = [args.checkpoint, *(args.predict or ())]
    outputs = [("--predict-grid", args.predict_grid)] if args.predict_grid is not None else []
    if wants_test(args):
        outputs += [("--out", args.out / CONFUSION_PNG), ("--out", args.out / ERRORS_PNG)]
    try:
        for option, path in outputs:
            check_output_file(path, option, inputs=inputs)
    except OutputRefused as exc:
        raise UsageError(str(exc)) from None


def wants_test(args: argparse.Namespace) -> bool:
    """Whether to evaluate on the test set: --test/--no-test, else only when nothing is predicted."""
    return args.test if args.test is not None else not (args.predict or eval_pictures.wanted(args))


def _err(message):
    print_error(PROG, message)


def _class_label(k, names):
    return f"class {k} ({names[k]})" if names else f"digit {k}"


def _trained_on(ckpt):
    """The dataset the checkpoint's model was trained on ("mnist", "fashion-mnist", "custom"), or None."""
    extra = ckpt.header.get("extra") or {}
    name = extra.get("dataset", ckpt.config.get("dataset"))
    return name if name in SOURCES else None


def _test_data_dir(args, ckpt, dataset):
    """The folder to read ``dataset``'s test set from: ``--data-dir`` (binding) or, for the dataset
    the model was trained on, the folder its training read when that still holds the test files;
    None: the usual search ($FASTCNN_DATA_DIR, the cache, a download)."""
    if args.data_dir is not None or dataset != _trained_on(ckpt):
        return args.data_dir
    source = (ckpt.header.get("extra") or {}).get("source_dir")
    if isinstance(source, str) and find_data_dir(dataset, source, splits=("test",)) is not None:
        return Path(source)
    if dataset == "custom":
        where = f" from {source}, which no longer holds its test files" if isinstance(source, str) else ""
        raise DataError(f"pass --data-dir DIR with the test files of the custom dataset the model was "
                        f"trained on{where}")
    return None


def _check_fits(data, model):
    """DataError (fix first) unless the test images and labels fit the model."""
    from fastcnn.summary import ShapeError, check_input
    fix = f"pass --data-dir with the {data.name} test files the model was trained on"
    have, want = tuple(data.x_test.shape[1:]), model.input_shape
    if want is not None and have != tuple(want):
        fmt = (lambda s: "x".join(map(str, s[1:]))) if have[0] == want[0] else (lambda s: "x".join(map(str, s)))
        raise DataError(f"{fix}: {data.source_dir} holds {fmt(have)} test images, the model takes {fmt(want)}")
    try:
        classes = check_input(model, data.x_test.shape[1:], f"{data.source_dir}").output_shape[0]
    except ShapeError as exc:
        raise DataError(f"{fix}: {exc}") from None
    top = int(data.y_test.max())
    if top >= classes:
        raise DataError(f"{fix}: {data.source_dir} has test labels up to {top}, the model has {classes} "
                        f"classes (0..{classes - 1})")


def _note(args, background: float, inverted: bool) -> str:
    """What was done to an image's polarity, for its output line."""
    if args.raw:
        if inverted:
            return "raw, inverted"
        return "raw, light background: add --invert" if background > 0.5 and args.invert is None else "raw"
    if args.invert is not None:
        return "inverted: --invert" if inverted else "not inverted: --no-invert"
    return "light background: inverted" if inverted else "dark background"


def _predict(args, model, dtype, shape, names, norm=None) -> int:
    """Classify the ``--predict`` files, print one line per image, draw ``--predict-grid``; every
    unusable file is a one-line error, the others are still classified. Returns the exit status.
    A colour model (3 channels) meets a PNG or JPEG in colour, resized as image folders are read; a
    grey image (a ``.npy`` array, or any file for a model of other channels) is prepared as a digit
    (or taken as it is with ``--raw``) and repeated in each of the model's channels."""
    status, good, shown_images, inputs, notes = 0, [], [], [], []
    channels, height, width = shape
    if height != width and not args.raw:
        raise UsageError(f"add --raw and give {height}x{width} images: the model takes non-square images, which "
                         "are not prepared as digits")
    side = height
    for path in args.predict:
        try:
            if channels == 3 and path.suffix.lower() != ".npy":
                img = read_colour_image(path, (height, width))
                good.append(path)
                shown_images.append(img)
                inputs.append(img)
                notes.append("colour, resized")
                continue
            img = read_image(path, (height, width) if args.raw else None)
            if args.raw:
                background, inverted = border_level(img), bool(args.invert)
                img = 1.0 - img if inverted else img
            else:
                prep = prepare_digit(img, size=side, box=round(side * 20 / 28), invert=args.invert,
                                     what=str(path))
                img, background, inverted = prep.image, prep.background, prep.inverted
        except InputError as exc:
            _err(exc)
            status = 1
            continue
        good.append(path)
        shown_images.append(img)
        inputs.append(np.repeat(img[None], channels, axis=0))
        notes.append(_note(args, background, inverted))
    if not good:
        return status
    probs = model.predict_proba(normalise(np.stack(inputs), dtype, norm))
    for path, p, note in zip(good, probs, notes):
        k = int(p.argmax())
        write_line(f"{shown(path)}: {_class_label(k, names)} (p={p[k]:.2f}; {note})")
    if args.predict_grid:
        grid = args.predict_grid
        grid.parent.mkdir(parents=True, exist_ok=True)
        labels = [f"{_class_label(int(p.argmax()), names)} (p={p.max():.2f})" for p in probs]
        write_line(f"wrote {plot_predictions(shown_images, [path.name for path in good], labels, grid)}")
    return status


def _run(args):
    """The command, given parsed arguments; returns the exit status."""
    tune_process()
    ckpt = load_checkpoint(args.checkpoint)
    model = build_model(ckpt, backend=args.backend)
    dtype = np.dtype(ckpt.header["dtype"])
    shape = model.input_shape or (1, 28, 28)
    dataset = args.dataset or _trained_on(ckpt) or "mnist"
    facts = data_facts(model)                       # the training run's scaling and class names
    names = (facts.classes if facts.classes and (args.dataset is None or dataset == _trained_on(ckpt)) else
             dataset_spec(dataset).classes if dataset in DATASETS else None)
    status = 0

    if args.predict:
        status = _predict(args, model, dtype, shape, names, facts.normalization)
    if eval_pictures.wanted(args):
        status = max(status, _pictures(args, ckpt, model, dtype, shape[1], dataset, names))

    if not wants_test(args):
        return status

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        if dataset in DATASETS or dataset == "custom":
            data = load_dataset(dataset, data_dir=_test_data_dir(args, ckpt, dataset), splits=("test",))
        else:                  # image folders, arrays, CIFAR-10: --data-dir, else where training read them
            source = (ckpt.header.get("extra") or {}).get("source_dir") if dataset == _trained_on(ckpt) else None
            extra = ckpt.header.get("extra") or {}
            size = extra.get("image_size") if dataset == _trained_on(ckpt) else None     # read as training did
            data = load_any(dataset, args.data_dir or source, image_size=tuple(size) if size else None,
                            skip_bad=extra.get("skip_bad") is True)
            names = names or data.classes
    for warning in caught:
        write_line(f"{PROG}: warning: {warning.message}", sys.stderr)
    _check_fits(data, model)
    x_raw, y = data.x_test, data.y_test
    if args.limit_test:
        x_raw, y = x_raw[:args.limit_test], y[:args.limit_test]
    probs = model.predict_proba(to_float(x_raw, dtype, **facts.normalization.kwargs()))
    loss, acc, pred, cm = evaluate_probs(probs, y)
    correct = int((pred == y).sum())
    write_line(f"test loss {loss:.4f}, accuracy {acc:.2%} ({correct}/{len(y)} correct) on {dataset} from "
               f"{data.source_dir}{f' (first {len(y)} images)' if args.limit_test else ''}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{args.out}: cannot create output folder: {exc.strerror or exc}") from None
    title = f"Confusion matrix: {dataset} test, accuracy {acc:.2%} (n={len(y)})"
    cm_path = plot_confusion_matrix(cm, args.out / CONFUSION_PNG, names, title=title)
    err_path, shown = plot_confident_errors(x_raw[:, 0], y, pred, probs, args.out / ERRORS_PNG, args.top,
                                            names)
    write_line(f"wrote {cm_path}")
    write_line(f"wrote {err_path} ({shown} of {len(y) - correct} errors)")
    return status


def _pictures(args, ckpt, model, dtype, side, dataset, names) -> int:
    """``--filters`` and ``--inspect`` (:mod:`fastcnn.eval_pictures`); test:N reads the test set as
    the evaluation does."""
    def test_images():
        data = load_dataset(dataset, data_dir=_test_data_dir(args, ckpt, dataset), splits=("test",))
        _check_fits(data, model)
        return data.x_test

    return eval_pictures.run(args, model, dtype, side, names, test_images, _err)


def eval_main(argv=None):
    """Entry point of ``fastcnn-eval``; returns the exit status (0 ok, 1 error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except UsageError as exc:
        _err(exc)
        return EXIT_USAGE
    except SystemExit as exc:           # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return _run(args)
    except UsageError as exc:
        _err(exc)
        return EXIT_USAGE
    except (CheckpointError, DataError, InputError) as exc:
        _err(exc)
    except OSError as exc:
        _err(f"{exc.filename + ': ' if getattr(exc, 'filename', None) else ''}{exc.strerror or exc}")
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the command never ends in a traceback
        _err(f"unexpected {type(exc).__name__}: {exc}")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(eval_main())
