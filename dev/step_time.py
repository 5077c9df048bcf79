"""Times the MNIST network's training step, for comparing two versions of fastcnn side by side.

    python dev/step_time.py THREADS [STEPS]

mnist_cnn(seed=0), AdamW, batches of 128 real MNIST images ($FASTCNN_DATA_DIR): 3 untimed steps,
then STEPS (default 60) timed ones; prints ms per step and the process's CPU/wall. Run it from
two virtual environments in turn (old, new, old, new, ...) and compare within the series; the
performance log's step tables come from it. Besides a competing program (`python3 -c "while 1:
pass"`) it shows how the threads behave when a core is taken.
"""
from __future__ import annotations

import os
import resource
import sys
import time

import numba

try:                                  # the commands' process setup, where this version has it
    from fastcnn._process import tune_process
    tune_process()
except ImportError:
    pass
from fastcnn.data import load_mnist, to_float
from fastcnn.model import mnist_cnn
from fastcnn.optim import AdamW


def main() -> None:
    threads = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    numba.set_num_threads(threads)
    data = load_mnist(os.environ.get("FASTCNN_DATA_DIR"), download=False)
    n = 128 * (steps + 3)
    x, y = to_float(data.x_train[:n]), data.y_train[:n]
    model = mnist_cnn(seed=0)
    optimizer = AdamW(model)
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, n, 128)]
    for xb, yb in batches[:3]:
        model.train_step(xb, yb, optimizer)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for xb, yb in batches[3:]:
        model.train_step(xb, yb, optimizer)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"threads={threads} ms/step={1000 * wall / steps:.2f} cpu/wall={cpu / wall:.2f}")


if __name__ == "__main__":
    main()
