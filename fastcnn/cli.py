"""``fastcnn-train`` (also ``python -m fastcnn``): train the MNIST CNN from the command line.

Exit codes: 0 success, 1 runtime error (data, library or output-file problems), 2 invalid
arguments, 130 interrupted (Ctrl-C). Every error is one line on stderr,
``fastcnn-train: error: <message>``, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

PROG = "fastcnn-train"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """An invalid argument found after parsing (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage block) and exit code 2."""

    def error(self, message):
        raise UsageError(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; appends "(default: X)" to an option's help unless the help
    already names its default or there is nothing to show (None, or a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def one_line(message):
    """Collapse a multi-line message into one line ("Looked in:\\n  a\\n  b" -> "Looked in: a; b")."""
    out = ""
    for part in (p.strip() for p in str(message).splitlines()):
        if not part:
            continue
        out = part if not out else out + (" " if out.endswith(":") else "; ") + part
    return out or "unknown error"


# ------------------------------------------------------------------------------ argument types

def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _float_in(lo, hi=math.inf, lo_open=False, hi_open=True):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_lo = value <= lo if lo_open else value < lo
        bad_hi = value >= hi if hi_open else value > hi
        if not math.isfinite(value) or bad_lo or bad_hi:
            lo_txt = f"> {lo:g}" if lo_open else f">= {lo:g}"
            hi_txt = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {lo_txt}{hi_txt}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


_EPILOG = """\
examples:
  fastcnn-train                                   # 5 epochs of AdamW on MNIST, plots in plots/
  fastcnn-train --epochs 1 --backend numpy --metrics out/metrics.json
  fastcnn-train --optimizer sgd --lr 0.05 --threads 2 --data-dir ~/data/mnist --no-download

data: --data-dir, then $FASTCNN_DATA_DIR, then ~/.cache/fastcnn/<dataset> (downloaded there
unless --no-download). Exit codes: 0 ok, 1 runtime error, 2 bad arguments, 130 interrupted.
"""


def build_parser():
    from fastcnn.backend import BACKENDS, ENV_VAR
    from fastcnn.train import (DEFAULT_LR, DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY, DTYPES, OPTIMIZERS, SCHEDULES,
                               TrainConfig)

    d = TrainConfig()
    p = _Parser(
        prog=PROG,
        description="Train the fastcnn MNIST CNN (conv 32 - pool - conv 64 - pool - dropout - linear)\n"
                    "on the CPU: one line per epoch, loss and accuracy plots, optional JSON metrics.",
        epilog=_EPILOG, formatter_class=_HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist", "custom"], default="mnist",
                   help="which dataset ('custom': any folder with MNIST's four IDX file names, needs --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (gzipped or not); must exist when given")
    g.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    g.add_argument("--limit-train", metavar="N", type=_int_at_least(1), default=None,
                   help="use only the first N training images (default: all)")
    g.add_argument("--limit-test", metavar="N", type=_int_at_least(1), default=None,
                   help="use only the first N test images (default: all)")

    g = p.add_argument_group("compute")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"conv/pool implementation (default: ${ENV_VAR}, else numba)")
    g.add_argument("--threads", metavar="N", type=_int_at_least(1), default=None,
                   help="Numba threads (numba backend) or BLAS threads (numpy backend), "
                        "1..NUMBA_NUM_THREADS (default: all cores)")
    g.add_argument("--dtype", choices=DTYPES, default=d.dtype, help="floating-point type of weights and data")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", metavar="N", type=_int_at_least(1), default=d.epochs, help="number of epochs")
    g.add_argument("--batch-size", metavar="N", type=_int_at_least(1), default=d.batch_size,
                   help="training batch size (at most the number of training images)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    g.add_argument("--lr", metavar="LR", type=_float_in(0.0, lo_open=True), default=None,
                   help=f"peak learning rate (default: {lrs})")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule,
                   help="'cosine': anneal per step from --lr to 0 over the whole run; 'constant': keep --lr")
    g.add_argument("--momentum", metavar="M", type=_float_in(0.0, 1.0), default=None,
                   help=f"SGD momentum, sgd only (default: {DEFAULT_MOMENTUM:g})")
    wds = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items())
    g.add_argument("--weight-decay", metavar="WD", type=_float_in(0.0), default=None,
                   help=f"weight decay: decoupled for adamw, L2 for sgd (default: {wds})")
    g.add_argument("--dropout", metavar="P", type=_float_in(0.0, 1.0), default=d.dropout,
                   help="dropout probability before the final linear layer, 0 <= P < 1")
    g.add_argument("--batchnorm", action="store_true", help="add batch normalisation after each convolution")
    g.add_argument("--seed", metavar="S", type=_int_at_least(0), default=d.seed,
                   help="seed of the weights, dropout and shuffling")

    g = p.add_argument_group("output")
    g.add_argument("--plots-dir", metavar="DIR", default="plots",
                   help="where train_loss.png and test_acc.png are written (created if missing)")
    g.add_argument("--metrics", metavar="PATH", default=None,
                   help="also write the configuration, per-epoch metrics and timings as JSON here")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no progress bar)")
    return p


# --------------------------------------------------------------------------------- validation

def _probe_writable(directory, what):
    """Create ``directory`` if needed and check a file can really be created in it (os.access
    says yes to root even on read-only mounts)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{what} {str(directory)!r} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UsageError(f"{what} {str(directory)!r} is not writable: {exc.strerror or exc}") from None


def _check_outputs(args):
    _probe_writable(args.plots_dir, "--plots-dir")
    if args.metrics is not None:
        path = Path(args.metrics)
        if path.is_dir() or str(args.metrics).endswith(os.sep):
            raise UsageError(f"--metrics {args.metrics!r} is a directory; give a file path")
        _probe_writable(path.parent if str(path.parent) else Path("."), "--metrics folder")


def make_config(args):
    """The :class:`~fastcnn.train.TrainConfig` for parsed ``args`` (raises UsageError)."""
    from fastcnn.train import TrainConfig
    if args.momentum is not None and args.optimizer != "sgd":
        raise UsageError("--momentum applies only to --optimizer sgd")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      lr_schedule=args.lr_schedule, momentum=args.momentum, weight_decay=args.weight_decay,
                      dropout=args.dropout, batchnorm=args.batchnorm, seed=args.seed, dtype=args.dtype,
                      backend=args.backend, threads=args.threads, limit_train=args.limit_train,
                      limit_test=args.limit_test, quiet=args.quiet)
    try:
        cfg = cfg.resolved()
        if cfg.threads is not None:
            import numba
            limit = numba.config.NUMBA_NUM_THREADS
            if cfg.threads > limit:
                raise ValueError(f"--threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {cfg.threads}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg


def _versions():
    from importlib import metadata

    import numpy
    import fastcnn

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "numpy": numpy.__version__, "numba": version("numba"),
            "fastcnn": fastcnn.__version__}


def write_metrics(path, document):
    """Write ``document`` as JSON to ``path`` atomically."""
    from fastcnn.plots import atomic_write
    text = json.dumps(document, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------------------- main

def _run(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r}: no such directory")
    config = make_config(args)
    _check_outputs(args)
    say = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))

    from fastcnn.data import load_dataset
    from fastcnn.plots import save_plots
    from fastcnn.train import Trainer

    data = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download)
    n_train = min(len(data.x_train), config.limit_train or len(data.x_train))
    n_test = min(len(data.x_test), config.limit_test or len(data.x_test))
    if config.batch_size > n_train:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the training set ({n_train} images)")
    sched = "cosine to 0" if config.lr_schedule == "cosine" else "constant"
    say(f"{PROG}: {data.name} from {data.source_dir} ({n_train} train / {n_test} test images), "
        f"backend {config.backend}, {config.dtype}, {config.optimizer} lr {config.lr:g} ({sched}), "
        f"batch {config.batch_size}, {config.epochs} epoch{'s' if config.epochs != 1 else ''}")

    trainer = Trainer(config, data, log=say)
    state = trainer.run()
    summary = state.summary()
    threads = summary["threads"]
    threads = "" if threads is None else f", {threads} thread{'s' if threads != 1 else ''}"
    say(f"warm-up {summary['warmup_seconds']:.2f} s, first trained batch "
        f"{summary['time_to_first_batch_seconds']:.2f} s after train() entry{threads}")

    paths = save_plots(state.history, args.plots_dir)
    say(f"plots: {', '.join(str(p) for p in paths)}")
    if args.metrics is not None:
        document = {"config": {**asdict(config), "dataset": args.dataset, "data_dir": args.data_dir,
                               "source_dir": str(data.source_dir), "plots_dir": args.plots_dir,
                               "metrics": args.metrics},
                    **summary, "versions": _versions()}
        write_metrics(args.metrics, document)
        say(f"metrics: {args.metrics}")
    return EXIT_OK


def train_main(argv=None):
    """Entry point of ``fastcnn-train``; returns the exit code."""
    from fastcnn.data import DataError
    try:
        return _run(argv)
    except SystemExit as exc:                  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # A later issue saves a checkpoint here. The newline ends the terminal's "^C" line.
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (DataError, ValueError, OSError, MemoryError) as exc:
        _error(str(exc) or type(exc).__name__)
        return EXIT_ERROR
    except Exception as exc:                   # a bug: still one line, the traceback on request
        if os.environ.get("FASTCNN_TRACEBACK"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set FASTCNN_TRACEBACK=1 to see the traceback)")
        return EXIT_ERROR


def _error(message):
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
