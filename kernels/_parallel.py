"""parallel_for: the kernels' one way to use several cores.

Each driver is a serial ``@njit(nogil=True)`` function over a range of independent tasks
(``driver(lo, hi, *args)``: images, planes, chunks, elements); parallel_for splits [0, n) into one
contiguous part per thread and runs the parts at once, one in the calling thread and the others in
a few persistent worker threads. The drivers release the GIL, so the parts run in parallel.

Why not Numba's ``parallel=True`` and ``prange``: a prange driver is compiled twice over (the
parallel region as a gufunc, then the function around it, whose module links the gufunc and its
workers and optimises them all again) plus the parfor passes; the same kernels as serial drivers
compile in about half the CPU time (measured on this project's MNIST network: 30.8 s against
14.8 s), which is what a first run waits for. The work split is the same static one, every task
computes the same values wherever it runs, so results are bit-identical for any thread count.

Why the workers spin: a training step makes about 20 parallel calls, some of 0.1 ms. A thread that
sleeps, on an Event or on the GIL, takes about 20 us to wake on a virtual machine, and a pool that
sleeps between calls paid that twice per call (47 us for an empty call). So each handoff is a
counter in a shared array, published by one side and watched by the other in compiled code that
holds no GIL (``_wait_for``): a worker watches for its next part for up to SPIN_SECONDS after its
last one, then waits LINGER_SECONDS more (or a multiple the caller asks for) so that the caller,
which posted the part, has entered its own part and let go of the GIL; it publishes "done" only
from compiled code, after letting go of the GIL itself (``_finish_and_wait``); the caller watches
for the parts to finish. Only after that does either side block on an Event. Busy-waiting is
bounded so an idle process uses no CPU, and short so a shared machine loses little. An empty
two-part call costs about 10 us.

The thread count is Numba's: ``numba.get_num_threads()`` parts at most (``NUMBA_NUM_THREADS``,
``numba.set_num_threads``), so the commands' --threads and the tests' thread settings apply. The
workers start on first use (nothing happens on import) and again in a forked child. A call made
while another thread's call holds the workers runs its parts serially in its own thread (same
results).
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable

import numba
import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from fastcnn.kernels._config import CACHE

SPIN_SECONDS = 2e-4    # a worker watches this long for its next part before it sleeps
LINGER_SECONDS = 6e-6  # and waits this long after seeing it, while the caller enters its own part
YIELD_EVERY = 16       # reads between two offers of the core to other threads
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def _load_acquire(typingctx, counters, i):
    """counters[i] read atomically, with acquire ordering: never hoisted out of a loop."""
    sig = types.int64(counters, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return sig, codegen


@intrinsic
def _store_release(typingctx, counters, i, value):
    """counters[i] = value, atomically, with release ordering."""
    sig = types.void(counters, i, value)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return sig, codegen


def _emit_pause(builder) -> None:
    if _X86:
        pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse2.pause")
        builder.call(pause, [])


@intrinsic
def _cpu_relax(typingctx):
    """The x86 ``pause`` hint inside a spin loop (frees the core's other hyperthread); nothing
    elsewhere."""
    def codegen(context, builder, signature, args):
        _emit_pause(builder)
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _yield_cpu(typingctx):
    """Let another runnable thread of this core run: POSIX sched_yield (resolved by the JIT in the
    C library the interpreter has loaded); on Windows only the pause hint."""
    def codegen(context, builder, signature, args):
        if sys.platform == "win32":
            _emit_pause(builder)
        else:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(nogil=True, cache=CACHE)
def _wait_for(counters, i, value, spins):
    """Watch counters[i] until it equals value, for at most ``spins`` reads; True if it did. Every
    YIELD_EVERY reads the thread offers its core to any other runnable thread: on a busy machine
    a watcher must not hold the core the thread it waits for (or another program) needs."""
    for k in range(spins):
        if _load_acquire(counters, i) == value:
            return True
        if k % YIELD_EVERY == YIELD_EVERY - 1:
            _yield_cpu()
        else:
            _cpu_relax()
    return False


@njit(nogil=True, cache=CACHE)
def _finish_and_wait(done, posted, w, seen, spins, lingers):
    """A worker's handoff: done[w] = seen, published only now that this thread has let go of the
    GIL (so the caller can take it at once), then watch for part seen + 1 (_wait_for) and linger
    as long as its caller asked (lingers[w], written before the part was posted)."""
    _store_release(done, w, seen)
    found = _wait_for(posted, w, seen + 1, spins)
    if found:
        _pause(lingers[w])
    return found


@njit(nogil=True, cache=CACHE)
def _pause(n):
    for _ in range(n):
        _cpu_relax()


class _Workers:
    """``count`` daemon threads; worker w runs the part published in ``jobs[w]`` when
    ``posted[w]`` becomes its next number, and sets ``done[w]`` to that number when finished.
    Counters are written by Python code holding the GIL; the job and its outcome are read only
    while holding it, so publishing the counter is the last step of a handoff."""

    def __init__(self, count: int) -> None:
        self.posted = np.zeros(count, np.int64)
        self.done = np.zeros(count, np.int64)
        self.jobs: list = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.wake = [threading.Event() for _ in range(count)]
        self.finished = [threading.Event() for _ in range(count)]
        self.lock = threading.Lock()
        self.asleep = [False] * count
        self.spins, self.linger = _calibrate()
        self.lingers = np.full(count, self.linger, np.int64)
        for w in range(count):
            threading.Thread(target=self._serve, args=(w,), name=f"fastcnn-kernels-{w}", daemon=True).start()

    def _serve(self, w: int) -> None:
        seen = 0
        while True:
            if not _finish_and_wait(self.done, self.posted, w, seen, self.spins, self.lingers):
                self.asleep[w] = True
                while self.posted[w] != seen + 1:
                    self.wake[w].wait()
                    self.wake[w].clear()
                self.asleep[w] = False
            seen += 1
            driver, lo, hi, args = self.jobs[w]
            self.jobs[w] = None
            try:
                driver(lo, hi, *args)
            except BaseException as exc:     # reported to the caller, which re-raises it
                self.errors[w] = exc
            self.finished[w].set()

    def post(self, w: int, driver: Callable, lo: int, hi: int, args: tuple, linger: int) -> int:
        self.jobs[w] = (driver, lo, hi, args)
        self.lingers[w] = linger
        self.posted[w] += 1
        if self.asleep[w]:
            self.wake[w].set()
        return int(self.posted[w])

    def join(self, w: int, number: int) -> BaseException | None:
        if not _wait_for(self.done, w, number, self.spins):
            while self.done[w] != number:
                self.finished[w].wait(0.001)   # set just before done[w] is: look again soon
                self.finished[w].clear()
        error, self.errors[w] = self.errors[w], None
        return error


def _calibrate() -> tuple[int, int]:
    """How many reads of _wait_for last about SPIN_SECONDS, and how many pauses LINGER_SECONDS, on
    this machine (best of three: a busy machine only makes the waits longer)."""
    probe = np.zeros(1, np.int64)
    _wait_for(probe, 0, 1, 1)                       # compiled (or loaded) before timing
    _pause(1)
    n = 1 << 12
    read = pause = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _wait_for(probe, 0, 1, n)
        t1 = time.perf_counter()
        _pause(n)
        t2 = time.perf_counter()
        read, pause = min(read, (t1 - t0) / n), min(pause, (t2 - t1) / n)
    return max(64, int(SPIN_SECONDS / max(read, 1e-10))), int(LINGER_SECONDS / max(pause, 1e-10))


_workers: _Workers | None = None
_starting = threading.Lock()
_fork_hook = False


def _forget_workers() -> None:
    """In a forked child (os.register_at_fork): the parent's worker threads do not exist here, and
    its start lock may have been held when it forked."""
    global _workers, _starting
    _workers, _starting = None, threading.Lock()


def _get_workers() -> _Workers:
    global _workers, _fork_hook
    workers = _workers
    if workers is None:
        with _starting:                           # two threads' first calls start one set of workers
            if _workers is None:
                if not _fork_hook and hasattr(os, "register_at_fork"):
                    # A fork hook, not a process id compared on every call: a step makes a dozen calls.
                    os.register_at_fork(after_in_child=_forget_workers)
                    _fork_hook = True
                _workers = _Workers(max(1, numba.config.NUMBA_NUM_THREADS - 1))
            workers = _workers
    return workers


def start_workers() -> None:
    """Start the worker threads now (warm_up does, so that the first batch does not), if this
    process may use more than one thread."""
    if numba.config.NUMBA_NUM_THREADS > 1:
        _get_workers()


_thread_count: Callable[[], int] | None = None


def _thread_count_reader() -> Callable[[], int]:
    """What numba.get_num_threads() returns, read without its check that Numba's threading layer has
    started: that check takes two locks, one of them a multiprocessing lock, and a training step asks
    a dozen times (0.05 ms of a step's 0.4 ms on one thread, measured on the 2-core Zen 5). The reader
    is the layer's own ``get_num_threads`` (the calling thread's count, which numba.set_num_threads
    sets), once the public call has started the layer; the public call where Numba has no such reader."""
    numba.get_num_threads()
    from numba.np.ufunc import parallel as numba_parallel
    reader = getattr(numba_parallel, "_get_num_threads", None)
    return reader if callable(reader) else numba.get_num_threads


def parts(n: int, grain: int = 1) -> int:
    """How many parts [0, n) is split into: one per thread (numba.get_num_threads()), at most
    n // grain (at least one)."""
    global _thread_count
    if _thread_count is None:
        _thread_count = _thread_count_reader()
    return max(1, min(_thread_count(), n // max(1, grain)))


_split_seconds = 0.0


def split_seconds() -> float:
    """Wall seconds this process has spent in parallel_for calls split over two or more threads:
    the rest of a run's time, one thread worked (what Amdahl's law calls serial)."""
    return _split_seconds


def parallel_for(driver: Callable, n: int, *args, grain: int = 1, linger: int = 1) -> None:
    """``driver(lo, hi, *args)`` over [0, n), split into ``parts(n, grain)`` contiguous ranges run
    at once; returns when all are done, raising the first part's exception if any failed.
    ``linger``: how many LINGER_SECONDS the workers wait after seeing their part before they take
    the GIL, which the calling thread holds until its own call has passed ``args`` to the compiled
    driver; more than 1 where that takes longer (tuples of many arrays), since a worker that finds
    the GIL taken sleeps until it is woken."""
    global _split_seconds
    if n <= 0:
        return
    k = parts(n, grain)
    if k == 1:
        driver(0, n, *args)
        return
    workers = _get_workers()
    if not workers.lock.acquire(blocking=False):   # another thread's call holds the workers
        driver(0, n, *args)
        return
    start = time.perf_counter()
    joined = False
    try:
        bounds = [i * n // k for i in range(k + 1)]
        numbers = [workers.post(w, driver, bounds[w + 1], bounds[w + 2], args, workers.linger * linger)
                   for w in range(k - 1)]
        error: BaseException | None = None
        try:
            driver(bounds[0], bounds[1], *args)
        except BaseException as exc:   # the other parts still finish: they write into the caller's arrays
            error = exc
        for w, number in enumerate(numbers):
            exc = workers.join(w, number)
            if error is None:
                error = exc
        joined = True
        if error is not None:
            raise error
    finally:
        _split_seconds += time.perf_counter() - start
        workers.lock.release()
        if not joined:                 # interrupted (Ctrl-C) while parts still run: fresh workers next time
            _retire(workers)


def _retire(workers: _Workers) -> None:
    global _workers
    if _workers is workers:
        _workers = None
