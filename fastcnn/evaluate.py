"""``fastcnn-eval``: evaluate a saved model on the test set and classify your own images.

    fastcnn-eval CHECKPOINT [--data-dir DIR] [--out DIR] [--backend numba|numpy] [--limit-test N]
                 [--top N] [--predict FILE ...] [--test | --no-test] [--invert]

CHECKPOINT is a file written by ``fastcnn-train --save-model`` or ``--checkpoint`` (or by
:func:`fastcnn.checkpoint.save_checkpoint`).

Test evaluation (the default without ``--predict``; with ``--predict`` only when ``--test`` is given)
uses the test set of the dataset the model was trained on (MNIST, Fashion-MNIST with its class names,
or a custom folder), read from the folder its training found it in, or from ``--data-dir DIR`` (which
is then binding); only the two ``t10k-*`` files are needed. A folder whose images or labels do not fit
the model is refused. It prints the test loss and accuracy and writes two PNGs into ``--out`` (default
``eval/``), each
atomically: ``confusion_matrix.png`` (true class by predicted class, every cell's count written in it)
and ``most_confident_errors.png`` (the ``--top`` test images the model got wrong with the highest
probability, titled ``true 4 / pred 9 (p=0.99)``).

``--predict FILE ...`` classifies each file and prints ``FILE: digit 7 (p=0.98)``. A file is a
``.npy`` array of shape (28, 28) or (1, 28, 28) (integers in 0..255, or floats in [0, 1]) or a
``.png`` image of 28 x 28 pixels (grayscale, or RGB/RGBA reduced to luminance; alpha is ignored).
Images are expected like MNIST, a light digit on a dark background (``--invert`` flips dark-on-light
images); they get the training normalisation (:func:`fastcnn.data.to_float`).

Errors (a missing, damaged or mismatched checkpoint, missing data, an unreadable image or one of the
wrong shape, type or value range) print one line ``fastcnn-eval: error: ...`` and exit with status 1;
every valid ``--predict`` file is still classified. Usage errors exit with status 2.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np

from fastcnn._atomic import atomic_write
from fastcnn._cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, positive_int, print_error
from fastcnn.checkpoint import CheckpointError, build_model, load_checkpoint
from fastcnn.data import (DATASETS, FASHION_MNIST, DataError, DataWarning, dataset_spec, find_data_dir,
                          load_dataset, to_float)
from fastcnn.losses import log_softmax

PROG = "fastcnn-eval"
CONFUSION_PNG = "confusion_matrix.png"
ERRORS_PNG = "most_confident_errors.png"
FASHION_CLASSES = FASHION_MNIST.classes
_LUMA = np.array([0.299, 0.587, 0.114])          # ITU-R BT.601, as Pillow's RGB -> L
_MEAN, _STD = to_float.__kwdefaults__["mean"], to_float.__kwdefaults__["std"]   # training's constants


class InputError(ValueError):
    """A --predict file cannot be used; the message names the file and says why."""


# ------------------------------------------------------------------------------------ reading images

def _as_unit_float(arr, path, kind):
    """A real-valued 2-D image -> float64 pixels in [0, 1] (integers are taken as 0..255)."""
    if arr.dtype.kind == "b" or arr.dtype.kind not in "uif":
        raise InputError(f"{path}: unsupported {kind} data type {arr.dtype} (expected integers in 0..255 "
                         "or floats in [0, 1])")
    if arr.size == 0:
        raise InputError(f"{path}: empty image")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{path}: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{path}: float pixels must lie in [0, 1], got {lo:g}..{hi:g} "
                             "(store 0..255 values as an integer array)")
        return arr.astype(np.float64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise InputError(f"{path}: integer pixels must lie in 0..255, got {lo}..{hi}")
    return arr.astype(np.float64) / 255.0


def _check_shape(arr, path, size):
    h, w = size
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (h, w):
        raise InputError(f"{path}: expected a {h}x{w} image (or 1x{h}x{w}), got shape "
                         f"{'x'.join(map(str, arr.shape)) or 'scalar'}")
    return arr


def read_image(path, size=(28, 28)):
    """Read a ``.npy`` or ``.png`` image -> float64 (H, W) pixels in [0, 1]; :class:`InputError`
    (one line, naming the file) for anything unusable."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".npy", ".png"):
        raise InputError(f"{path}: unsupported file type {ext or '(no extension)'!r} (expected .png or .npy)")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read as a .npy array: {' '.join(str(exc).split())}") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{path}: not a .npy array")
        arr = _check_shape(arr, path, size)
        return _as_unit_float(arr, path, ".npy")
    from matplotlib import image as mpimg
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise InputError(f"{path}: not a PNG image (bad signature)")
        arr = np.asarray(mpimg.imread(path, format="png"))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read PNG: {why}") from None
    if arr.ndim == 3 and arr.shape[2] in (1, 2):          # gray (+ alpha)
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):        # RGB(A) -> luminance
        unit = _as_unit_float(arr[..., :3], path, "PNG") if arr.dtype.kind != "f" else arr[..., :3]
        arr = np.clip(np.asarray(unit, np.float64) @ _LUMA, 0.0, 1.0)
    if arr.ndim != 2:
        raise InputError(f"{path}: unsupported PNG layout of shape {arr.shape}")
    arr = _check_shape(arr, path, size)
    return _as_unit_float(arr, path, "PNG")


def normalise(images01, dtype):
    """[0, 1] pixels (N, H, W) -> network input (N, 1, H, W) with the training normalisation. Pixels
    that are k/255 (8-bit sources) go through :func:`fastcnn.data.to_float` exactly as in training."""
    images01 = np.asarray(images01, dtype=np.float64)
    scaled = images01 * 255.0
    as_bytes = np.rint(scaled)
    if np.all(np.abs(scaled - as_bytes) < 1e-3):
        return to_float(as_bytes.astype(np.uint8)[:, None], dtype)
    return ((images01[:, None] - _MEAN) / _STD).astype(dtype)


# --------------------------------------------------------------------------------------- evaluation

def predict_proba(model, x, batch_size=1000):
    """Softmax probabilities (N, classes), float64, of ``model`` in evaluation mode."""
    out = []
    for i in range(0, len(x), batch_size):
        logits = model.forward(x[i:i + batch_size], training=False)
        out.append(np.exp(log_softmax(np.asarray(logits, np.float64))))
    return np.concatenate(out) if out else np.zeros((0, 10))


def evaluate_probs(probs, labels):
    """-> (mean cross-entropy loss, accuracy, predictions, confusion matrix [true, pred])."""
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    rows = np.arange(len(labels))
    loss = float(-np.log(np.maximum(probs[rows, labels], np.finfo(np.float64).tiny)).mean())
    acc = float((pred == labels).mean())
    cm = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return loss, acc, pred, cm


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


# --------------------------------------------------------------------------------------- the command

def build_parser():
    p = Parser(prog=PROG, description=(
        "Evaluate a fastcnn checkpoint on the test set (loss, accuracy, confusion matrix and the most "
        "confidently wrong images as PNGs) and/or classify your own 28x28 images."),
        epilog="Give CHECKPOINT before --predict FILE ... (which takes every name that follows). "
               "Exit status: 0 ok, 1 an error (one line on stderr), 2 a usage error.")
    p.add_argument("checkpoint", type=Path, help="checkpoint file written by fastcnn-train")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="folder with the test set's t10k-images/t10k-labels IDX files, gzipped or not; used "
                        "as given (default: the folder the model's training read, else $FASTCNN_DATA_DIR, "
                        "then the cache)")
    p.add_argument("--dataset", choices=sorted(DATASETS) + ["custom"], default=None,
                   help="test set to use (default: the dataset the model was trained on, else mnist)")
    p.add_argument("--out", type=Path, default=Path("eval"),
                   help=f"folder for {CONFUSION_PNG} and {ERRORS_PNG} (default: eval/)")
    p.add_argument("--backend", choices=("numba", "numpy"), default=None,
                   help="implementation of the convolutions (default: $FASTCNN_BACKEND, else numba)")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N",
                   help="evaluate only the first N test images")
    p.add_argument("--top", type=positive_int, default=25, metavar="N",
                   help="how many confidently wrong images to show (default: 25)")
    p.add_argument("--predict", nargs="+", type=Path, default=None, metavar="FILE",
                   help="classify these .png (28x28, grayscale or RGB) or .npy (28x28 or 1x28x28; "
                        "integers 0..255 or floats 0..1) images")
    p.add_argument("--invert", action="store_true",
                   help="with --predict: invert the images (for dark digits on a light background)")
    p.add_argument("--test", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on the test set (default: yes, unless --predict is given)")
    return p


def _err(message):
    print_error(PROG, message)


def _class_label(k, names):
    return f"class {k} ({names[k]})" if names else f"digit {k}"


def _trained_on(ckpt):
    """The dataset the checkpoint's model was trained on ("mnist", "fashion-mnist", "custom"), or None."""
    extra = ckpt.header.get("extra") or {}
    name = extra.get("dataset", ckpt.config.get("dataset"))
    return name if name in DATASETS or name == "custom" else None


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


def _check_fits(data, ckpt):
    """DataError (fix first) unless the test images and labels fit the model."""
    kwargs = ckpt.model_kwargs
    shape = (int(kwargs.get("in_channels", 1)), int(kwargs.get("image_size", 28)))
    classes = int(kwargs.get("num_classes", 10))
    fix = f"pass --data-dir with the {data.name} test files the model was trained on"
    _, c, h, w = data.x_test.shape
    if (c, h, w) != (shape[0], shape[1], shape[1]):
        raise DataError(f"{fix}: {data.source_dir} holds {h}x{w} test images, the model takes "
                        f"{shape[1]}x{shape[1]}")
    top = int(data.y_test.max())
    if top >= classes:
        raise DataError(f"{fix}: {data.source_dir} has test labels up to {top}, the model has {classes} "
                        f"classes (0..{classes - 1})")


def _run(args):
    """The command, given parsed arguments; returns the exit status."""
    ckpt = load_checkpoint(args.checkpoint)
    model = build_model(ckpt, backend=args.backend)
    dtype = np.dtype(ckpt.header["dtype"])
    side = int(ckpt.model_kwargs.get("image_size", 28))
    dataset = args.dataset or _trained_on(ckpt) or "mnist"
    names = dataset_spec(dataset).classes
    status = 0

    if args.predict:
        good, images = [], []
        for path in args.predict:
            try:
                img = read_image(path, (side, side))
            except InputError as exc:
                _err(exc)
                status = 1
                continue
            images.append(1.0 - img if args.invert else img)
            good.append(path)
        if good:
            probs = predict_proba(model, normalise(np.stack(images), dtype))
            for path, p in zip(good, probs):
                k = int(p.argmax())
                print(f"{path}: {_class_label(k, names)} (p={p[k]:.2f})")

    run_test = args.test if args.test is not None else not args.predict
    if not run_test:
        return status

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_dataset(dataset, data_dir=_test_data_dir(args, ckpt, dataset), splits=("test",))
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr, flush=True)
    _check_fits(data, ckpt)
    x_raw, y = data.x_test, data.y_test
    if args.limit_test:
        x_raw, y = x_raw[:args.limit_test], y[:args.limit_test]
    probs = predict_proba(model, to_float(x_raw, dtype))
    loss, acc, pred, cm = evaluate_probs(probs, y)
    correct = int((pred == y).sum())
    print(f"test loss {loss:.4f}, accuracy {acc:.2%} ({correct}/{len(y)} correct) on {dataset} from "
          f"{data.source_dir}{f' (first {len(y)} images)' if args.limit_test else ''}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{args.out}: cannot create output folder: {exc.strerror or exc}") from None
    title = f"Confusion matrix: {dataset} test, accuracy {acc:.2%} (n={len(y)})"
    cm_path = plot_confusion_matrix(cm, args.out / CONFUSION_PNG, names, title=title)
    err_path, shown = plot_confident_errors(x_raw[:, 0], y, pred, probs, args.out / ERRORS_PNG, args.top,
                                            names)
    print(f"wrote {cm_path}")
    print(f"wrote {err_path} ({shown} of {len(y) - correct} errors)")
    return status


def eval_main(argv=None):
    """Entry point of ``fastcnn-eval``; returns the exit status (0 ok, 1 error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _err(exc)
        return EXIT_USAGE
    except SystemExit as exc:           # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return _run(args)
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
