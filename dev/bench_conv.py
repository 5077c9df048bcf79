"""Times the convolution kernels against the machine's measured FMA peak, in one process.

    python dev/bench_conv.py [--threads 2] [--repeat 5] [--shapes conv2|all]

The peak is fastcnn-bench's FMA micro-benchmark (fastcnn.benchmarks.roofline.measure_fma_peak) on
--threads threads, at the vector width the kernels compile for. Each op is timed as the best of
--repeat calls, by wall clock and by process CPU time divided by the threads (the machine may be
shared: CPU time is what the op itself got). Prints GFLOP/s and both as a fraction of the peak.
To compare tiles or vector widths, run it once per setting in separate processes (FASTCNN_TILE,
FASTCNN_WIDE_VECTORS; kernels/_config.py).
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from fastcnn import kernels as nb
from fastcnn.benchmarks.roofline import measure_fma_peak
from fastcnn.convmath import conv_output_size
from fastcnn.kernels._tile import MR, NR

SHAPES = {  # name: N, C, K, H, W, R, S, stride, pad
    "conv2": (128, 32, 64, 14, 14, 3, 3, 1, 1),
    "lenet5x5": (128, 6, 16, 14, 14, 5, 5, 1, 0),
    "c3to64_32": (32, 3, 64, 32, 32, 3, 3, 1, 1),
    "c64to128_16": (32, 64, 128, 16, 16, 3, 3, 1, 1),
    "s2_3x3": (32, 64, 128, 16, 16, 3, 3, 2, 1),
    "1x1": (32, 64, 128, 16, 16, 1, 1, 1, 0),
    "stem7x7s2": (4, 3, 64, 224, 224, 7, 7, 2, 3),
}


def _best(fn, repeat, threads):
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append((time.process_time() - c0) / threads)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shapes", default="conv2")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    pk = measure_fma_peak(a.threads, repeats=a.repeat)
    peak = pk["gflops"]
    print(f"register tile {MR}x{NR}; FMA peak ({pk['vector_bits']}-bit) 1 thread {pk['one_thread_gflops']:.0f}, "
          f"{a.threads} threads {peak:.0f} GFLOP/s")
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
            print(f"{name:12s} {op:3s} {wall * 1e3:8.2f} ms wall {gw:6.0f} GFLOP/s {100 * gw / peak:4.0f} % | "
                  f"cpu {cpu * 1e3:8.2f} ms {gc:6.0f} GFLOP/s {100 * gc / peak:4.0f} %")


if __name__ == "__main__":
    main()
