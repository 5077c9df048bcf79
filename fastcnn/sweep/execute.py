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

Stopping: :class:`Signals` handles SIGINT, SIGTERM, SIGHUP and SIGQUIT for the whole sweep, from
before the cluster starts to the summary. The first sets a :class:`distributed.Event` that every run
polls (it stops before its next batch and keeps its last checkpoint); runs not yet started return at
once, and a signal during the cluster's start means no run is submitted. A second signal stops at
once: the unfinished runs keep their last complete epoch's checkpoint. The handler never raises, so
a signal at any moment still leaves the summary. Worker processes of the local cluster are spawned
with SIGINT and SIGQUIT blocked, so a Ctrl-C or Ctrl-\\ in the terminal (sent to the whole process
group) reaches the sweep only; a SIGTERM or SIGHUP to the group also ends the workers, and their
runs are reported as interrupted (or not started), never as failed.

Given scheduler: its address is checked with a bounded handshake (:func:`probe_scheduler`) before
Dask connects; a scheduler lost mid-run ends the sweep with its unfinished runs interrupted.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastcnn._cli import UsageError, one_line
from fastcnn._signals import STOP_SIGNALS  # the same signals end fastcnn-train; exit status 128 + the number
from fastcnn.backend import usable_cpus as available_cores
from fastcnn.sweep.worker import run_one

__all__ = ["STOP_SIGNALS", "Cluster", "Signals", "available_cores", "probe_scheduler", "run_all",
           "scheduler_endpoint"]

_POLL_SECONDS = 0.5
# How long a client may try to reconnect to a given scheduler before its runs count as lost.
_RECONNECT_SECONDS = 10.0
# How long runs may take to stop before their next batch once a signal asked them to.
_STOP_GRACE_SECONDS = 60.0


_HANDSHAKE_SECONDS = 10.0
_HANDSHAKE_MAX_BYTES = 1 << 16


def scheduler_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of a scheduler address ``tcp://HOST:PORT`` or ``HOST:PORT``; a UsageError for
    another transport (``ws://``, ``tls://``) or a malformed address."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme != "tcp":
        raise UsageError(f"--scheduler {address}: give a tcp://HOST:PORT address (fastcnn-sweep connects to "
                         f"Dask schedulers over TCP, not {scheme}://)")
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--scheduler {address}: give the scheduler's address as tcp://HOST:PORT "
                         "(e.g. tcp://10.0.0.5:8786)")
    return host, int(port)


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Check, within ``timeout`` seconds in all (default :data:`_HANDSHAKE_SECONDS`), that a Dask
    scheduler answers at ``address``: a Dask server sends its handshake (a length-prefixed message
    naming its pickle protocol) as soon as a connection opens. Anything else (nothing listening, a
    web server that waits for a request, a server that sends other bytes) raises a one-line OSError;
    an address of another transport (``ws://``, ``tls://``) a UsageError."""
    host, port = scheduler_endpoint(address)
    timeout = _HANDSHAKE_SECONDS if timeout is None else timeout
    hint = "start one with 'dask scheduler', or give the address it prints (tcp://HOST:PORT)"
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            need = 8
            while len(data) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(need - len(data))
                if not chunk:
                    break
                data += chunk
                if len(data) == 8 and need == 8:
                    (size,) = struct.unpack("<Q", data)
                    if not 0 < size <= _HANDSHAKE_MAX_BYTES:
                        break
                    need = 8 + size
    except TimeoutError:
        raise OSError(f"no Dask scheduler answered at {address} within {timeout:g} s (something is listening "
                      f"there but sent no Dask handshake: a web server?); {hint}") from None
    except OSError as exc:
        raise OSError(f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc}); {hint}") from None
    if len(data) < need or b"pickle-protocol" not in data:
        raise OSError(f"{address} is not a Dask scheduler (it answered with something other than a Dask "
                      f"handshake); {hint}")


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
    address: str = field(default="", init=False)
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
            with _spawn_guard(), dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
                    warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*already in use.*")
                cluster = LocalCluster(n_workers=self.slots, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=self.dashboard,
                                       worker_dashboard_address=None, silence_logs=logging.CRITICAL)
            self._stack.callback(cluster.close)
            self.address = cluster.scheduler_address
            self.client = Client(cluster)
            self._stack.callback(self.client.close)
            self.client.register_plugin(_ignore_sigint_plugin(), name="fastcnn-sweep-ignore-sigint")
            self.description = (f"a local Dask cluster: {self.slots} worker process{'es' if self.slots != 1 else ''}"
                                f" x {self.threads} thread{'s' if self.threads != 1 else ''}")
            if _has_bokeh():
                self.dashboard_link = self.client.dashboard_link
            return
        probe_scheduler(self.scheduler)
        self.address = self.scheduler
        for name in ("distributed.client", "distributed.core", "distributed.comm"):
            logging.getLogger(name).setLevel(logging.CRITICAL)   # a lost scheduler is reported in one line
        try:
            self.client = Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot reach the Dask scheduler at {self.scheduler} ({one_line(exc)}); start one with "
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
        most = max(cores.values(), default=1)
        if self.threads_per_run is not None and self.threads_per_run > most:
            raise UsageError(f"--threads-per-run {self.threads_per_run}: the workers of {self.scheduler} have at "
                             f"most {most} cores each; give at most {most}")
        self.threads = self.threads_per_run or (min(per_slot) if per_slot else 1)
        self.description = (f"the Dask cluster at {self.scheduler}: {len(info)} worker{'s' if len(info) != 1 else ''}, "
                            f"{self.slots} run slot{'s' if self.slots != 1 else ''} x {self.threads} "
                            f"thread{'s' if self.threads != 1 else ''}")
        if "dashboard" in self.client.scheduler_info().get("services", {}):
            self.dashboard_link = self.client.dashboard_link


def _ignore_sigint_plugin():
    """A worker plugin for the local cluster: a worker process the nanny restarts (after a crash)
    ignores SIGINT and SIGQUIT, as the first ones hold them blocked from the sweep's spawn."""
    from distributed import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        def setup(self, worker) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    return IgnoreSigint()


def _has_bokeh() -> bool:
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


class Signals:
    """The sweep's handler of :data:`STOP_SIGNALS`, installed for the whole sweep. It never raises:
    the first signal is recorded in ``received`` and ``on_first(signum)`` runs in a thread (it talks
    to the scheduler); a second sets ``hard``. The waiting loop of :func:`run_all` reads both, so a
    signal at any moment (the cluster starting, a result arriving, the summary being written) ends
    the sweep at its next step and never skips the summary."""

    def __init__(self):
        self.received: int | None = None
        self.received_at: float | None = None
        self.hard = False
        self.on_first: Callable[[int], None] | None = None
        self.on_stop: Callable[[int, bool], None] = lambda signum, hard: None
        self._old: dict = {}

    def __enter__(self) -> Signals:  # noqa: PYI034 -- typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}
        return False

    def _handle(self, signum, frame) -> None:
        # Only flags are set here; printing and talking to the scheduler happen in a thread (a
        # handler that writes to a stream the main thread is writing would fail as re-entrant).
        if self.received is not None:
            if not self.hard:
                self.hard = True
                threading.Thread(target=self.on_stop, args=(signum, True), daemon=True).start()
            return
        self.received = signum
        self.received_at = time.monotonic()
        threading.Thread(target=self._first, args=(signum,), daemon=True).start()

    def _first(self, signum: int) -> None:
        self.on_stop(signum, False)
        if self.on_first is not None:
            self.on_first(signum)


@contextlib.contextmanager
def _spawn_guard():
    """Hold SIGINT and SIGQUIT back from the calling thread (they stay pending, then reach the sweep's
    handler) while the local cluster's processes are spawned: those inherit the mask, so a terminal's
    Ctrl-C or Ctrl-\\, sent to the whole process group, reaches the sweep and not its workers."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGQUIT}) if main else None
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stopped_result(spec, out_dir: str, reason: str, started_reason: str) -> dict:
    """The result of a run the sweep gave up waiting for: not-started when it left nothing in its
    folder, else interrupted (its last complete epoch's checkpoint is kept)."""
    started = (Path(out_dir) / spec.name).exists()
    return {"name": spec.name, "status": "interrupted" if started else "not-started", "document": None,
            "resumed_from": None, "reason": started_reason if started else reason}


def _gone(client, since: float) -> bool:
    """After a stop signal: whether waiting longer is pointless, as no worker is left (the signal
    reached the whole process group) or the runs did not stop within :data:`_STOP_GRACE_SECONDS`."""
    if time.monotonic() - since > _STOP_GRACE_SECONDS:
        return True
    try:
        return not client.scheduler_info().get("workers")
    except Exception:  # noqa: BLE001 -- no scheduler to ask: nothing left to wait for
        return True


def _scheduler_lost(client) -> bool:
    return getattr(client, "status", "running") not in ("running", "connecting", "newly-created")


def run_all(cluster: Cluster, specs: list, out_dir: str, *, on_result: Callable[[object, dict], None],
            signals: Signals, task_kwargs: dict | None = None) -> str | None:
    """Run every spec on ``cluster`` (each through :func:`run_one`) and call ``on_result(spec, result)``
    exactly once per spec. Returns None, or why the sweep ended early: "signal" (see ``signals``)
    or "scheduler" (the connection to the scheduler was lost; the runs' results are unknown)."""
    from distributed import Event, KilledWorker, wait

    client = cluster.client
    token = uuid.uuid4().hex[:12]
    event = Event(f"fastcnn-sweep-stop-{token}", client=client)
    kwargs = {**(task_kwargs or {}), "stop_event": event.name}
    pending: dict = {}

    def submit(spec, attempt):
        fut = client.submit(run_one, spec.name, spec.config, out_dir, **kwargs, key=f"{spec.name}-{token}-{attempt}",
                            pure=False)
        pending[fut] = (spec, attempt)

    def stop(signum):
        with contextlib.suppress(Exception):
            event.set()

    signals.on_first = stop
    if signals.received is not None:           # stopped while the cluster started: nothing is submitted
        for spec in specs:
            on_result(spec, {"name": spec.name, "status": "not-started", "document": None, "resumed_from": None,
                             "reason": "the sweep stopped before this run started"})
        return "signal"
    for spec in specs:
        submit(spec, 0)
    ended = None
    lost_since = None
    while pending:
        if signals.hard or (signals.received is not None and _gone(client, signals.received_at)):
            ended = "signal"
            break
        if _scheduler_lost(client) or client.status == "connecting":
            lost_since = lost_since or time.monotonic()
            if _scheduler_lost(client) or time.monotonic() - lost_since > _RECONNECT_SECONDS:
                ended = "scheduler"
                break
        else:
            lost_since = None
        try:
            done, _ = wait(list(pending), timeout=_POLL_SECONDS, return_when="FIRST_COMPLETED")
        except TimeoutError:
            continue
        except Exception:  # noqa: BLE001 -- the scheduler went away while we waited
            if _scheduler_lost(client):
                ended = "scheduler"
                break
            time.sleep(_POLL_SECONDS)
            continue
        for fut in done:
            spec, attempt = pending.pop(fut)
            try:
                result = fut.result()
            except KilledWorker as exc:
                if signals.received is not None:         # the signal reached the workers too (a process group)
                    result = _stopped_result(spec, out_dir, "the sweep stopped before this run started",
                                             "its worker stopped with the sweep's signal; its last complete "
                                             "epoch is kept")
                elif attempt == 0:
                    print(f"fastcnn-sweep: run {spec.name}: its worker was lost ({exc.last_worker.address}); "
                          "retrying it once, from its last checkpoint", file=sys.stderr, flush=True)
                    submit(spec, 1)
                    continue
                else:
                    result = {"name": spec.name, "status": "failed", "document": None, "resumed_from": None,
                              "reason": f"its worker was lost {attempt + 1} times (last: {exc.last_worker.address})"}
            except Exception as exc:  # noqa: BLE001 -- any task error is that run's failure, not the sweep's
                if _scheduler_lost(client) or fut.cancelled():
                    pending[fut] = (spec, attempt)
                    ended = "scheduler"
                    break
                result = {"name": spec.name, "status": "failed", "document": None, "resumed_from": None,
                          "reason": one_line(f"{type(exc).__name__}: {exc}")}
            on_result(spec, result)
        if ended:
            break
    for fut, (spec, _) in list(pending.items()):
        with contextlib.suppress(Exception):
            fut.cancel()
        if ended == "scheduler":
            result = {"name": spec.name, "status": "interrupted", "document": None, "resumed_from": None,
                      "reason": f"the connection to the Dask scheduler at {cluster.address} was lost; its workers "
                                "may still finish this run: rerun the same command to collect or resume it"}
        else:
            result = _stopped_result(spec, out_dir, "the sweep stopped before this run started",
                                     "stopped at once by a second signal; its last complete epoch is kept"
                                     if signals.hard else "its worker stopped with the sweep's signal; its last "
                                     "complete epoch is kept")
        on_result(spec, result)
    return ended or ("signal" if signals.received is not None else None)
