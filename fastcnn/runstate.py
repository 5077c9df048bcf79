"""What a training run is made of (:class:`RunState`), the two ways it stops before its end
(:class:`TrainingDiverged`, :class:`TrainingInterrupted`), the learning rate of a step, and the
process's age at its first batch. :mod:`fastcnn.train` runs it and re-exports every name here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from fastcnn.trainconfig import OPTIONAL_TIMING_KEYS, TIMING_KEYS, TrainConfig

__all__ = ["RunState", "TrainingDiverged", "TrainingInterrupted", "learning_rate", "process_age_seconds"]


class TrainingDiverged(FloatingPointError):
    """The loss or a parameter became NaN or infinite, or the loss grew far above its start (see
    the module docstring). ``epoch`` and ``batch`` are 1-based; the run's state holds the corrupted
    parameters, its history only the epochs before."""

    def __init__(self, epoch, batch, batches, what, lr):
        self.epoch, self.batch, self.batches, self.what, self.lr = epoch, batch, batches, what, lr
        super().__init__(f"training diverged in epoch {epoch} at batch {batch}/{batches}: {what} "
                         f"(learning rate {lr:.4g}; try a lower one)")


class TrainingInterrupted(Exception):
    """``stop_requested`` was set during an epoch (1-based ``epoch``) before training ``batch``
    (1-based); that epoch is abandoned, ``state.epoch`` complete epochs remain."""

    def __init__(self, epoch, batch, batches):
        self.epoch, self.batch, self.batches = epoch, batch, batches
        super().__init__(f"stopped in epoch {epoch} before batch {batch}/{batches}")


def learning_rate(base_lr, schedule, step, total_steps):
    """The learning rate of 0-based global ``step`` out of ``total_steps`` (see :class:`TrainConfig`)."""
    if schedule == "constant" or total_steps <= 0:
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def process_age_seconds():
    """Seconds since this process started (Linux: from /proc, 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")      # field 22: starttime, in clock ticks
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass(eq=False)
class RunState:
    """Everything a run is made of, in one place (what a checkpoint would save).

    ``epoch`` is the number of completed epochs and ``step`` the number of completed training
    steps; ``history`` holds one metrics dict per completed epoch."""
    config: TrainConfig
    model: object
    optimizer: object
    shuffle_rng: np.random.Generator
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    #: With a validation split: the test set's ``{"test_loss", "test_acc"}``, scored once at the end.
    final_test: dict | None = None
    #: With early stopping: its bookkeeping (best epoch and loss, epochs waited, patience).
    early_stopping: dict | None = None
    warmup_seconds: float = 0.0
    time_to_first_batch_seconds: float | None = None
    process_time_to_first_batch_seconds: float | None = None
    threads: int | None = None
    stop_requested: bool = False
    start_loss: float | None = None

    @property
    def total_steps(self):
        return self.config.epochs * self.steps_per_epoch

    def summary(self, timings=True):
        """The JSON-ready part of the run: the per-epoch history, backend and threads, and (unless
        ``timings`` is False) the wall-clock figures. Without timings the summary is a deterministic
        function of the seed, backend and thread count."""
        out = {"epochs": [{k: v for k, v in m.items() if timings or k not in (*TIMING_KEYS, *OPTIONAL_TIMING_KEYS)}
                          for m in self.history],
               "backend": self.config.backend,
               "threads": self.threads}
        if self.final_test is not None:
            out["final_test"] = self.final_test
        if self.early_stopping is not None:
            out["early_stopping"] = self.early_stopping
        if timings:
            out.update({"warmup_seconds": self.warmup_seconds,
                        "time_to_first_batch_seconds": self.time_to_first_batch_seconds,
                        "time_to_first_batch_from": "trainer created (data loaded)",
                        "process_time_to_first_batch_seconds": self.process_time_to_first_batch_seconds})
        return out
