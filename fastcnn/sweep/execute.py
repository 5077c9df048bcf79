"""Running a sweep's runs on Dask distributed: a :class:`distributed.LocalCluster` on this machine
by default, or an existing cluster given by its scheduler address.

Local cluster: one worker process per run slot (``workers``, default: as many as runs, at most one
per core), one task at a time per worker (``threads_per_worker=1``), bound to 127.0.0.1 only. Each
run's kernels use ``threads_per_run`` threads (default: cores // workers): Numba's pool through
:attr:`TrainConfig.threads <fastcnn.train.TrainConfig>`, BLAS and OpenMP pools through threadpoolctl
(:func:`fastcnn.sweep.worker.run_one`), so the runs never oversubscribe the cores.

Lost workers: the local scheduler is started with ``distributed.scheduler.allowed-failures = 0``,
so a run whose worker dies fails at once with :class:`distributed.KilledWorker`; the sweep then
submits it once more (it resumes from its last checkpoint). On a given scheduler that scheduler's
own ``allowed-failures`` retries come first.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM sets a :class:`distributed.Event` that every run
polls (it stops before its next batch and keeps its last checkpoint); runs not yet started return at
once. A second signal stops at once: the cluster is closed and each unfinished run keeps its last
complete epoch's checkpoint. Worker processes of the local cluster ignore SIGINT, so a Ctrl-C in the
terminal (sent to the whole process group) reaches the sweep only.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from fastcnn.backend import usable_cpus as available_cores
from fastcnn.sweep.worker import run_one

__all__ = ["Cluster", "SweepStopped", "available_cores", "run_all"]


class SweepStopped(BaseException):     # never caught by a run's "except Exception"
    """A second signal: the sweep stops at once. ``signum``: the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Cluster:
    """Where runs execute: ``with Cluster(...) as cluster: cluster.client.submit(...)``.

    ``scheduler``: an address (``tcp://HOST:PORT``) of a running Dask scheduler, or None for a new
    local cluster of ``workers`` processes. ``threads_per_run``: None for cores per run slot.
    ``dashboard``: the local scheduler's dashboard address (``HOST:PORT``; port 0: any free port)."""
    scheduler: str | None = None
    workers: int | None = None
    threads_per_run: int | None = None
    runs: int = 1
    dashboard: str = "127.0.0.1:8787"
    client: object = field(default=None, init=False)
    slots: int = field(default=0, init=False)
    threads: int = field(default=1, init=False)
    description: str = field(default="", init=False)
    dashboard_link: str | None = field(default=None, init=False)
    _stack: contextlib.ExitStack = field(default=None, init=False, repr=False)

    def __enter__(self) -> Cluster:  # noqa: PYI034 -- typing.Self needs Python 3.11
        self._stack = contextlib.ExitStack()
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False

    def _start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            cores = available_cores()
            self.slots = self.workers or max(1, min(self.runs, cores))
            self.threads = self.threads_per_run or max(1, cores // self.slots)
            # Spawned worker processes inherit an ignored SIGINT (Python keeps it ignored), so a
            # terminal's Ctrl-C stops the sweep through its own handler, not by killing workers.
            main = threading.current_thread() is threading.main_thread()
            old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:
                with dask.config.set({"distributed.scheduler.allowed-failures": 0}), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*already in use.*")
                    cluster = LocalCluster(n_workers=self.slots, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=self.dashboard,
                                           worker_dashboard_address=None, silence_logs=logging.ERROR)
            finally:
                if main:
                    signal.signal(signal.SIGINT, old)
            self._stack.callback(cluster.close)
            self.client = Client(cluster)
            self._stack.callback(self.client.close)
            self.client.register_plugin(_ignore_sigint_plugin(), name="fastcnn-sweep-ignore-sigint")
            self.description = (f"a local Dask cluster: {self.slots} worker process{'es' if self.slots != 1 else ''}"
                                f" x {self.threads} thread{'s' if self.threads != 1 else ''}")
            if _has_bokeh():
                self.dashboard_link = self.client.dashboard_link
            return
        try:
            self.client = Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot reach the Dask scheduler at {self.scheduler} ({exc}); start one with "
                          "'dask scheduler' and workers with 'dask worker ADDRESS --nthreads 1'") from None
        self._stack.callback(self.client.close)
        try:
            self.client.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise OSError(f"the Dask scheduler at {self.scheduler} has no workers after 60 s; start some with "
                          f"'dask worker {self.scheduler} --nthreads 1'") from None
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        cores = self.client.run(available_cores)
        self.slots = sum(w["nthreads"] for w in info.values())
        per_slot = [max(1, cores[a] // max(1, w["nthreads"])) for a, w in info.items() if a in cores]
        self.threads = self.threads_per_run or (min(per_slot) if per_slot else 1)
        self.description = (f"the Dask cluster at {self.scheduler}: {len(info)} worker{'s' if len(info) != 1 else ''}, "
                            f"{self.slots} run slot{'s' if self.slots != 1 else ''} x {self.threads} "
                            f"thread{'s' if self.threads != 1 else ''}")
        if "dashboard" in self.client.scheduler_info().get("services", {}):
            self.dashboard_link = self.client.dashboard_link


def _ignore_sigint_plugin():
    """A worker plugin for the local cluster: a worker process the nanny restarts (after a crash)
    ignores SIGINT too, like the first ones, which inherit that from the sweep at spawn time."""
    from distributed import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        def setup(self, worker) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def _has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


class _Signals:
    """First SIGINT/SIGTERM: call ``on_first`` (in a thread: it talks to the scheduler). Second: raise
    :class:`SweepStopped`."""

    def __init__(self, on_first: Callable[[int], None]):
        self.on_first = on_first
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self) -> _Signals:  # noqa: PYI034 -- typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise SweepStopped(signum)
        self.received = signum
        threading.Thread(target=self.on_first, args=(signum,), daemon=True).start()


def run_all(cluster: Cluster, specs: list, out_dir: str, *, on_result: Callable[[object, dict], None],
            on_stop: Callable[[int], None] = lambda signum: None, task_kwargs: dict | None = None) -> int | None:
    """Run every spec on ``cluster`` (each through :func:`run_one`) and call ``on_result(spec, result)``
    as each finishes. Returns the signal that stopped the sweep, or None. A second signal raises
    :class:`SweepStopped` after reporting every unfinished run as interrupted."""
    from distributed import Event, KilledWorker, as_completed

    client = cluster.client
    token = uuid.uuid4().hex[:12]
    event_name = f"fastcnn-sweep-stop-{token}"
    event = Event(event_name, client=client)
    kwargs = {**(task_kwargs or {}), "stop_event": event_name}
    pending: dict = {}

    def submit(spec, attempt):
        fut = client.submit(run_one, spec.name, spec.config, out_dir, **kwargs, key=f"{spec.name}-{token}-{attempt}",
                            pure=False)
        pending[fut] = (spec, attempt)
        return fut

    def stop(signum):
        on_stop(signum)
        with contextlib.suppress(Exception):
            event.set()

    with _Signals(stop) as signals:
        ac = as_completed([submit(spec, 0) for spec in specs])
        try:
            for fut in ac:
                spec, attempt = pending.pop(fut)
                try:
                    result = fut.result()
                except KilledWorker as exc:
                    if attempt == 0 and signals.received is None:
                        print(f"fastcnn-sweep: run {spec.name}: its worker was lost ({exc.last_worker.address}); "
                              "retrying it once, from its last checkpoint", file=sys.stderr, flush=True)
                        ac.add(submit(spec, 1))
                        continue
                    result = {"name": spec.name, "status": "failed", "document": None, "resumed_from": None,
                              "reason": f"its worker was lost {attempt + 1} times (last: {exc.last_worker.address})"}
                except Exception as exc:  # noqa: BLE001 -- any task error is that run's failure, not the sweep's
                    result = {"name": spec.name, "status": "failed", "document": None, "resumed_from": None,
                              "reason": f"{type(exc).__name__}: {exc}"}
                on_result(spec, result)
        except SweepStopped:
            for fut, (spec, _) in list(pending.items()):
                fut.cancel()
                on_result(spec, {"name": spec.name, "status": "interrupted", "document": None, "resumed_from": None,
                                 "reason": "stopped at once by a second signal; its last complete epoch is kept"})
            raise
    return signals.received
