"""A CPU meter that sees other programs: whether a timed span had the cores it needed.

fastcnn-bench marks every measurement with it, and fastcnn-train adds a note after a run whose
epochs shared the cores. A process's own CPU/wall ratio is a poor sign of that: Numba's and BLAS's
worker threads spin while they wait, so a run slowed threefold by another program can still show
CPU/wall near its thread count. /proc/stat counts what every program used, the hypervisor's steal
time included; off Linux the meter falls back on the process's own ratio.
"""
from __future__ import annotations

import os
import time

from fastcnn.backend import usable_cpus

#: Cores used on average by other programs, beyond the ones the measurement left spare, that make
#: it contended.
CONTENDED_OTHER_LOAD = 0.3
#: Without /proc/stat: contended when this process's CPU/wall is below this many times its threads.
CONTENDED_CPU_RATIO = 0.8


def machine_busy_seconds() -> float | None:
    """CPU seconds all programs have used since boot (/proc/stat: user, nice, system, irq, softirq
    and steal, the last being time the hypervisor gave to other machines); None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = [int(v) for v in fields[1:9]]
        return (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class CpuMeter:
    """Wall seconds, this process's CPU seconds, and the CPU seconds every other program used
    meanwhile, over a ``with`` block (or from :meth:`start` to :meth:`stop`). ``summary(threads)``
    says whether the span was contended: other programs used more cores than the ``threads`` it
    left spare (or, without /proc/stat, this process got well below ``threads`` CPU seconds per
    second)."""

    def start(self) -> CpuMeter:
        self.busy0, self.cpu0, self.wall0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def stop(self) -> CpuMeter:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        busy1 = machine_busy_seconds()
        self.others = None if busy1 is None or self.busy0 is None else max(0.0, busy1 - self.busy0 - self.cpu)
        return self

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self, threads: int) -> dict:
        wall = max(self.wall, 1e-9)
        cpu_ratio = self.cpu / wall
        other = None if self.others is None else self.others / wall
        if other is not None:
            contended = other > max(0, usable_cpus() - threads) + CONTENDED_OTHER_LOAD
        else:
            contended = cpu_ratio < CONTENDED_CPU_RATIO * threads
        return {"cpu_seconds_per_second": cpu_ratio, "other_load": other, "threads": threads,
                "contended": bool(contended)}
