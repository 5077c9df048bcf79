"""The signals that stop ``fastcnn-train``, and what each does.

Until the trainer is set (data loading, compilation) and on a second signal, the handler raises
:class:`_Stopped` (atomic writes keep every file whole); once training runs it asks the trainer to
stop before its next batch; while the final files are written, signals are only recorded. The
exit code is 128 + the signal's number.
"""
from __future__ import annotations

import signal
import threading

from fastcnn._cli import TRAIN_PROG as PROG

__all__ = ["STOP_SIGNALS"]

#: Signals that stop a run; the exit code is 128 + the signal's number.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
                     if hasattr(signal, name))


class _Stopped(BaseException):
    """Raised by the signal handler when the process must stop at once."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """The :data:`STOP_SIGNALS` while the command runs. Until :attr:`trainer` is set (data loading,
    compilation) and on a second signal, the handler raises :class:`_Stopped` (atomic writes keep
    every file whole); once training runs it asks the trainer to stop before its next batch. While
    :attr:`finishing` (the final files), signals are only recorded."""

    def __init__(self, console):
        self.received = None
        self.trainer = None
        self.run = None                 # the run's outputs, so a stop can write the final metrics
        self.finishing = False
        self.console = console
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
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
        if self.finishing:
            return
        if self.trainer is None or not first:
            raise _Stopped(signum)
        self.trainer.request_stop()
        self.console.err(f"{PROG}: {signal.Signals(signum).name} received, stopping before the next batch "
                         "(send it again to stop at once)", lead=True)


def _signal_exit(signum) -> int:
    return 128 + int(signum)
