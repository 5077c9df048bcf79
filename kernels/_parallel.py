"""parallel_for: the kernels' one way to use several cores.

Each driver is a serial ``@njit(nogil=True)`` function over a range of independent tasks
(``driver(lo, hi, *args)``: images, planes, chunks, elements); parallel_for splits [0, n) into one
contiguous part per thread and runs the parts at once, one in the calling thread and the others in
a small pool of Python threads. The drivers release the GIL, so the parts run in parallel.

Why not Numba's ``parallel=True`` and ``prange``: a prange driver is compiled twice over (the
parallel region as a gufunc, then the function around it, whose module links the gufunc and its
workers and optimises them all again) plus the parfor passes; the same kernels as serial drivers
compile in about half the CPU time (measured on this project's MNIST network: 30.8 s against
14.8 s), which is what a first run waits for. The work split is the same static one, every task
computes the same values wherever it runs, so results are bit-identical for any thread count.

The thread count is Numba's: ``numba.get_num_threads()`` parts at most (``NUMBA_NUM_THREADS``,
``numba.set_num_threads``), so the commands' --threads and the tests' thread settings apply as
before. The pool is created on first use (nothing happens on import) and again in a forked child.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numba

_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                   thread_name_prefix="fastcnn-kernels")
        _pool_pid = os.getpid()
    return _pool


def parts(n: int, grain: int = 1) -> int:
    """How many parts [0, n) is split into: one per thread, at most n // grain (at least one)."""
    return max(1, min(numba.get_num_threads(), n // max(1, grain)))


def parallel_for(driver: Callable, n: int, *args, grain: int = 1) -> None:
    """``driver(lo, hi, *args)`` over [0, n), split into ``parts(n, grain)`` contiguous ranges run
    at once; returns when all are done, raising the first part's exception if any failed."""
    if n <= 0:
        return
    k = parts(n, grain)
    if k == 1:
        driver(0, n, *args)
        return
    bounds = [i * n // k for i in range(k + 1)]
    pool = _executor()
    futures: list[Future] = [pool.submit(driver, bounds[i], bounds[i + 1], *args) for i in range(1, k)]
    error: BaseException | None = None
    try:
        driver(bounds[0], bounds[1], *args)
    except BaseException as exc:       # the other parts still finish: they write into the caller's arrays
        error = exc
    for f in futures:
        exc = f.exception()
        if exc is not None and error is None:
            error = exc
    if error is not None:
        raise error
