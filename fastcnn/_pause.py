"""``FASTCNN_TEST_PAUSE``: makes a run wait at one exact point, so that a test can send it a signal
(or kill its process) there, however loaded the machine. Unset: no hook, no cost.

``FASTCNN_TEST_PAUSE=PHASE:EPOCH:BATCH:FILE``, PHASE one of:
- ``train`` or ``eval`` (EPOCH and BATCH 1-based): a run of fastcnn-train or of a fastcnn-sweep worker
  that reaches that batch writes its process id to FILE and waits there until a stop is requested,
  then stops exactly before that batch.
- ``start`` (EPOCH and BATCH ignored): fastcnn-train writes FILE as soon as its signal handlers are
  installed, before it imports NumPy or reads anything, and waits there until a signal stops it.

Only the first process to get there waits: FILE is created only if it does not exist, and a run that
finds it already there goes on (a retried or resumed run does not wait again).

Imports only the standard library: fastcnn-train reads it before NumPy.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

ENV = "FASTCNN_TEST_PAUSE"
_POLL_SECONDS = 0.005


def _requested() -> tuple[tuple[str, int, int], Path] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    phase, epoch, batch, marker = spec.split(":", 3)
    return (phase, int(epoch), int(batch)), Path(marker)


def _claim(marker: Path) -> bool:
    """Create ``marker`` holding this process's id, whole, unless it exists already."""
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, marker)            # atomic, and fails if marker exists
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def batch_hook(stopping: Callable[[], bool]) -> Callable[[str, int, int], None] | None:
    """A :attr:`Trainer.on_batch <fastcnn.train.Trainer>` hook that waits at the requested batch
    until ``stopping()`` is true; None when no batch is requested."""
    requested = _requested()
    if requested is None or requested[0][0] not in ("train", "eval"):
        return None
    at, marker = requested

    def hook(phase: str, epoch: int, batch: int) -> None:
        if (phase, epoch, batch) == at and _claim(marker):
            while not stopping():
                time.sleep(_POLL_SECONDS)
    return hook


def wait_at_start() -> None:
    """If phase ``start`` is requested, wait until a signal handler raises out of the sleep."""
    requested = _requested()
    if requested is not None and requested[0][0] == "start" and _claim(requested[1]):
        while True:
            time.sleep(_POLL_SECONDS)
