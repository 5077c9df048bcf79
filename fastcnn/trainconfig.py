"""The settings of a training run: :class:`TrainConfig`, its choices and defaults, and
:class:`ConfigError` for an invalid one. :mod:`fastcnn.train` (which re-exports every name here)
runs them."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

import numpy as np

from fastcnn.augment import AUGMENTATIONS
from fastcnn.backend import resolve_backend_name
from fastcnn.layers import DROPOUT_STEPS

__all__ = ["DEFAULT_LR", "DEFAULT_MOMENTUM", "DEFAULT_WEIGHT_DECAY", "DTYPES", "MAX_EPOCHS", "METRIC_KEYS",
           "OPTIMIZERS", "RESUME_KEYS", "SCHEDULES", "TIMING_KEYS", "ConfigError", "TrainConfig", "thread_limit"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
#: The most epochs a run may plan (what a checkpoint's epoch counter is allowed to reach).
MAX_EPOCHS = 10_000_000
DTYPES = ("float32", "float64")
#: Peak learning rate per optimizer when ``TrainConfig.lr`` is None. AdamW's 2e-3 with the default
#: cosine schedule was chosen on full MNIST against 1e-3 and 3e-3: 1e-3 needs more epochs for the
#: same accuracy, 3e-3 gains nothing (the figures: README, section fastcnn-train).
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.01}
#: Weight decay per optimizer when ``TrainConfig.weight_decay`` is None: AdamW's decoupled decay
#: (PyTorch's default 0.01); none for SGD (plain momentum SGD).
DEFAULT_WEIGHT_DECAY = {"adamw": 1e-2, "sgd": 0.0}
DEFAULT_MOMENTUM = 0.9
#: Settings a resumed run must share with its checkpoint: they change what is computed. The others
#: (epochs, backend, threads, warmup, quiet) may differ; ``epochs`` may grow to train further.
RESUME_KEYS = ("model", "batch_size", "optimizer", "lr", "lr_schedule", "momentum", "weight_decay", "dropout",
               "batchnorm", "seed", "dtype", "limit_train", "limit_test", "eval_batch_size", "val_split", "augment")
#: Per-epoch metrics that are wall-clock measurements (everything else in an epoch's metrics is a
#: deterministic function of the seed, backend and thread count).
TIMING_KEYS = ("seconds", "images_per_second", "eval_seconds")
#: Wall-clock measurements present only when their feature is on (``augment_seconds``: with --augment).
OPTIONAL_TIMING_KEYS = ("augment_seconds",)
#: The order of an epoch's metrics (kept when a checkpoint's history, stored with sorted keys, is
#: restored, so a resumed run writes the same metrics file as an uninterrupted one).
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
               "images_per_second", "eval_seconds", "augment_seconds", "lr")


class ConfigError(ValueError):
    """An invalid :class:`TrainConfig` setting; ``field`` names it (the message starts with it)."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(message)


@dataclass
class TrainConfig:
    """Every option of a training run. ``None`` means "the default for the chosen optimizer /
    environment" and is filled in by :meth:`resolved`.

    ``lr_schedule``: ``"cosine"`` anneals the learning rate per step from ``lr`` at the first step
    to 0 after the last step of the last epoch, ``lr * (1 + cos(pi * step / total_steps)) / 2``;
    ``"constant"`` keeps ``lr``. ``limit_train`` / ``limit_test`` use the first N images of each
    split (all of them when N is larger). ``threads``: Numba worker threads for the numba backend
    (at most NUMBA_NUM_THREADS), BLAS threads for the numpy backend (at most the CPU count); None:
    leave as is. ``divergence_factor`` / ``divergence_window``: see :mod:`fastcnn.train`.
    ``model``: a built-in name or a model file (:mod:`fastcnn.train`); ``dropout`` and ``batchnorm``
    shape the mnist-cnn model only."""
    model: str = "mnist-cnn"
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float | None = None
    lr_schedule: str = "cosine"
    momentum: float | None = None
    weight_decay: float | None = None
    dropout: float = 0.5
    batchnorm: bool = False
    seed: int = 0
    dtype: str = "float32"
    backend: str | None = None
    threads: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    eval_batch_size: int = 1000
    warmup: bool = True
    quiet: bool = False
    divergence_factor: float = 10.0
    divergence_window: int = 10
    val_split: int | float | None = None
    early_stop: int | None = None
    augment: str | None = None
    test_each_epoch: bool = False

    def resolved(self) -> TrainConfig:
        """A validated copy with every ``None`` default filled in (raises :class:`ConfigError`)."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        cfg = replace(
            self,
            backend=resolve_backend_name(self.backend),
            lr=DEFAULT_LR[self.optimizer] if self.lr is None else self.lr,
            weight_decay=DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay,
            momentum=(DEFAULT_MOMENTUM if self.optimizer == "sgd" else None) if self.momentum is None
            else self.momentum,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ValueError) naming the first invalid setting: types and
        ranges, momentum only with sgd, a dropout the layer can apply, threads within what the
        backend allows. (The batch size against the data: :meth:`check_data`.)"""
        def integer(name, minimum):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ConfigError(name, f"{name} must be an integer >= {minimum}, got {v!r}")

        def number(name, lo, hi=math.inf, lo_open=False, hi_open=True):
            v = getattr(self, name)
            is_number = not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer))
            if (not is_number or not math.isfinite(v) or (v <= lo if lo_open else v < lo)
                    or (v >= hi if hi_open else v > hi)):
                lo_txt = f"> {lo}" if lo_open else f">= {lo}"
                hi_txt = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi}"
                raise ConfigError(name, f"{name} must be a number {lo_txt}{hi_txt}, got {v!r}")

        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model", f"model must be a built-in name or a model file, got {self.model!r}")
        if self.batchnorm and self.model != "mnist-cnn":
            raise ConfigError("batchnorm", f"batchnorm adds BatchNorm to the mnist-cnn model only, not to "
                                           f"{self.model}: leave it out (write BatchNorm2D layers into a model file)")
        integer("epochs", 1)
        if self.epochs > MAX_EPOCHS:               # a checkpoint records at most this many
            raise ConfigError("epochs", f"epochs must be at most {MAX_EPOCHS}, got {self.epochs}")
        integer("batch_size", 1)
        integer("eval_batch_size", 1)
        integer("seed", 0)
        integer("divergence_window", 1)
        for name in ("limit_train", "limit_test", "threads"):
            if getattr(self, name) is not None:
                integer(name, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError("lr_schedule",
                              f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if str(self.dtype) not in DTYPES:
            raise ConfigError("dtype", f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            backend = resolve_backend_name(self.backend)
        except ValueError as exc:
            raise ConfigError("backend", str(exc)) from None
        if self.lr is not None:
            number("lr", 0.0, lo_open=True)
        if self.weight_decay is not None:
            number("weight_decay", 0.0)
        if self.momentum is not None:
            if self.optimizer != "sgd":
                raise ConfigError("momentum", f"momentum applies only to the sgd optimizer, not {self.optimizer}: "
                                              "choose sgd or leave momentum out")
            number("momentum", 0.0, 1.0)
        number("dropout", 0.0, 1.0)
        if round(self.dropout * DROPOUT_STEPS) >= DROPOUT_STEPS:
            # Dropout draws 16-bit masks: a p that rounds to 65536/65536 would drop everything.
            raise ConfigError("dropout", f"dropout must be below {(DROPOUT_STEPS - 0.5) / DROPOUT_STEPS:.6f} "
                              f"(it is applied in steps of 1/{DROPOUT_STEPS}), got {self.dropout!r}")
        if self.divergence_factor != 0:
            number("divergence_factor", 1.0, lo_open=True)
        if self.val_split is not None:
            if isinstance(self.val_split, (float, np.floating)):
                number("val_split", 0.0, 1.0, lo_open=True)
            else:
                integer("val_split", 1)
        if self.early_stop is not None:
            integer("early_stop", 1)
            if self.val_split is None:
                raise ConfigError("early_stop", "early_stop needs a validation split (val_split): early stopping "
                                                "watches the validation loss")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ConfigError("augment", f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.threads is not None:
            limit, what = thread_limit(backend)
            if self.threads > limit:
                raise ConfigError("threads", f"threads must be between 1 and {limit} ({what}), got {self.threads}")

    def check_data(self, n_train: int, n_test: int) -> None:
        """Raise :class:`ConfigError` unless the settings fit ``n_train`` / ``n_test`` images (after
        ``limit_train`` / ``limit_test``)."""
        if n_train < 1 or n_test < 1:
            raise ConfigError("limit_train", f"need at least one training and one test image, got {n_train} "
                              f"and {n_test}")
        if self.batch_size > n_train:
            raise ConfigError("batch_size", f"batch_size {self.batch_size} is larger than the training set "
                              f"({n_train} images): use a batch of at most {n_train}")

    def to_dict(self):
        return asdict(self)


def thread_limit(backend: str) -> tuple[int, str]:
    """The largest thread count ``backend`` accepts and where that limit comes from."""
    if backend == "numba":
        import numba  # lazy: importing numba costs start-up time
        return numba.config.NUMBA_NUM_THREADS, "NUMBA_NUM_THREADS"
    return os.cpu_count() or 1, "the CPU count; BLAS threads for the numpy backend"
