"""``fastcnn-train`` (also ``python -m fastcnn``): train a CNN (``--model``, default the MNIST CNN)
from the command line.

Exit codes: 0 success, 1 runtime error (data, checkpoint, library or output-file problems), 2
invalid arguments, 3 training diverged, 128 + the signal's number when stopped by a signal: 130
SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP (closed terminal or ssh session), 131 SIGQUIT (Ctrl-\\).
Every error is one line on stderr, ``fastcnn-train: error: <message>``, never a traceback.

Outputs are written atomically after every epoch (the checkpoint, the metrics JSON, the two
plots), so whatever stops the process leaves the last complete epoch's files intact, and every
ending (completion, divergence, a signal, an error) leaves the metrics file with a final
``status``. The four signals are caught from the first moment of :func:`train_main`: during
training (or the end-of-epoch evaluation) they stop the run before the next batch (the partial
epoch is dropped) and the message says how to resume; before training starts, and on a second
signal, the process stops at once. A closed stdout or stderr (``fastcnn-train | head -1``) only
silences the output: training goes on and saves.

Outputs are protected alike: an existing file of another kind (not a fastcnn checkpoint, metrics
file or PNG) or an input of the run (the data files, the ``--resume`` file) is never replaced;
an existing output of the same kind only with ``--overwrite`` (or, for ``--metrics`` and
``--save-model``, when ``--resume`` continues a run; plots are redrawn freely). Each output is
locked (an advisory ``fcntl`` lock on a ``.<name>.lock`` file beside it, removed on exit) so two
runs never write one file, and temporary files that a killed run left beside it are removed. Where
``fcntl`` is absent (Windows) the run goes on unlocked, after a one-line warning.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import warnings
from dataclasses import replace
from pathlib import Path

# Only light modules at the top: train_main installs the signal handlers before fastcnn.train,
# .data, .checkpoint and .plots (NumPy, Numba, Matplotlib) are imported inside the functions.
from fastcnn._cli import (
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_data_dir,
)
from fastcnn._cli import TRAIN_PROG as PROG
from fastcnn._console import _Console, _error, _header, contention_hint
from fastcnn._outputs import OutputBusy, OutputFailed, _Outputs
from fastcnn._pause import batch_hook, wait_at_start
from fastcnn._record import _Run
from fastcnn._run_config import _explicit_options, _load_resume, _usage_from, make_config
from fastcnn._signals import STOP_SIGNALS, _signal_exit, _Stopped, _StopSignals  # noqa: F401 -- STOP_SIGNALS: public
from fastcnn._train_parser import build_parser  # also imported from here (tests, dev/gen_command_help.py)


def _resolve_dataset(args):
    """``--dataset`` left out: what ``--data-dir`` holds, else mnist. A data file (a .npz, an archive)
    may stand where a folder is expected."""
    from fastcnn.datasets.select import detect_source
    found = detect_source(args.data_dir)
    if args.dataset is None:
        args.dataset = found or "mnist"
    if args.data_dir is None or args.dataset not in ("npz", "cifar10") or found not in ("npz", "cifar10"):
        check_data_dir(args.data_dir)


def _run(argv, signals, console):
    args = build_parser().parse_args(argv)
    console.quiet = args.quiet
    say = console.say
    _resolve_dataset(args)

    ckpt = None
    if args.resume is not None:
        ckpt, config = _load_resume(args, argv, console)
    else:
        if args.model != "mnist-cnn" and "dropout" in _explicit_options(argv, args):
            raise UsageError(f"leave --dropout out: it sets the mnist-cnn model's dropout, not {args.model}'s "
                             "(a model file sets each Dropout layer's p)")
        config = make_config(args)
    if args.summary:
        return _summary(args, config, ckpt, console)
    outputs = _Outputs(args)
    outputs.check()
    run = _Run(args, outputs)
    run.config = config
    signals.run = run
    try:
        outputs.lock(say, console.err)
        return _train(args, config, ckpt, run, signals, console)
    finally:
        outputs.release()


def _model_of(config, ckpt):
    """What Trainer builds the run's network from: None (``config.model``), or on resuming a model
    that is not a built-in one, the checkpoint's own architecture (the model file may be gone)."""
    from fastcnn.model import Sequential
    from fastcnn.zoo import MODELS
    if ckpt is None or config.model in MODELS:
        return None
    return Sequential.from_config(ckpt.model_config, seed=config.seed, dtype=config.dtype, backend=config.backend,
                                  input_shape=ckpt.input_shape)


def _trainer(config, data, ckpt, **kwargs):
    """The run's Trainer; a network that does not fit the data (or a bad model file) is a UsageError."""
    from fastcnn.architecture import ConfigError as ModelError
    from fastcnn.train import ConfigError, Trainer
    try:
        return Trainer(config, data, model=_model_of(config, ckpt), **kwargs)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    except ConfigError as exc:
        raise _usage_from(exc) from None


def _summary(args, config, ckpt, console):
    """--summary: the model built for the data, as a table; nothing is trained or written."""
    from fastcnn.data import load_dataset
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download, splits=("test",))
    trainer = _trainer(replace(config, limit_train=1, limit_test=1, batch_size=1, warmup=False),
                       _Split(data), ckpt)
    model = trainer.state.model
    console.out(f"{config.model} on {data.name} ({'x'.join(map(str, data.x_test.shape[1:]))} images, "
                f"{trainer.num_classes} classes)")
    console.out(str(model.summary(data.x_test.shape[1:], batch_size=config.batch_size)))
    return EXIT_OK


class _Split:
    """A dataset whose training split is its test split: enough to build a model for --summary."""

    def __init__(self, data):
        self.name, self.x_train, self.y_train = data.name, data.x_test, data.y_test
        self.x_test, self.y_test = data.x_test, data.y_test
        self.num_classes = getattr(data, "num_classes", None)


def _train(args, config, ckpt, run, signals, console):
    from fastcnn import trainsetup
    from fastcnn._process import tune_process
    from fastcnn.cpumeter import CpuMeter
    from fastcnn.data import DataWarning
    from fastcnn.datasets.select import load_any
    from fastcnn.train import TrainingDiverged, TrainingInterrupted, format_epoch
    say = console.say
    tune_process()                             # the command's process only: importing fastcnn changes nothing

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_any(args.dataset, args.data_dir, download=not args.no_download, image_size=args.image_size,
                        skip_bad=args.skip_bad)
    for warning in caught:
        console.err(f"{PROG}: warning: {warning.message}")
    run.outputs.check_inputs(data.source_dir)
    n_train = min(len(data.x_train), config.limit_train or len(data.x_train))
    n_test = min(len(data.x_test), config.limit_test or len(data.x_test))
    try:
        config.check_data(n_train, n_test)
    except ValueError as exc:
        raise _usage_from(exc) from None
    say(_header(data, config, n_train, n_test))
    need, have = trainsetup.step_memory_lower_bound(config, data.x_train.shape[1:]), trainsetup.available_memory_bytes()
    if have is not None and need > have / 2:
        console.err(f"{PROG}: warning: --batch-size {config.batch_size} needs at least {need / 2**30:.1f} GiB per "
                    f"training step, more than half the {have / 2**30:.1f} GiB available; a smaller batch needs less")

    trainer = _trainer(config, data, ckpt, log=say)
    run.data, run.trainer = data, trainer
    if ckpt is not None:
        notes = trainer.restore(ckpt)                  # CheckpointError: exit 1, nothing changed
        run.saved_epoch = ckpt.epoch
        say(f"resuming {args.resume}: {ckpt.epoch} of {config.epochs} epochs done")
        for note in notes:
            say(f"note: {note}")
        for m in trainer.state.history:
            say(f"  {format_epoch(m, config.epochs)}")
    trainer.callbacks.append(run.after_epoch)
    trainer.on_batch = batch_hook(trainer.stopping)
    # The one place for JIT compilation, before training starts (a signal here stops at once).
    if config.warmup:
        _warm_up(trainer, config, say)
    signals.trainer = trainer                          # from here on a signal stops between batches
    if args.profile:
        trainer.state.model.start_profile()            # after the warm-up: JIT compilation is not timed

    meter = CpuMeter().start()                         # did other programs take the cores meanwhile?
    stop = None
    try:
        state = trainer.run()
    except TrainingDiverged as exc:
        signals.finishing = True
        kept = run.finish("diverged", {"reason": "diverged", "epoch": exc.epoch, "batch": exc.batch,
                                       "what": exc.what})
        last = (f"the last good checkpoint (epoch {run.saved_epoch}) is {run.checkpoint}"
                if run.checkpoint is not None and run.saved_epoch is not None else "no checkpoint was written")
        _error(f"try a lower --lr: {exc}; {last}" + (f"; kept {kept}" if kept else ""))
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        stop = {"reason": signals.reason, "epoch": exc.epoch, "batch": exc.batch}
        where = (f"in epoch {exc.epoch} during its evaluation" if exc.batch > exc.batches
                 else f"in epoch {exc.epoch} before batch {exc.batch}/{exc.batches}")
        state = trainer.state
    else:
        where = f"after epoch {state.epoch} of {config.epochs}"
        if state.epoch < config.epochs and not trainer.stopped_early:
            stop = {"reason": signals.reason, "epoch": state.epoch + 1, "batch": 0}
    signals.finishing = True
    if stop is not None:
        kept = run.finish("interrupted", stop)
        console.err(f"{PROG}: stopped by {stop['reason']} {where}; {run.resume_hint()}"
                    + (f"; kept {kept}" if kept else ""))
        return _signal_exit(signals.received) if signals.received else _signal_exit(signal.SIGINT)
    meter.stop()

    # The model first: metrics say "completed" only once every output is written.
    if args.save_model is not None:
        run.save_model()
    run.finish("completed")
    if state.early_stopping is not None:
        es = state.early_stopping
        say(f"early stopping: {'stopped after' if es['stopped_early'] else 'ran'} {state.epoch} epochs; kept epoch "
            f"{es['best_epoch']}'s model (lowest validation loss {es['best_loss']:.4f})")
    if state.final_test is not None:
        say(f"test (scored once, after training): loss {state.final_test['test_loss']:.4f}  "
            f"accuracy {100 * state.final_test['test_acc']:.2f}%")
    summary = state.summary()
    threads = state.threads
    if summary["time_to_first_batch_seconds"] is not None:
        say(f"start-up: warm-up (JIT compilation or cache load) {summary['warmup_seconds']:.2f} s; the first "
            f"batch was trained {summary['time_to_first_batch_seconds']:.2f} s after the data was loaded"
            + ("" if threads is None else f"; {threads} thread{'s' if threads != 1 else ''}"))
    from fastcnn.plots import PLOT_FILES
    say(f"plots: {', '.join(str(Path(args.plots_dir) / name) for name in PLOT_FILES)}")
    if args.metrics is not None:
        say(f"metrics: {args.metrics}")
    if run.checkpoint is not None:
        say(f"checkpoint: {run.checkpoint} (epoch {state.epoch})")
    if args.save_model is not None:
        say(f"model: {args.save_model} (evaluate it with: fastcnn-eval {shlex.quote(str(args.save_model))})")
    if args.profile:
        profile = state.model.stop_profile()
        console.out(profile.table())
        if config.augment and profile.batches and trainer.augment_batches:
            aug_ms = 1e3 * trainer.augment_total_seconds / trainer.augment_batches
            step_ms = 1e3 * profile.step_s / profile.batches
            console.out(f"augmentation ({config.augment}, before each step): {aug_ms:.3f} ms per batch, "
                        f"{100 * aug_ms / step_ms:.1f} % of a training step")
    hint = None if threads is None else contention_hint(meter.summary(threads))
    if hint:
        say(hint)
    return EXIT_OK


def _warm_up(trainer, config, say) -> None:
    """Compile (or load from Numba's cache) every kernel the run uses before epoch 1, saying so when
    it is a real compilation: a first run sits silent for a long time otherwise. The run's
    ``warmup_seconds`` include the compilation."""
    from fastcnn.backend import resolve_backend_name
    if resolve_backend_name(config.backend) != "numba":
        trainer.warm_up()
        return
    from fastcnn.kernels import first_compile, warm_up
    compiling = []

    def announce(estimate=None):
        if not compiling:
            compiling.append(True)
            say(f"compiling the Numba kernels, first run only{'' if estimate is None else f', ~{estimate:.0f} s'} ...")

    with contextlib.ExitStack() as rest:
        def prepare():
            # the kernels the run's own layers call, for its image shape and optimizer
            warm_up(trainer.state.model, on_compile=announce, input_shape=trainer.x_train.shape[1:],
                    optimizer=trainer.state.optimizer)
            rest.enter_context(first_compile(announce))      # what else the step compiles (e.g. BatchNorm's)
        seconds = trainer.warm_up(prepare=prepare)
    if compiling:
        say(f"compiled in {seconds:.1f} s; later runs load them from Numba's cache")


def train_main(argv=None) -> int:
    """Entry point of ``fastcnn-train``; returns the exit code."""
    console = _Console()
    signals = _StopSignals(console)
    signals.run = None
    with signals:
        try:
            return _main(argv, signals, console)
        except _Stopped as exc:
            signals.finishing = True
            name = signal.Signals(exc.signum).name
            run = signals.run if signals.trainer is not None else None      # None: training had not begun
            kept = run.finish("interrupted", {"reason": name, "at_once": True}) if run is not None else ""
            hint = f"; {run.resume_hint()}" if run is not None and run.trainer is not None else ""
            console.err(f"{PROG}: stopped at once by {name}; files already written are complete{hint}"
                        + (f"; kept {kept}" if kept else ""), lead=True)
            return _signal_exit(exc.signum)


def _main(argv, signals, console):
    wait_at_start()
    from fastcnn.checkpoint import CheckpointError
    from fastcnn.data import DataError
    try:
        return _run(argv, signals, console)
    except SystemExit as exc:                  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        _error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        raise _Stopped(signal.SIGINT) from None
    except (OutputBusy, OutputFailed, CheckpointError, DataError, ValueError, OSError, MemoryError) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None:
            message = f"{exc.strerror or exc}: {exc.filename}"
        _fail(signals, message)
        _error(message)
        return EXIT_ERROR
    except Exception as exc:                   # a bug: still one line, the traceback on request
        if os.environ.get("FASTCNN_TRACEBACK"):
            raise
        message = f"unexpected {type(exc).__name__}: {exc} (set FASTCNN_TRACEBACK=1 to see the traceback)"
        _fail(signals, message)
        _error(message)
        return EXIT_ERROR


def _fail(signals, message):
    """Any error after training began: the metrics get their final status."""
    signals.finishing = True
    run = signals.run
    if run is not None and signals.trainer is not None:           # training began
        run.finish("failed", error=re.sub(r"\s+", " ", message))
