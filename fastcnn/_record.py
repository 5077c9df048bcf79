"""The record of a ``fastcnn-train`` run: what it writes after every epoch (checkpoint, metrics,
plots) and at its end (the model, the metrics' final ``status`` and the exit reason), and the
one-line message of a failed write.
"""
from __future__ import annotations

import errno
import shlex
from dataclasses import asdict

from fastcnn._atomic import write_json
from fastcnn._cli import TRAIN_PROG as PROG
from fastcnn._cli import versions
from fastcnn._outputs import OutputFailed
from fastcnn._run_config import _reading

__all__ = ["metrics_document"]


def metrics_document(status: str, config, where: dict, summary: dict, *, run: str | None = None,
                     stop: dict | None = None, error: str | None = None) -> dict:
    """The metrics document of a run, as ``fastcnn-train --metrics`` and each ``fastcnn-sweep`` run
    write it: ``status``, the sweep's ``run`` name (when given), ``config`` (the
    :class:`~fastcnn.trainconfig.TrainConfig` ``config`` with the files and data of ``where``), the
    :meth:`RunState.summary <fastcnn.runstate.RunState.summary>` ``summary``, ``versions``, then why
    the run stopped (``stop``) or failed (``error``) when it did."""
    doc = {"status": status}
    if run is not None:
        doc["run"] = run
    doc["config"] = {**asdict(config), **where}
    doc.update(summary)
    doc["versions"] = versions()
    if stop is not None:
        doc["stopped"] = stop
    if error is not None:
        doc["error"] = error
    return doc


class _Run:
    """One ``fastcnn-train`` invocation: what it writes after every epoch and at the end."""

    def __init__(self, args, outputs):
        self.args, self.outputs = args, outputs
        self.config = self.data = self.trainer = None
        self.checkpoint = outputs.checkpoint
        self.saved_epoch = None            # the epoch in self.checkpoint, once this run wrote or read one
        self.metrics_status = None         # the status last written to --metrics

    def document(self, status, stop=None, error=None):
        args, config, state = self.args, self.config, self.trainer.state
        return metrics_document(status, config, {
            "dataset": args.dataset, "data_dir": args.data_dir, "source_dir": str(self.data.source_dir),
            "plots_dir": args.plots_dir, "metrics": args.metrics, "checkpoint": self.checkpoint,
            "resume": args.resume}, state.summary(timings=not args.no_timings), stop=stop, error=error)

    def _write(self, option, path, write):
        try:
            write()
        except OSError as exc:
            raise OutputFailed(self.failure(option, path, exc)) from None

    def failure(self, option, path, exc) -> str:
        """The one-line message of a failed write: the fix, the user's path, and what is safe."""
        why = exc.strerror or str(exc)
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
        safe = self.resume_hint()
        if option == "--save-model":
            state = self.trainer.state
            safe = (f"the trained weights are safe in {self.checkpoint} (epoch {state.epoch}; fastcnn-eval reads it)"
                    if self.saved_epoch == state.epoch else "the trained model is not saved anywhere; train again")
        return f"{fix}: writing {option} {path} failed ({why}); {safe}"

    def after_epoch(self, state, metrics):
        """Trainer callback: checkpoint, metrics so far, plots so far."""
        from fastcnn.plots import save_plots
        args = self.args
        if self.checkpoint is not None:
            self._write("--checkpoint", self.checkpoint, lambda: self.trainer.save_checkpoint(
                self.checkpoint, extra={"dataset": args.dataset, "source_dir": str(self.data.source_dir),
                                        **_reading(args)}))
            self.saved_epoch = state.epoch
        if args.metrics is not None:
            self._write("--metrics", args.metrics, lambda: write_json(args.metrics, self.document("running")))
            self.metrics_status = "running"
        self._write("--plots-dir", args.plots_dir, lambda: save_plots(state.history, args.plots_dir))

    def save_model(self):
        from fastcnn.checkpoint import save_checkpoint
        args, state = self.args, self.trainer.state
        self._write("--save-model", args.save_model, lambda: save_checkpoint(
            args.save_model, state.model, None, epoch=state.epoch, history=state.history,
            config=asdict(self.config), rngs=None,
            extra={"dataset": args.dataset, "data": self.trainer.data_info, **_reading(args),
                   "source_dir": str(self.data.source_dir)}, threads=state.threads))

    def finish(self, status, stop=None, error=None) -> str:
        """Final metrics (best effort unless completed); returns a sentence on what was kept."""
        args = self.args
        if args.metrics is not None and self.trainer is not None:
            try:
                write_json(args.metrics, self.document(status, stop, error))
                self.metrics_status = status
            except OSError as exc:
                if status == "completed":
                    raise OutputFailed(self.failure("--metrics", args.metrics, exc)) from None
        n = len(self.trainer.state.history) if self.trainer is not None else 0
        kept = [f"metrics in {args.metrics}"] if args.metrics and self.metrics_status == status else []
        if n:
            kept.append(f"plots of {n} epoch{'s' if n != 1 else ''} in {args.plots_dir}")
        if status != "completed" and args.save_model is not None:
            kept.append("no --save-model file")
        return ", ".join(kept)

    def resume_hint(self) -> str:
        if self.checkpoint is None:
            return "no --checkpoint was given, so the run cannot be resumed"
        if self.saved_epoch is None:
            return "no epoch completed, so there is nothing to resume"
        return (f"epoch {self.saved_epoch} is safe in {self.checkpoint}; resume with: "
                f"{PROG} --resume {shlex.quote(str(self.checkpoint))}")
