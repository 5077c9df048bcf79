"""The training loop behind ``fastcnn-train``: epochs of shuffled mini-batches, a test-set
evaluation after each epoch, per-epoch metrics, and an optional learning-rate schedule.

    from fastcnn.data import load_dataset
    from fastcnn.train import TrainConfig, train

    run = train(TrainConfig(epochs=3), load_dataset("mnist"))
    run.history[-1]["test_acc"]          # e.g. 0.99

The model: ``config.model`` names it (``"mnist-cnn"``, the default, built for the data's channels,
image size and classes; ``"lenet5"``, ``"cifar-cnn"``; or a model file, see :mod:`fastcnn.modelio`),
or ``Trainer(config, data, model=...)`` takes a :class:`~fastcnn.model.Sequential` (or a config).
The data's image shape is checked against the model before anything is compiled or trained
(:class:`~fastcnn.summary.ShapeError`).

Randomness: everything comes from ``config.seed``. ``np.random.SeedSequence(seed)`` is spawned
into independent streams: the model's own (weight initialisation and dropout, see
:func:`fastcnn.architecture.layers_from_config`) and the epoch shuffle (:attr:`RunState.shuffle_rng`), so changing
e.g. the batch size never changes the initial weights, and the shuffle never touches dropout.

Timing: ``seconds`` of an epoch is the training loop only (shuffle, batch gathering, train steps);
the test-set evaluation after it is ``eval_seconds``. Before epoch 1 one warm-up training step and
one evaluation run on a throwaway deep copy of the model and optimizer (:meth:`Trainer.warm_up`),
so Numba's JIT compilation (or the loading of its on-disk cache) is not counted in epoch 1 and the
real model's weights, optimizer state and dropout stream are untouched.

Structure: a :class:`Trainer` holds the whole run in one :class:`RunState` (model, optimizer,
shuffle generator, global step, history, timings) and calls ``callbacks(state, metrics)`` after
every epoch; a callback may set ``state.stop_requested``. That is the seam for checkpoints,
resuming (restore the state, including ``shuffle_rng``'s bit-generator state, then call
:meth:`Trainer.run`, which starts at ``state.epoch + 1``), interrupt handling and divergence
checks.

Stopping: before every training batch and every evaluation batch the trainer asks whether to stop:
``state.stop_requested`` (set by a callback, a signal handler, :meth:`Trainer.request_stop` from
another thread) or the ``should_stop()`` callable given to :class:`Trainer` (e.g. a
``threading.Event``'s ``is_set``). Between epochs the run simply ends; during an epoch (training or
its evaluation) :class:`TrainingInterrupted` is raised and the partial epoch is abandoned: the last
complete epoch (its checkpoint, its metrics) is what survives.

Divergence: after every training step the loss and every parameter must be finite, and the mean
loss of the last ``divergence_window`` batches (default 10) must stay below ``divergence_factor``
(default 10) times the run's starting loss (the loss of its first trained batch, kept in
checkpoints; about ln(classes) for a fresh network); else :class:`TrainingDiverged` names the
epoch and batch. A mean over a window forgives a brief spike but not a blow-up, finite or not;
``divergence_factor=0`` checks finiteness only. The window is not stored in checkpoints: a
resumed run starts it afresh, so near the threshold it may stop a few batches later than a
straight run would have.

Checkpoints and exact resume: :meth:`Trainer.save_checkpoint` writes the whole state (parameters,
BatchNorm statistics, optimizer state, the shuffle and dropout generators, epoch, step, history,
settings, a fingerprint of the data); :meth:`Trainer.restore` puts it back into a freshly built
trainer after checking the settings and the data are the ones the checkpoint was trained with. On
the same backend and thread count the resumed run's parameters and metrics are bit-identical to an
uninterrupted run (tests/test_resilience.py).
"""
from __future__ import annotations

import collections
import contextlib
import math
import sys
import time
from dataclasses import replace

import numpy as np

from fastcnn._atomic import atomic_write
from fastcnn.augment import augment_batch
from fastcnn.checkpoint import Checkpoint, CheckpointError, load_checkpoint, model_rngs, restore, save_checkpoint
from fastcnn.data import to_float
from fastcnn.losses import softmax_cross_entropy
from fastcnn.normalization import MNIST_NORMALIZATION, DataFacts, data_facts
from fastcnn.resume import ResumeRefused, check_resume, data_fingerprint
from fastcnn.runstate import RunState, TrainingDiverged, TrainingInterrupted, learning_rate, process_age_seconds
from fastcnn.trainconfig import (
    DEFAULT_LR,
    DEFAULT_MOMENTUM,  # noqa: F401 -- re-exported
    DEFAULT_WEIGHT_DECAY,
    DTYPES,  # noqa: F401 -- re-exported
    MAX_EPOCHS,  # noqa: F401 -- re-exported
    METRIC_KEYS,
    OPTIMIZERS,
    RESUME_KEYS,
    SCHEDULES,
    TIMING_KEYS,
    ConfigError,
    TrainConfig,
    thread_limit,  # noqa: F401 -- re-exported
)
from fastcnn.trainsetup import (
    apply_threads,
    available_memory_bytes,
    build_network,
    build_optimizer,
    check_network,
    shuffle_generator,
    step_memory_lower_bound,
    throwaway_copy,
)
from fastcnn.validation import EarlyStopping, split_indices

__all__ = ["TrainConfig", "RunState", "Trainer", "train", "learning_rate", "OPTIMIZERS", "SCHEDULES",
           "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY", "process_age_seconds", "TrainingDiverged",
           "TrainingInterrupted", "RESUME_KEYS", "TIMING_KEYS", "ConfigError", "ResumeRefused", "check_resume",
           "step_memory_lower_bound", "available_memory_bytes"]




class Trainer:
    """One training run: ``Trainer(config, data).run()``; see the module docstring.

    ``data`` is a :class:`fastcnn.data.Dataset` (uint8 images (N, C, H, W), int labels); it is
    converted to floats of ``config.dtype`` once, here. ``log(str)`` receives the per-epoch lines
    (and nothing when ``config.quiet``); ``callbacks`` are called as ``cb(state, metrics)`` after
    each epoch. ``model``: the network to train (a :class:`~fastcnn.model.Sequential`, trained in
    place, or a name, file or config; default: ``config.model``); :class:`~fastcnn.summary.ShapeError`
    (a ValueError) when the data's images or classes do not fit it."""

    def __init__(self, config: TrainConfig, data, *, model=None, log=print, callbacks=(), should_stop=None):
        self._t_entry = time.perf_counter()
        if isinstance(model, str):
            config = replace(config, model=model)
        elif model is not None and config.model == TrainConfig.model:
            config = replace(config, model="custom")       # a network given as an object or a config
        config = config.resolved()
        self.config = config
        self.log = (lambda *a, **k: None) if config.quiet else log
        self.callbacks = list(callbacks)
        self.should_stop = should_stop
        #: Called as ``on_batch(phase, epoch, batch)`` ("train" or "eval", 1-based) just before each
        #: batch's stop check: a seam for progress reports and for tests that must act at an exact batch.
        self.on_batch = None

        n_train = len(data.x_train) if config.limit_train is None else min(config.limit_train, len(data.x_train))
        n_test = len(data.x_test) if config.limit_test is None else min(config.limit_test, len(data.x_test))
        config.check_data(n_train, n_test)
        x_train = np.asarray(data.x_train[:n_train])
        if x_train.ndim != 4:
            raise ValueError(f"training images must have shape (N, C, H, W), got {x_train.shape}")
        dtype = np.dtype(config.dtype)
        #: The pixel statistics the images are scaled by (saved with the model; MNIST's constants by default).
        self.normalization = getattr(data, "normalization", None) or MNIST_NORMALIZATION
        self.class_names = getattr(data, "classes", None)
        norm = self.normalization.kwargs()
        self.x_train, self.y_train = to_float(x_train, dtype, **norm), np.asarray(data.y_train[:n_train], np.int64)
        self.x_test = to_float(np.asarray(data.x_test[:n_test]), dtype, **norm)
        self.y_test = np.asarray(data.y_test[:n_test], np.int64)
        num_classes = int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))) + 1
        num_classes = max(num_classes, int(getattr(data, "num_classes", 0) or 0), 2)

        self.data_info = {"name": getattr(data, "name", None), "train_images": n_train, "test_images": n_test,
                          "sha256": data_fingerprint(x_train, self.y_train, data.x_test[:n_test], self.y_test)}
        self.x_val = self.y_val = None
        if config.val_split is not None:
            try:
                keep, held = split_indices(self.y_train, config.val_split, config.seed)
            except ValueError as exc:
                raise ConfigError("val_split", f"val_split {config.val_split} does not fit {n_train} training "
                                               f"images: {exc}") from None
            self.x_val, self.y_val = self.x_train[held], self.y_train[held]
            self.x_train, self.y_train = self.x_train[keep], self.y_train[keep]
            self.data_info["val_images"] = len(held)
            config.check_data(len(keep), n_test)
        #: The value of a black pixel after scaling, per channel: what augmentation uncovers.
        self.fill = to_float(np.zeros((1, x_train.shape[1], 1, 1), np.uint8), dtype, **norm)[0, :, 0, 0]
        self.early = EarlyStopping(config.early_stop) if config.early_stop else None
        #: Augmentation time of the current epoch, and the time and batches in this process (for --profile).
        self.augment_seconds, self.augment_total_seconds, self.augment_batches = 0.0, 0.0, 0
        #: Copies of the parameters and buffers of the best validation epoch (early stopping).
        self.best_arrays = None
        #: The test set's (loss, accuracy, seconds), scored once after the last epoch (with a validation split).
        self.final_test = None

        model = build_network(config, model, x_train.shape[1:], num_classes)
        self.num_classes = check_network(config, model, x_train.shape[1:], num_classes,
                                         getattr(data, "name", None) or "the data")
        # The model carries the scaling and class names of its data: every checkpoint of it has them.
        facts = DataFacts(self.normalization, tuple(self.class_names) if self.class_names else None)
        model.data = {**{k: v for k, v in model.data.items() if k not in ("normalization", "classes")},
                      **facts.to_dict()}
        optimizer = build_optimizer(config, model)
        self.state = RunState(config=config, model=model, optimizer=optimizer,
                              shuffle_rng=shuffle_generator(config.seed),
                              steps_per_epoch=math.ceil(len(self.x_train) / config.batch_size))
        self._recent_losses = collections.deque(maxlen=config.divergence_window)

    def request_stop(self) -> None:
        """Ask the run to stop before its next training or evaluation batch (safe from any thread
        or a signal handler); :meth:`run` then raises :class:`TrainingInterrupted` mid-epoch."""
        self.state.stop_requested = True

    def stopping(self) -> bool:
        """Whether a stop was requested (``state.stop_requested`` or ``should_stop()``)."""
        if not self.state.stop_requested and self.should_stop is not None and self.should_stop():
            self.state.stop_requested = True
        return self.state.stop_requested

    # ----------------------------------------------------------------------------------- pieces

    def warm_up(self, prepare=None):
        """One training step on one batch and one evaluation, on a throwaway deep copy of the model
        and optimizer: compiles (or loads) every JIT kernel before epoch 1 is timed. ``prepare()``,
        if given, runs first (fastcnn-train compiles the kernels there, with its messages); its time
        counts in ``state.warmup_seconds``, which is returned."""
        t0 = time.perf_counter()
        if prepare is not None:
            prepare()
        model, optimizer = throwaway_copy(self.state.model, self.state.optimizer)
        n = min(self.config.batch_size, len(self.x_train))
        m = min(self.config.eval_batch_size, len(self.x_test), 2 * n)
        with np.errstate(over="ignore", invalid="ignore"):       # a huge --lr is reported by the real run
            xb = self.x_train[:n]
            if self.config.augment is not None:                   # compiles (or loads) its kernel too
                xb = augment_batch(xb, self.config.augment, self.config.seed, 0, 0, self.fill)
            model.train_step(xb, self.y_train[:n], optimizer)
            model.evaluate(self.x_test[:m], self.y_test[:m], batch_size=self.config.eval_batch_size)
        self.state.warmup_seconds = time.perf_counter() - t0
        return self.state.warmup_seconds

    def _progress(self, desc):
        if self.config.quiet or not sys.stderr.isatty():
            return None
        from tqdm import tqdm
        return tqdm(total=self.state.steps_per_epoch, desc=desc, unit="batch", leave=False,
                    file=sys.stderr, dynamic_ncols=True)

    def train_epoch(self):
        """One pass over the (shuffled) training set; returns (mean loss, accuracy, seconds)."""
        st, cfg = self.state, self.config
        n, bs = len(self.x_train), cfg.batch_size
        bar = self._progress(f"epoch {st.epoch + 1}/{cfg.epochs}")
        total_loss, correct = 0.0, 0
        self.augment_seconds = 0.0
        t0 = time.perf_counter()
        # No overflow/NaN warnings: _check_finite stops a diverging run with one clear error instead.
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                order = st.shuffle_rng.permutation(n)
                for batch, i in enumerate(range(0, n, bs), start=1):
                    if self.on_batch is not None:
                        self.on_batch("train", st.epoch + 1, batch)
                    if self.stopping():
                        raise TrainingInterrupted(st.epoch + 1, batch, st.steps_per_epoch)
                    idx = order[i:i + bs]
                    st.optimizer.lr = learning_rate(cfg.lr, cfg.lr_schedule, st.step, st.total_steps)
                    xb = self.x_train[idx]
                    if cfg.augment is not None:
                        ta = time.perf_counter()
                        xb = augment_batch(xb, cfg.augment, cfg.seed, st.epoch + 1, batch, self.fill)
                        took = time.perf_counter() - ta
                        self.augment_seconds += took
                        self.augment_total_seconds += took
                        self.augment_batches += 1
                    loss, hits = st.model.train_step(xb, self.y_train[idx], st.optimizer)
                    st.step += 1
                    if st.start_loss is None and math.isfinite(loss):
                        st.start_loss = float(loss)
                    self._check_finite(loss, batch)
                    self._check_growth(loss, batch)
                    if st.time_to_first_batch_seconds is None:
                        st.time_to_first_batch_seconds = time.perf_counter() - self._t_entry
                        st.process_time_to_first_batch_seconds = process_age_seconds()
                    total_loss += loss * len(idx)
                    correct += hits
                    if bar is not None:
                        bar.update(1)
                        if st.step % 10 == 0:
                            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            finally:
                if bar is not None:
                    bar.close()
        return total_loss / n, correct / n, time.perf_counter() - t0

    def _check_finite(self, loss, batch):
        """Raise :class:`TrainingDiverged` unless ``loss`` and every parameter are finite (cheap: the
        network has a few hundred thousand parameters, checked once per step)."""
        st = self.state
        what = None
        if not math.isfinite(loss):
            what = f"the loss is {loss}"
        else:
            for i, layer in enumerate(st.model.layers):
                for name, w in layer.params.items():
                    if not np.isfinite(w).all():
                        what = f"parameter {i}.{name} ({type(layer).__name__}) has non-finite values"
                        break
                if what:
                    break
        if what:
            raise TrainingDiverged(st.epoch + 1, batch, st.steps_per_epoch, what, st.optimizer.lr)

    def _check_growth(self, loss, batch):
        """Raise :class:`TrainingDiverged` when the mean loss of the last ``divergence_window``
        batches exceeds ``divergence_factor`` times the starting loss (module docstring)."""
        st, cfg = self.state, self.config
        self._recent_losses.append(float(loss))
        if not cfg.divergence_factor or st.start_loss is None:
            return
        mean = sum(self._recent_losses) / len(self._recent_losses)
        if mean > cfg.divergence_factor * st.start_loss:
            n = len(self._recent_losses)
            raise TrainingDiverged(st.epoch + 1, batch, st.steps_per_epoch,
                                   f"mean loss of the last {n} batch{'es' if n != 1 else ''} {mean:.4g} > "
                                   f"{cfg.divergence_factor:g} x the starting {st.start_loss:.4g}",
                                   st.optimizer.lr)

    def evaluate(self, split="test"):
        """(loss, accuracy, seconds) of the model on the test (or ``"val"``: validation) set; a
        requested stop is honoured before each evaluation batch (:class:`TrainingInterrupted`,
        batch = the next training batch, i.e. past the epoch's last)."""
        st = self.state
        t0 = time.perf_counter()
        x, y = (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)
        bs = self.config.eval_batch_size
        total_loss, correct = 0.0, 0
        for batch, i in enumerate(range(0, len(x), bs), start=1):   # Sequential.evaluate's loop, stoppable
            if self.on_batch is not None:
                self.on_batch("eval", st.epoch + 1, batch)
            if self.stopping():
                raise TrainingInterrupted(st.epoch + 1, st.steps_per_epoch + 1, st.steps_per_epoch)
            logits = st.model.forward(x[i:i + bs], training=False)
            loss, _ = softmax_cross_entropy(logits, y[i:i + bs])
            total_loss += loss * len(logits)
            correct += int((logits.argmax(axis=1) == y[i:i + bs]).sum())
        return total_loss / len(x), correct / len(x), time.perf_counter() - t0

    def run_epoch(self):
        """Train one epoch, evaluate, record and log its metrics, call the callbacks."""
        st, cfg = self.state, self.config
        train_loss, train_acc, seconds = self.train_epoch()
        scores = {}
        if self.x_val is not None:
            scores["val_loss"], scores["val_acc"], eval_seconds = self.evaluate("val")
        if self.x_val is None or cfg.test_each_epoch:
            scores["test_loss"], scores["test_acc"], test_seconds = self.evaluate()
            eval_seconds = test_seconds if self.x_val is None else eval_seconds + test_seconds
        st.epoch += 1
        metrics = {"epoch": st.epoch, "train_loss": train_loss, "train_acc": train_acc, **scores,
                   "seconds": seconds, "images_per_second": len(self.x_train) / seconds if seconds > 0 else None,
                   "eval_seconds": eval_seconds,
                   **({"augment_seconds": self.augment_seconds} if cfg.augment else {}),
                   "lr": st.optimizer.lr}      # lr: of the epoch's last step
        if self.early is not None and self.early.update(st.epoch, scores["val_loss"]):
            self.best_arrays = {k: v.copy() for k, v in st.model.state_arrays().items()}
        st.history.append(metrics)
        self.log(format_epoch(metrics, cfg.epochs))
        for callback in self.callbacks:
            callback(st, metrics)
        return metrics

    # ------------------------------------------------------------------------ checkpoint, resume

    def _rngs(self):
        return {"shuffle": self.state.shuffle_rng, **model_rngs(self.state.model)}

    def save_checkpoint(self, path, extra=None):
        """Write the run's whole state after its last complete epoch to ``path`` (atomically, see
        :mod:`fastcnn.checkpoint`); ``extra``: more JSON-ready facts for the header."""
        st = self.state
        if self.early is not None:
            extra = {**(extra or {}), "early_stopping": self.early.to_dict()}
            if self.best_arrays is not None and self.early.best_epoch != st.epoch:
                arrays = self.best_arrays
                atomic_write(best_model_path(path), lambda f: np.savez(f, **arrays))
        return save_checkpoint(path, st.model, st.optimizer, epoch=st.epoch, history=st.history,
                               config=self.config.to_dict(), rngs=self._rngs(),
                               extra={"step": st.step, "steps_per_epoch": st.steps_per_epoch,
                                      "data": self.data_info, "start_loss": st.start_loss, **(extra or {})},
                               threads=st.threads)

    def restore(self, checkpoint):
        """Continue the run saved in ``checkpoint`` (a path or :class:`~fastcnn.checkpoint.Checkpoint`):
        :func:`check_resume` (settings, epochs, data, consistency), then restore parameters,
        optimizer, generators, epoch, step, history and the starting loss. Raises
        :class:`~fastcnn.checkpoint.CheckpointError` (nothing changed) when anything differs.
        Returns notes on differences that break bit-identical resumption (see
        :func:`fastcnn.checkpoint.restore`) or change the learning-rate schedule."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        st = self.state
        saved = ckpt.config
        check_resume(ckpt, self.config, data_info=self.data_info, steps_per_epoch=st.steps_per_epoch)
        saved_norm = data_facts(ckpt).normalization
        if saved_norm != self.normalization:
            raise CheckpointError(f"the checkpoint's model was trained on images scaled by mean {saved_norm.mean}, "
                                  f"std {saved_norm.std}, this data by mean {self.normalization.mean}, std "
                                  f"{self.normalization.std}: train it again (it predates per-dataset scaling)")
        # The optimizer's saved lr is the schedule's value at its last step, not the run's peak lr
        # (compared above through RESUME_KEYS), so its hyper-parameters are not compared here.
        notes = restore(ckpt, st.model, st.optimizer, self._rngs(), check_hparams=False)
        st.epoch, st.step = ckpt.epoch, ckpt.epoch * st.steps_per_epoch
        st.history = [{**{k: m[k] for k in METRIC_KEYS if k in m}, **m} for m in ckpt.history]
        start = ckpt.header["extra"].get("start_loss")
        # Checkpoints without it: the loss of a network that guesses uniformly, where training starts.
        st.start_loss = (float(start) if isinstance(start, (int, float)) and math.isfinite(start) and start > 0
                         else math.log(self.num_classes))
        self._restore_early_stopping(checkpoint, ckpt)
        if saved.get("epochs") != self.config.epochs and self.config.lr_schedule == "cosine":
            notes.append(f"the cosine learning-rate schedule is recomputed for {self.config.epochs} epochs "
                         f"(the checkpoint's run planned {saved.get('epochs')}), so the rate jumps to that "
                         f"schedule's value at step {st.step}")
        return notes

    def _restore_early_stopping(self, path, ckpt):
        saved = ckpt.header["extra"].get("early_stopping")
        if self.early is None or not isinstance(saved, dict):
            return
        early = EarlyStopping.from_dict({**saved, "patience": self.early.patience})
        live = self.state.model.state_arrays()
        if early.best_epoch == ckpt.epoch:
            self.best_arrays = {k: v.copy() for k, v in live.items()}
        elif early.best_epoch > 0:
            side = best_model_path(path) if not isinstance(path, Checkpoint) else None
            try:
                with np.load(side, allow_pickle=False) as z:
                    best = {k: z[k] for k in z.files}
            except (OSError, ValueError, TypeError) as exc:
                raise CheckpointError(f"early stopping needs the weights of epoch {early.best_epoch}, kept in "
                                      f"{side}: {exc}; resume without --early-stop or restore that file") from None
            if set(best) != set(live) or any(best[k].shape != live[k].shape for k in live):
                raise CheckpointError(f"{side} does not hold this model's weights: restore the file written with "
                                      "the checkpoint")
            self.best_arrays = best
        self.early = early

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended the run (its patience ran out)."""
        return self.early is not None and self.early.stop

    def finish(self):
        """After the last epoch: with early stopping, put the best validation epoch's weights back into
        the model; with a validation split, score the test set once (:attr:`final_test`)."""
        st = self.state
        if self.early is not None and self.best_arrays is not None and self.early.best_epoch != st.epoch:
            for k, v in st.model.state_arrays().items():
                v[...] = self.best_arrays[k]
        if self.early is not None:
            st.early_stopping = {**self.early.to_dict(), "stopped_early": self.early.stop}
        if self.x_val is not None:
            self.final_test = self.evaluate()
            st.final_test = {"test_loss": self.final_test[0], "test_acc": self.final_test[1]}
        return self.final_test

    def run(self):
        """Warm up (once), train the remaining epochs (fewer when early stopping ends the run), then
        :meth:`finish`; returns the :class:`RunState`."""
        with contextlib.ExitStack() as stack:
            self.state.threads = apply_threads(self.config, stack)
            if self.config.warmup and self.state.epoch < self.config.epochs and not self.state.warmup_seconds:
                self.warm_up()
            while self.state.epoch < self.config.epochs and not self.stopping() and not self.stopped_early:
                self.run_epoch()
            if not self.stopping():
                self.finish()
        return self.state


def format_epoch(m, epochs):
    """The per-epoch line, e.g. ``epoch 1/3  loss 0.1432  train 95.62%  test 98.31%  12.3 s  4870 img/s``
    (with a validation split: ``val loss 0.0512  val 98.40%``, and the test set only when scored)."""
    ips = m["images_per_second"]
    rate = f"{ips:.0f} img/s" if ips is not None else "- img/s"
    val = f"val loss {m['val_loss']:.4f}  val {100 * m['val_acc']:.2f}%  " if "val_loss" in m else ""
    test = f"test {100 * m['test_acc']:.2f}%  " if "test_acc" in m else ""
    return (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train {100 * m['train_acc']:.2f}%  "
            f"{val}{test}{m['seconds']:.1f} s  {rate}")


def best_model_path(checkpoint_path) -> str:
    """Where early stopping keeps the best epoch's weights while they are not the checkpoint's own."""
    return f"{checkpoint_path}.best.npz"


def train(config, data, *, log=print, callbacks=()):
    """Train ``config.model`` per ``config`` (a :class:`TrainConfig`) on ``data`` (a
    :class:`fastcnn.data.Dataset`); returns the finished :class:`RunState` (``.model``,
    ``.history``, ``.summary()``). Raises ValueError for an invalid configuration."""
    return Trainer(config, data, log=log, callbacks=callbacks).run()
