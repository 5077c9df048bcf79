"""fastcnn's and PyTorch's training steps alternated two ways in one process: batch by batch, each
step after a 20 ms pause, and in blocks of BLOCK batches (a pause and one untimed step at each
switch), the cycles interleaved so that both ways see the same machine.

    FASTCNN_DATA_DIR=../shared/data/mnist /tmp/torchvenv/bin/python dev/alternation.py [BLOCK] [CYCLES]

Needs PyTorch (a virtual environment with torch and fastcnn, as for `fastcnn-bench --compare
torch`). Prints each framework's mean (and median) step per way and fastcnn / torch: why
`fastcnn-bench` alternates in blocks (a step right after a pause pays for the idle machine).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from fastcnn._process import tune_process
from fastcnn.benchmarks.measurement import fastcnn_step, mnist_batches
from fastcnn.benchmarks.torch_compare import TorchSide
from fastcnn.data import load_dataset

PAUSE = 0.02


def main() -> None:
    block = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    tune_process()
    data = load_dataset("mnist", data_dir=os.environ.get("FASTCNN_DATA_DIR"), download=False)
    batches = mnist_batches(data, 3 + 2 * block)
    threads = int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)
    steps = {"fastcnn": fastcnn_step("numba", 0), "torch": TorchSide(threads).train_step(0)}
    for x, y in batches[:3]:
        for step in steps.values():
            step(x, y)
    timed = batches[3:]
    times: dict = {(way, name): [] for way in ("batch", "block") for name in steps}
    for _ in range(cycles):
        for x, y in timed:                               # batch by batch, each step after the pause
            for name, step in steps.items():
                time.sleep(PAUSE)
                t = time.perf_counter()
                step(x, y)
                times["batch", name].append(time.perf_counter() - t)
        for name, step in steps.items():                 # in blocks
            for b0 in range(0, len(timed), block):
                time.sleep(PAUSE)
                step(*timed[b0])
                for x, y in timed[b0:b0 + block]:
                    t = time.perf_counter()
                    step(x, y)
                    times["block", name].append(time.perf_counter() - t)
    for way in ("batch", "block"):
        f, p = times[way, "fastcnn"], times[way, "torch"]
        print(f"{way:5s}  fastcnn {1e3 * np.mean(f):6.2f} ms (median {1e3 * np.median(f):.2f})  "
              f"torch {1e3 * np.mean(p):6.2f} ms (median {1e3 * np.median(p):.2f})  "
              f"fastcnn / torch {np.mean(f) / np.mean(p):.3f}")


if __name__ == "__main__":
    main()
