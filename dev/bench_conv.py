"""Times the convolution kernels against the machine's measured FMA peak, in one process.

    python dev/bench_conv.py [--threads 2] [--repeat 5] [--shapes conv2|all]

The peak is kernels._tile.fma_chains (independent multiply-add chains at the tile's vector width)
on 1 thread and on every thread at once. Each op is timed as the best of --repeat calls, by wall
clock and by process CPU time divided by the threads (the machine may be shared: CPU time is what
the op itself got). Prints GFLOP/s and the fraction of the peak of the same clock.
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

from fastcnn import kernels as nb
from fastcnn.convmath import conv_output_size
from fastcnn.kernels._config import slp_compilation
from fastcnn.kernels._tile import NR, PEAK_CHAINS, fma_chains

SHAPES = {  # name: N, C, K, H, W, R, S, stride, pad
    "conv2": (128, 32, 64, 14, 14, 3, 3, 1, 1),
    "lenet5x5": (128, 6, 16, 14, 14, 5, 5, 1, 0),
    "c3to64_32": (32, 3, 64, 32, 32, 3, 3, 1, 1),
    "c64to128_16": (32, 64, 128, 16, 16, 3, 3, 1, 1),
    "s2_3x3": (32, 64, 128, 16, 16, 3, 3, 2, 1),
    "1x1": (32, 64, 128, 16, 16, 1, 1, 1, 0),
    "stem7x7s2": (4, 3, 64, 224, 224, 7, 7, 2, 3),
}


@njit(parallel=True)
def _chains_parallel(n, xs, y):
    for t in prange(xs.shape[0]):
        fma_chains(n, xs[t], y)


def _best(fn, repeat, threads):
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append((time.process_time() - c0) / threads)
    return min(wall), min(cpu)


def peak(threads: int, repeat: int) -> tuple[float, float]:
    n = 2_000_000
    xs = np.full((threads, PEAK_CHAINS * NR), 0.5, np.float32)
    y = np.full(NR, 0.999, np.float32)
    with slp_compilation():
        _chains_parallel(10, xs, y)
    wall, cpu = _best(lambda: _chains_parallel(n, xs, y), repeat, threads)
    flops = 2.0 * PEAK_CHAINS * NR * n * threads
    return flops / wall / 1e9, flops / cpu / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shapes", default="conv2")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    p1w, p1c = peak(1, a.repeat)
    pw, pc = peak(a.threads, a.repeat)
    print(f"peak 1 thread {p1w:.0f} (wall) {p1c:.0f} (cpu) GFLOP/s; {a.threads} threads {pw:.0f} (wall) "
          f"{pc:.0f} (cpu) GFLOP/s")
    names = list(SHAPES) if a.shapes == "all" else a.shapes.split(",")
    rng = np.random.default_rng(0)
    dt = np.dtype(a.dtype)
    for name in names:
        N, C, K, H, W, R, S, st, pd = SHAPES[name]
        P, Q = conv_output_size(H, W, R, S, (st, st), (pd, pd))
        x = rng.standard_normal((N, C, H, W)).astype(dt)
        w = rng.standard_normal((K, C, R, S)).astype(dt)
        b = rng.standard_normal(K).astype(dt)
        dy = rng.standard_normal((N, K, P, Q)).astype(dt)
        flops = 2.0 * N * K * C * R * S * P * Q
        ops = {
            "fwd": lambda x=x, w=w, b=b, st=st, pd=pd: nb.conv2d_forward(x, w, b, (st, st), (pd, pd)),
            "dw": lambda x=x, w=w, dy=dy, st=st, pd=pd: nb.conv2d_backward(dy, x, w, (st, st), (pd, pd),
                                                                          need_dx=False),
            "dw+dx": lambda x=x, w=w, dy=dy, st=st, pd=pd: nb.conv2d_backward(dy, x, w, (st, st), (pd, pd)),
        }
        res = {}
        for op, fn in ops.items():
            fn()
            res[op] = _best(fn, a.repeat, a.threads)
        res["dx"] = (res["dw+dx"][0] - res["dw"][0], res["dw+dx"][1] - res["dw"][1])
        for op in ("fwd", "dw", "dx"):
            wall, cpu = res[op]
            gw, gc = flops / wall / 1e9, flops / cpu / 1e9
            print(f"{name:12s} {op:3s} {wall * 1e3:8.2f} ms wall {gw:6.0f} GFLOP/s {100 * gw / pw:4.0f} % | "
                  f"cpu {cpu * 1e3:8.2f} ms {gc:6.0f} GFLOP/s {100 * gc / pc:4.0f} %")


if __name__ == "__main__":
    main()
