"""``fastcnn-train`` (also ``python -m fastcnn``): train the MNIST CNN from the command line.

Exit codes: 0 success, 1 runtime error (data, checkpoint, library or output-file problems), 2
invalid arguments, 3 training diverged, 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM).
Every error is one line on stderr, ``fastcnn-train: error: <message>``, never a traceback.

Outputs are written atomically after every epoch (the checkpoint, the metrics JSON, the two
plots), so whatever stops the process leaves the last complete epoch's files intact. SIGINT and
SIGTERM are caught: during training they stop the run before the next batch (the partial epoch is
dropped), the final metrics (``"status": "interrupted"``) are written and the message says how to
resume; before training starts, and on a second signal, the process stops at once.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

from fastcnn._cli import (EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE,
                          HelpFormatter, Parser, UsageError, float_in, int_at_least, print_error,
                          versions)

PROG = "fastcnn-train"

_EPILOG = """\
examples:
  fastcnn-train                                   # 5 epochs of AdamW on MNIST, plots in plots/
  fastcnn-train --epochs 1 --backend numpy --metrics out/metrics.json
  fastcnn-train --optimizer sgd --lr 0.05 --threads 2 --data-dir ~/data/mnist --no-download
  fastcnn-train --checkpoint run.npz --save-model model.npz   # Ctrl-C, then:
  fastcnn-train --resume run.npz                  # continues bit-identically
  fastcnn-eval model.npz                          # test accuracy, confusion matrix, worst errors

data: --data-dir, then $FASTCNN_DATA_DIR, then ~/.cache/fastcnn/<dataset> (downloaded there
unless --no-download).
stopping: Ctrl-C (SIGINT) or SIGTERM stops before the next batch; the last complete epoch's
checkpoint, the metrics and the plots so far are kept; a second Ctrl-C stops at once.
exit codes: 0 ok, 1 runtime error (data, checkpoint, files), 2 bad arguments, 3 training diverged
(NaN or infinite loss or weights), 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""


def build_parser():
    from fastcnn.backend import BACKENDS, ENV_VAR
    from fastcnn.train import (DEFAULT_LR, DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY, DTYPES, OPTIMIZERS, SCHEDULES,
                               TrainConfig)

    d = TrainConfig()
    p = Parser(
        prog=PROG,
        description="Train the fastcnn MNIST CNN (conv 32 - pool - conv 64 - pool - dropout - linear)\n"
                    "on the CPU: one line per epoch, loss and accuracy plots, optional JSON metrics.",
        epilog=_EPILOG, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist", "custom"], default="mnist",
                   help="which dataset ('custom': any folder with MNIST's four IDX file names, needs --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (gzipped or not); must exist when given")
    g.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    g.add_argument("--limit-train", metavar="N", type=int_at_least(1), default=None,
                   help="use only the first N training images (default: all)")
    g.add_argument("--limit-test", metavar="N", type=int_at_least(1), default=None,
                   help="use only the first N test images (default: all)")

    g = p.add_argument_group("compute")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"conv/pool implementation (default: ${ENV_VAR}, else numba)")
    g.add_argument("--threads", metavar="N", type=int_at_least(1), default=None,
                   help="Numba threads (numba backend) or BLAS threads (numpy backend), "
                        "1..NUMBA_NUM_THREADS (default: all cores)")
    g.add_argument("--dtype", choices=DTYPES, default=d.dtype, help="floating-point type of weights and data")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", metavar="N", type=int_at_least(1), default=d.epochs, help="number of epochs")
    g.add_argument("--batch-size", metavar="N", type=int_at_least(1), default=d.batch_size,
                   help="training batch size (at most the number of training images)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    g.add_argument("--lr", metavar="LR", type=float_in(0.0, lo_open=True), default=None,
                   help=f"peak learning rate (default: {lrs})")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule,
                   help="'cosine': anneal per step from --lr to 0 over the whole run; 'constant': keep --lr")
    g.add_argument("--momentum", metavar="M", type=float_in(0.0, 1.0), default=None,
                   help=f"SGD momentum, sgd only (default: {DEFAULT_MOMENTUM:g})")
    wds = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items())
    g.add_argument("--weight-decay", metavar="WD", type=float_in(0.0), default=None,
                   help=f"weight decay: decoupled for adamw, L2 for sgd (default: {wds})")
    g.add_argument("--dropout", metavar="P", type=float_in(0.0, 1.0), default=d.dropout,
                   help="dropout probability before the final linear layer, 0 <= P < 1")
    g.add_argument("--batchnorm", action="store_true", help="add batch normalisation after each convolution")
    g.add_argument("--seed", metavar="S", type=int_at_least(0), default=d.seed,
                   help="seed of the weights, dropout and shuffling")

    g = p.add_argument_group("output")
    g.add_argument("--plots-dir", metavar="DIR", default="plots",
                   help="where train_loss.png and test_acc.png are written (created if missing)")
    g.add_argument("--metrics", metavar="PATH", default=None,
                   help="also write the configuration, per-epoch metrics and timings as JSON here")
    g.add_argument("--no-timings", action="store_true",
                   help="leave wall-clock times out of --metrics, so that runs with the same seed, backend "
                        "and thread count write byte-identical files")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no progress bar)")
    g.add_argument("--profile", action="store_true",
                   help="after training, print the time of each layer's forward and backward and of the optimizer "
                        "step, in ms per batch and %% of the step (timing does not change results)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="after every epoch, save everything needed to resume (weights, optimizer, random "
                        "generators, metrics, settings) to PATH, atomically")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in checkpoint PATH with its settings (give --epochs to train "
                        "longer); later epochs are saved to PATH too unless --checkpoint names another file")
    g.add_argument("--overwrite", action="store_true",
                   help="let --checkpoint replace an existing file (refused otherwise, to protect earlier runs)")
    g.add_argument("--save-model", metavar="PATH", default=None,
                   help="when training completes, save the model alone (for fastcnn-eval) to PATH")
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


def _check_file_target(path, option):
    """``path`` must be a file path whose folder can be written (created if missing)."""
    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        raise UsageError(f"{option} {str(path)!r} is a directory; give a file path")
    _probe_writable(p.parent if str(p.parent) else Path("."), f"{option} folder")


def _check_outputs(args):
    """Every output location is checked before any data is loaded or anything is trained."""
    _probe_writable(args.plots_dir, "--plots-dir")
    targets = {"--metrics": args.metrics, "--checkpoint": args.checkpoint or args.resume,
               "--save-model": args.save_model}
    for option, path in targets.items():
        if path is not None:
            _check_file_target(path, option)
    from fastcnn.plots import PLOT_FILES
    seen = {str((Path(args.plots_dir) / name).resolve()): "--plots-dir" for name in PLOT_FILES}
    for option, path in targets.items():
        if path is None:
            continue
        key = str(Path(path).resolve())
        if key in seen:
            raise UsageError(f"{option} and {seen[key]} name the same file {str(path)!r}")
        seen[key] = option
    ckpt = args.checkpoint
    if ckpt is not None and Path(ckpt).exists() and not args.overwrite and not (
            args.resume is not None and Path(ckpt).resolve() == Path(args.resume).resolve()):
        raise UsageError(f"--checkpoint {ckpt!r} already exists: continue it with --resume {shlex.quote(ckpt)}, "
                         "replace it with --overwrite, or choose another path")


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


def write_metrics(path, document):
    """Write ``document`` as JSON to ``path`` atomically."""
    from fastcnn._atomic import atomic_write
    text = json.dumps(document, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _explicit_options(argv, args):
    """The ``dest`` names of the options given on the command line (not left at their default)."""
    unset = object()
    probe = build_parser()
    probe.set_defaults(**{dest: unset for dest in vars(args)})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


def _resume_config(args, explicit, ckpt):
    """The configuration of a resumed run: the checkpoint's settings, with ``--epochs``,
    ``--backend``, ``--threads`` and ``--quiet`` from the command line. Any other training option
    given explicitly must equal the checkpoint's (UsageError otherwise)."""
    from fastcnn.train import RESUME_KEYS, TrainConfig
    saved = ckpt.config
    conflicts = []
    for key in RESUME_KEYS + ("dataset",):
        if key not in explicit:
            continue
        mine = getattr(args, key)
        theirs = ckpt.header.get("extra", {}).get("dataset") if key == "dataset" else saved.get(key)
        if mine != theirs:
            conflicts.append(f"--{key.replace('_', '-')} {mine} (checkpoint: {theirs})")
    if conflicts:
        raise UsageError(f"--resume continues with the checkpoint's settings, but {', '.join(conflicts)}; "
                         "leave these options out")
    known = {k: saved[k] for k in RESUME_KEYS if k in saved}
    cfg = TrainConfig(**known,
                      epochs=args.epochs if "epochs" in explicit else saved.get("epochs", args.epochs),
                      backend=args.backend if "backend" in explicit else saved.get("backend"),
                      threads=args.threads if "threads" in explicit else saved.get("threads"),
                      quiet=args.quiet)
    try:
        cfg = cfg.resolved()
    except ValueError as exc:
        raise UsageError(f"--resume {args.resume}: {exc}") from None
    if ckpt.epoch >= cfg.epochs:
        raise UsageError(f"--resume {args.resume}: the checkpoint has completed {ckpt.epoch} of "
                         f"{cfg.epochs} epochs; pass --epochs N (N > {ckpt.epoch}) to train further")
    return cfg


class _Stopped(BaseException):
    """Raised by the signal handler when the process must stop at once."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """SIGINT and SIGTERM while the command runs. Until :attr:`state` is set (data loading,
    compilation) and on a second signal, the handler raises :class:`_Stopped` (atomic writes keep
    every file whole); once training runs it sets ``state.stop_requested``, and the trainer stops
    before its next batch."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.state = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    @property
    def reason(self):
        """What stopped the run: the signal's name, or "stop requested" (a library callback)."""
        return signal.Signals(self.received).name if self.received else "stop requested"

    def _handle(self, signum, frame):
        first = self.received is None
        if first:
            self.received = signum
        if self.state is None or not first:
            raise _Stopped(signum)
        self.state.stop_requested = True
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}{PROG}: {signal.Signals(signum).name} received, stopping before the next batch "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


def _signal_exit(signum):
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------- main

class _Run:
    """One ``fastcnn-train`` invocation: the outputs it writes after every epoch and at the end."""

    def __init__(self, args, config, data, trainer):
        self.args, self.config, self.data, self.trainer = args, config, data, trainer
        self.checkpoint = args.checkpoint or args.resume
        self.saved_epoch = None            # the epoch in self.checkpoint, once this run wrote or read one

    def document(self, status, stop=None):
        args, config, state = self.args, self.config, self.trainer.state
        doc = {"status": status,
               "config": {**asdict(config), "dataset": args.dataset, "data_dir": args.data_dir,
                          "source_dir": str(self.data.source_dir), "plots_dir": args.plots_dir,
                          "metrics": args.metrics, "checkpoint": self.checkpoint, "resume": args.resume},
               **state.summary(timings=not args.no_timings), "versions": versions()}
        if stop is not None:
            doc["stopped"] = stop
        return doc

    def after_epoch(self, state, metrics):
        """Trainer callback: checkpoint, metrics so far, plots so far."""
        from fastcnn.plots import save_plots
        if self.checkpoint is not None:
            self.trainer.save_checkpoint(self.checkpoint, extra={"dataset": self.args.dataset,
                                                                 "source_dir": str(self.data.source_dir)})
            self.saved_epoch = state.epoch
        if self.args.metrics is not None:
            write_metrics(self.args.metrics, self.document("running"))
        save_plots(state.history, self.args.plots_dir)

    def finish(self, status, stop=None):
        """Final metrics; returns a sentence on what was kept."""
        if self.args.metrics is not None:
            write_metrics(self.args.metrics, self.document(status, stop))
        n = len(self.trainer.state.history)
        kept = [f"metrics in {self.args.metrics}"] if self.args.metrics else []
        if n:
            kept.append(f"plots of {n} epoch{'s' if n != 1 else ''} in {self.args.plots_dir}")
        if status != "completed" and self.args.save_model is not None:
            kept.append("no --save-model file (written only when training completes)")
        return ", ".join(kept)

    def resume_hint(self):
        if self.checkpoint is None:
            return "no --checkpoint was given, so the run cannot be resumed"
        if self.saved_epoch is None:
            return "no epoch completed, so there is nothing to resume"
        return (f"epoch {self.saved_epoch} is saved in {self.checkpoint}; resume with: "
                f"{PROG} --resume {shlex.quote(str(self.checkpoint))}")


def _run(argv, signals):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise UsageError(f"--data-dir {args.data_dir!r}: no such directory")
    say = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))

    ckpt = None
    if args.resume is not None:
        from fastcnn.checkpoint import load_checkpoint
        from fastcnn.train import check_resumable
        ckpt = load_checkpoint(args.resume)             # CheckpointError: exit 1, one line
        check_resumable(ckpt)
        config = _resume_config(args, _explicit_options(argv, args), ckpt)
        extra = ckpt.header.get("extra", {})
        args.dataset = extra.get("dataset", args.dataset)
        if args.data_dir is None and extra.get("source_dir") and Path(extra["source_dir"]).is_dir():
            args.data_dir = extra["source_dir"]
    else:
        config = make_config(args)
    _check_outputs(args)

    from fastcnn.data import load_dataset
    from fastcnn.train import Trainer, TrainingDiverged, TrainingInterrupted, format_epoch

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
    run = _Run(args, config, data, trainer)
    if ckpt is not None:
        notes = trainer.restore(ckpt)                  # CheckpointError: exit 1, nothing changed
        run.saved_epoch = ckpt.epoch
        say(f"resuming {args.resume}: {ckpt.epoch} of {config.epochs} epochs done")
        for note in notes:
            say(f"note: {note}")
        for m in trainer.state.history:
            say(f"  {format_epoch(m, config.epochs)}")
    trainer.callbacks.append(run.after_epoch)
    if config.warmup:
        trainer.warm_up()                              # JIT compilation: a signal here stops at once
    signals.state = trainer.state                      # from here on a signal stops between batches
    if args.profile:
        trainer.state.model.start_profile()            # after the warm-up: JIT compilation is not timed

    stop = None
    try:
        state = trainer.run()
    except TrainingDiverged as exc:
        kept = run.finish("diverged", {"reason": "diverged", "epoch": exc.epoch, "batch": exc.batch,
                                       "what": exc.what})
        last = (f"the last good checkpoint (epoch {run.saved_epoch}) is {run.checkpoint}"
                if run.checkpoint is not None and run.saved_epoch is not None else "no checkpoint was written")
        _error(f"{exc}; {last}" + (f"; kept {kept}" if kept else ""))
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        stop = {"reason": signals.reason, "epoch": exc.epoch, "batch": exc.batch}
        where = f"in epoch {exc.epoch} before batch {exc.batch}/{exc.batches}"
        state = trainer.state
    else:
        where = f"after epoch {state.epoch} of {config.epochs}"
        if state.epoch < config.epochs:
            stop = {"reason": signals.reason, "epoch": state.epoch + 1, "batch": 0}
    if stop is not None:
        kept = run.finish("interrupted", stop)
        name = stop["reason"]
        print(f"{PROG}: stopped by {name} {where}; {run.resume_hint()}" + (f"; kept {kept}" if kept else ""),
              file=sys.stderr, flush=True)
        return _signal_exit(signals.received) if signals.received else EXIT_INTERRUPTED

    summary = state.summary()
    threads = summary["threads"]
    threads = "" if threads is None else f", {threads} thread{'s' if threads != 1 else ''}"
    if summary["time_to_first_batch_seconds"] is not None:
        say(f"warm-up {summary['warmup_seconds']:.2f} s, first trained batch "
            f"{summary['time_to_first_batch_seconds']:.2f} s after train() entry{threads}")
    run.finish("completed")
    from fastcnn.plots import PLOT_FILES
    say(f"plots: {', '.join(str(Path(args.plots_dir) / name) for name in PLOT_FILES)}")
    if args.metrics is not None:
        say(f"metrics: {args.metrics}")
    if run.checkpoint is not None:
        say(f"checkpoint: {run.checkpoint} (epoch {state.epoch})")
    if args.save_model is not None:
        from fastcnn.checkpoint import save_checkpoint
        save_checkpoint(args.save_model, state.model, None, epoch=state.epoch, history=state.history,
                        config=asdict(config), rngs=None, model_kwargs=trainer.model_kwargs,
                        extra={"dataset": args.dataset, "data": trainer.data_info,
                               "source_dir": str(data.source_dir)}, threads=state.threads)
        say(f"model: {args.save_model} (evaluate it with: fastcnn-eval {shlex.quote(str(args.save_model))})")
    if args.profile:
        print(state.model.stop_profile().table(), flush=True)
    return EXIT_OK


def train_main(argv=None):
    """Entry point of ``fastcnn-train``; returns the exit code."""
    from fastcnn.checkpoint import CheckpointError
    from fastcnn.data import DataError
    signals = _StopSignals()
    try:
        with signals:
            return _run(argv, signals)
    except SystemExit as exc:                  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except (_Stopped, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
        lead = "\n" if sys.stderr.isatty() else ""
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"{lead}{PROG}: {what} ({signal.Signals(signum).name}); files already written are complete",
              file=sys.stderr, flush=True)
        return _signal_exit(signum)
    except (CheckpointError, DataError, ValueError, OSError, MemoryError) as exc:
        _error(str(exc) or type(exc).__name__)
        return EXIT_ERROR
    except Exception as exc:                   # a bug: still one line, the traceback on request
        if os.environ.get("FASTCNN_TRACEBACK"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (set FASTCNN_TRACEBACK=1 to see the traceback)")
        return EXIT_ERROR


def _error(message):
    print_error(PROG, message)
