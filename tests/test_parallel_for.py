"""kernels._parallel.parallel_for: every task runs exactly once whatever the thread count, a part's
exception reaches the caller, concurrent callers and a forked child get correct results, and a
worker that went to sleep wakes for the next call."""
from __future__ import annotations

import multiprocessing
import threading
import time

import numba
import numpy as np
import pytest
from numba import njit

from fastcnn.kernels import _parallel
from fastcnn.kernels._parallel import parallel_for, parts


@njit(nogil=True)
def _count(lo, hi, hits, value):
    for i in range(lo, hi):
        hits[i] += value


@njit(nogil=True)
def _fail_from(lo, hi, first_bad):
    if hi > first_bad:
        raise ValueError("part failed")


@pytest.fixture
def all_threads():
    before = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    yield numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(before)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 1001])
@pytest.mark.parametrize("grain", [1, 4, 1000])
def test_every_task_runs_once(all_threads, n, grain):
    hits = np.zeros(max(n, 1), np.int64)
    for _ in range(50):                 # back-to-back calls: the spinning handoff, many times over
        parallel_for(_count, n, hits, 1, grain=grain)
    assert (hits[:n] == 50).all()
    assert parts(n, grain) == max(1, min(all_threads, n // grain))


def test_an_exception_in_any_part_reaches_the_caller(all_threads):
    with pytest.raises(ValueError, match="part failed"):
        parallel_for(_fail_from, 100, 99)              # only the last part fails
    hits = np.zeros(100, np.int64)
    parallel_for(_count, 100, hits, 1)                 # and the workers still serve the next call
    assert (hits == 1).all()


def test_a_sleeping_worker_wakes_for_the_next_call(all_threads):
    hits = np.zeros(10, np.int64)
    parallel_for(_count, 10, hits, 1)
    time.sleep(50 * _parallel.SPIN_SECONDS)            # longer than any worker spins: it blocks
    parallel_for(_count, 10, hits, 1)
    assert (hits == 2).all()


def test_a_longer_linger_is_passed_to_the_workers_and_changes_no_result(all_threads):
    hits = np.zeros(1000, np.int64)
    parallel_for(_count, 1000, hits, 1, linger=3)
    assert (hits == 1).all()
    if all_threads > 1:
        workers = _parallel._get_workers()
        assert workers.lingers[0] == 3 * workers.linger
        parallel_for(_count, 1000, hits, 1)
        assert workers.lingers[0] == workers.linger and (hits == 2).all()


def test_concurrent_callers_each_get_their_whole_range(all_threads):
    results = [np.zeros(5000, np.int64) for _ in range(4)]

    def call(k):
        for _ in range(40):
            parallel_for(_count, 5000, results[k], k + 1)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, hits in enumerate(results):
        assert (hits == 40 * (k + 1)).all()


def _child(queue):
    hits = np.zeros(300, np.int64)
    parallel_for(_count, 300, hits, 1)
    queue.put(int(hits.sum()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_starts_its_own_workers(all_threads):
    parallel_for(_count, 10, np.zeros(10, np.int64), 1)      # the parent's workers exist
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 300


def test_parts_follow_numba_set_num_threads_in_each_thread(all_threads):
    """parts() reads the thread count past numba.get_num_threads()'s start-up check: it must still be
    the calling thread's count, whatever numba.set_num_threads set, here and in another thread."""
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        numba.set_num_threads(threads)
        assert parts(1000) == numba.get_num_threads() == threads
    numba.set_num_threads(1)
    seen = []
    other = threading.Thread(target=lambda: seen.append((parts(1000), numba.get_num_threads())))
    other.start()
    other.join()
    assert seen == [(numba.config.NUMBA_NUM_THREADS,) * 2] and parts(1000) == 1
