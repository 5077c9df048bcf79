"""What a Dask worker runs for one sweep run: :func:`run_one`.

A run trains with the library's :class:`~fastcnn.train.Trainer`, exactly as ``fastcnn-train`` does
(same configuration, same seed streams, same checkpoint and metrics files), so a run with the same
settings and thread count gives the same numbers bit for bit. Its folder ``OUT/<run>/`` holds
``metrics.json`` (fastcnn-train's ``--metrics`` format, plus ``"run"``) and ``checkpoint.npz``
(resumable with ``fastcnn-train --resume`` too), both rewritten atomically after every epoch.

Stopping: the sweep sets a :class:`distributed.Event`; a watcher thread beside the training thread
turns it into ``state.stop_requested``, which the trainer checks before every batch.

Errors never escape :func:`run_one`: a diverged or failed run returns its status and reason, so one
bad configuration never stops the others. Only a lost worker makes the task itself fail.
"""
from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from fastcnn._atomic import write_json
from fastcnn._cli import one_line
from fastcnn._pause import batch_hook
from fastcnn._record import metrics_document
from fastcnn.train import RESUME_KEYS, TrainConfig

__all__ = ["CHECKPOINT_FILE", "METRICS_FILE", "data_fingerprints", "read_metrics", "run_one", "same_settings"]

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.npz"
#: Settings that must match for a finished run in OUT to count as this run: those that change what
#: is computed (a resumed run shares them too), the number of epochs, early stopping (which epoch's
#: model is kept), and the backend (its results differ within float tolerance). Not the thread
#: count: results are bit-identical for any.
_SAME_KEYS = (*RESUME_KEYS, "epochs", "early_stop", "backend")
_POLL_SECONDS = 0.5
_datasets: dict = {}
_datasets_lock = threading.Lock()


def read_metrics(path: str | Path) -> dict | None:
    """The metrics document at ``path``, or None when it is missing or unreadable."""
    import json
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def settings_diff(doc: dict, config: TrainConfig, dataset: str,
                  keys: tuple[str, ...] = _SAME_KEYS) -> list[tuple[str, object, object]]:
    """The ``keys`` settings (and the dataset) in which metrics document ``doc`` differs from a run
    of ``config`` on ``dataset``, as (name, this run's value, the document's value). Empty for the
    default keys: ``doc`` was written by such a run; empty for RESUME_KEYS: this run may continue it."""
    saved = doc.get("config")
    saved = saved if isinstance(saved, dict) else {}
    mine = {**asdict(config), "dataset": dataset}
    return [(k, mine[k], saved.get(k)) for k in ("dataset", *keys) if saved.get(k) != mine[k]]


def same_settings(doc: dict, config: TrainConfig, dataset: str) -> bool:
    """Whether metrics document ``doc`` was written by a run of ``config`` on ``dataset``."""
    return not settings_diff(doc, config, dataset)


def _dataset(name: str, data_dir: str | None, download: bool):
    """The dataset, loaded once per worker process (every run on the worker shares it)."""
    from fastcnn.data import load_dataset
    key = (name, data_dir, download)
    with _datasets_lock:
        if key not in _datasets:
            _datasets[key] = load_dataset(name, data_dir=data_dir, download=download)
        return _datasets[key]


def data_fingerprints(dataset: str, data_dir: str | None, download: bool, limits: list) -> dict:
    """``{(limit_train, limit_test): SHA-256}`` of the data a run with those limits trains on, as
    :class:`~fastcnn.train.Trainer` computes it and stores it in every checkpoint: what a run found
    in OUT must have been trained on for the sweep to count it as completed."""
    import numpy as np

    from fastcnn.train import data_fingerprint
    data = _dataset(dataset, data_dir, download)
    out = {}
    for limit_train, limit_test in limits:
        n_train = len(data.x_train) if limit_train is None else min(limit_train, len(data.x_train))
        n_test = len(data.x_test) if limit_test is None else min(limit_test, len(data.x_test))
        out[(limit_train, limit_test)] = data_fingerprint(
            np.asarray(data.x_train[:n_train]), np.asarray(data.y_train[:n_train], np.int64),
            data.x_test[:n_test], np.asarray(data.y_test[:n_test], np.int64))
    return out


class _StopWatcher:
    """Sets ``state.stop_requested`` once the sweep's stop Event is set (polled from a thread)."""

    def __init__(self, event_name: str | None):
        self.event = None
        self.state = None
        self._done = threading.Event()
        self._thread = None
        if event_name is not None:
            from distributed import Event
            self.event = Event(event_name)

    def is_set(self) -> bool:
        try:
            return self.event is not None and self.event.is_set()
        except Exception:  # noqa: BLE001 -- the scheduler is gone: nobody is left to ask us to stop
            return False

    def watch(self, state) -> None:
        self.state = state
        if self.event is not None:
            self._thread = threading.Thread(target=self._run, name="fastcnn-sweep-stop-watcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                if self.event.wait(timeout=_POLL_SECONDS):
                    self.state.stop_requested = True
                    return
            except Exception:  # noqa: BLE001 -- the scheduler is gone: the run goes on to its end
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def run_one(name: str, config: TrainConfig, out_dir: str, *, dataset: str = "mnist", data_dir: str | None = None,
            download: bool = True, timings: bool = True, stop_event: str | None = None) -> dict:
    """Train run ``name`` per ``config`` into ``out_dir/name/``, resuming from its checkpoint when one
    is there. Returns ``{"name", "status", "reason", "document", "resumed_from", "seconds"}`` where
    status is completed, interrupted, diverged, failed or not-started (the stop Event was already
    set), and ``document`` the metrics written (None when the run never got that far)."""
    from threadpoolctl import threadpool_limits

    from fastcnn._process import tune_process
    from fastcnn.checkpoint import CheckpointError, load_checkpoint
    from fastcnn.train import Trainer, TrainingDiverged, TrainingInterrupted

    tune_process()                # once per worker process, as fastcnn-train does in its own
    t0 = time.perf_counter()
    run_dir = Path(out_dir) / name
    metrics_path, ckpt_path = run_dir / METRICS_FILE, run_dir / CHECKPOINT_FILE
    result = {"name": name, "status": "failed", "reason": None, "document": None, "resumed_from": None}
    watcher = _StopWatcher(stop_event)
    trainer = None
    foreign = False               # the folder holds a checkpoint this run may not continue: never write there

    def document(status, stop=None, error=None):
        return metrics_document(status, trainer.config, {
            "dataset": dataset, "data_dir": data_dir, "source_dir": str(data.source_dir), "plots_dir": None,
            "metrics": str(metrics_path), "checkpoint": str(ckpt_path),
            "resume": str(ckpt_path) if result["resumed_from"] else None},
            trainer.state.summary(timings=timings), run=name, stop=stop, error=error)

    def after_epoch(state, metrics):
        trainer.save_checkpoint(ckpt_path, extra={"dataset": dataset, "source_dir": str(data.source_dir)})
        write_json(metrics_path, document("running"))

    try:
        if watcher.is_set():
            result.update(status="not-started", reason="the sweep was stopped before this run started")
            return result
        run_dir.mkdir(parents=True, exist_ok=True)
        # BLAS and OpenMP pools on the run's share of the cores (Numba's pool: config.threads).
        with threadpool_limits(limits=config.threads) if config.threads else contextlib.nullcontext():
            data = _dataset(dataset, data_dir, download)
            trainer = Trainer(config, data, log=lambda *a, **k: None, callbacks=[after_epoch])
            if ckpt_path.exists():
                foreign = True
                ckpt = load_checkpoint(ckpt_path)
                trainer.restore(ckpt)                  # refuses a checkpoint of other settings or data
                foreign = False
                result["resumed_from"] = ckpt.epoch
            trainer.on_batch = batch_hook(trainer.stopping)
            watcher.watch(trainer.state)
            try:
                state = trainer.run()
            except TrainingDiverged as exc:
                result.update(status="diverged", reason=str(exc))
                stop = {"reason": "diverged", "epoch": exc.epoch, "batch": exc.batch, "what": exc.what}
                result["document"] = document("diverged", stop=stop)
            except TrainingInterrupted as exc:
                result.update(status="interrupted", reason=f"stopped in epoch {exc.epoch} before batch "
                                                           f"{exc.batch}/{exc.batches}")
                stop = {"reason": "sweep stopped", "epoch": exc.epoch, "batch": exc.batch}
                result["document"] = document("interrupted", stop=stop)
            else:
                if state.epoch < trainer.config.epochs and not trainer.stopped_early:
                    result.update(status="interrupted", reason=f"stopped after epoch {state.epoch}")
                    stop = {"reason": "sweep stopped", "epoch": state.epoch + 1, "batch": 0}
                    result["document"] = document("interrupted", stop=stop)
                elif trainer.x_val is not None and trainer.final_test is None:
                    # Stopped between the last epoch and the test set's one scoring: a rerun scores it.
                    result.update(status="interrupted", reason=f"stopped after epoch {state.epoch}, before the "
                                                               "test set was scored")
                    stop = {"reason": "sweep stopped", "epoch": state.epoch, "batch": 0}
                    result["document"] = document("interrupted", stop=stop)
                else:
                    result.update(status="completed")
                    result["document"] = document("completed")
    except (CheckpointError, ValueError, OSError, MemoryError) as exc:
        hint = f"; delete {run_dir} or choose another --out" if isinstance(exc, CheckpointError) else ""
        result.update(status="failed", reason=one_line(str(exc) or type(exc).__name__) + hint)
    except Exception as exc:  # noqa: BLE001 -- a bug: reported with the run, the sweep goes on
        last = traceback.extract_tb(exc.__traceback__)[-1]
        result.update(status="failed", reason=f"unexpected {type(exc).__name__}: {one_line(str(exc))} "
                                              f"({Path(last.filename).name}:{last.lineno})")
    finally:
        watcher.close()
    if result["document"] is None and trainer is not None and not foreign:
        result["document"] = document(result["status"], error=result["reason"])
    if result["document"] is not None:
        try:
            write_json(metrics_path, result["document"])
        except OSError as exc:
            result.update(status="failed", reason=f"cannot write {metrics_path}: {exc.strerror or exc}")
    result["seconds"] = time.perf_counter() - t0
    return result
