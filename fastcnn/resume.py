"""Whether a checkpoint can continue a run: :func:`check_resume`, the one decision, and
:class:`ResumeRefused`, its answer when it cannot; :func:`data_fingerprint` identifies the data a
run trained on. :mod:`fastcnn.train` re-exports every name here.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from fastcnn.checkpoint import CheckpointError
from fastcnn.trainconfig import RESUME_KEYS, TrainConfig

if TYPE_CHECKING:
    from fastcnn.checkpoint import Checkpoint

__all__ = ["ResumeRefused", "check_resume", "data_fingerprint"]


class ResumeRefused(CheckpointError):
    """A checkpoint cannot continue this run (see :func:`check_resume`). ``diffs``: (setting, this
    run's value, checkpoint's value) for settings that differ; ``epochs_done``: set when the
    checkpoint has already completed the run's epochs. Both are the caller's to word (the command
    line names options); the message is complete on its own."""

    def __init__(self, message, diffs=(), epochs_done=None):
        self.diffs, self.epochs_done = list(diffs), epochs_done
        super().__init__(message)


def data_fingerprint(*arrays):
    """SHA-256 (hex) over the shapes, dtypes and bytes of ``arrays``: identifies the exact images and
    labels a run trained on, so a resume on other data is refused."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode("ascii"))
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def check_resume(ckpt: Checkpoint, config: TrainConfig, *, dataset: str | None = None,
                 data_info: dict | None = None, steps_per_epoch: int | None = None) -> None:
    """The one decision whether checkpoint ``ckpt`` can continue a run of ``config`` (resolved):
    it holds a training state (not a model-only file as written by ``--save-model``), was trained
    with the same :data:`RESUME_KEYS` settings (and ``dataset``, when given), has fewer completed
    epochs than ``config.epochs``, and, when ``data_info`` / ``steps_per_epoch`` are given (the
    data is loaded), was trained on the same data and is internally consistent. Raises
    :class:`ResumeRefused` (a CheckpointError); the array-level checks (architecture, optimizer,
    generators) follow in :func:`fastcnn.checkpoint.restore`."""
    def fail(why, **kw):
        return ResumeRefused(f"{ckpt.path}: {why}", **kw)

    extra = ckpt.header.get("extra")
    extra = extra if isinstance(extra, dict) else {}
    step = extra.get("step")
    if ckpt.header.get("optimizer") is None or isinstance(step, bool) or not isinstance(step, int):
        raise fail("holds a model only (e.g. from --save-model), not a training state that can be resumed; "
                   "use a file written by --checkpoint")
    saved, mine = ckpt.config, config.to_dict()
    diffs = [(k, mine[k], saved.get(k)) for k in RESUME_KEYS if k in saved and saved.get(k) != mine[k]]
    if dataset is not None and extra.get("dataset") not in (None, dataset):
        diffs.append(("dataset", dataset, extra.get("dataset")))
    if diffs:
        raise fail("trained with other settings: " + "; ".join(f"{k} {theirs!r} (this run: {ours!r})"
                                                              for k, ours, theirs in diffs), diffs=diffs)
    if ckpt.epoch >= config.epochs:
        raise fail(f"the checkpoint has completed {ckpt.epoch} of {config.epochs} epochs; train further with "
                   f"more epochs (--epochs N, N > {ckpt.epoch})", epochs_done=ckpt.epoch)
    if len(ckpt.history) != ckpt.epoch:
        raise fail(f"inconsistent: {ckpt.epoch} epochs but {len(ckpt.history)} history entries")
    if data_info is not None:
        data = extra.get("data")
        data = data if isinstance(data, dict) else {}
        if data.get("sha256") not in (None, data_info["sha256"]):
            raise fail(f"trained on other data ({data.get('name')}, {data.get('train_images')} train / "
                       f"{data.get('test_images')} test images) than this run ({data_info['name']}, "
                       f"{data_info['train_images']} / {data_info['test_images']})")
    if steps_per_epoch is not None and step != ckpt.epoch * steps_per_epoch:
        raise fail(f"inconsistent: {ckpt.epoch} epochs but {step} steps of {steps_per_epoch}")
