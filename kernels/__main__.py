"""Fill Numba's on-disk cache with fastcnn's kernels ahead of time (a container or CI image build):

    NUMBA_CACHE_DIR=/opt/numba-cache python -m fastcnn.kernels --dtype float32 --batchnorm

compiles what training the built-in MNIST network needs (with and without --batchnorm, which
changes the first layer's kernels) for each --dtype and --optimizer, so the first run in the image
loads everything in about a second. The cache is keyed on the CPU's name and features: fill it on
the CPU the image will run on (not with NUMBA_CPU_NAME=generic, which loses the CPU's register
tile). Copying a filled cache into an image needs Numba 0.68 or later, whose cache entries are
stamped with their source's hash instead of its modification time.
"""
from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastcnn.kernels",
                                     description="Compile fastcnn's kernels into Numba's on-disk cache ahead of time.")
    parser.add_argument("--dtype", action="append", choices=["float32", "float64"],
                        help="parameter dtype to compile for (repeatable; default float32)")
    parser.add_argument("--optimizer", action="append", choices=["adamw", "sgd"],
                        help="optimizer step to compile (repeatable; default adamw)")
    parser.add_argument("--batchnorm", action="store_true",
                        help="also the network with BatchNorm2D after each convolution (fastcnn-train --batchnorm)")
    args = parser.parse_args(argv)
    from fastcnn._process import tune_process
    tune_process()                     # before any kernel import: the commands' CPU features (the cache key)
    from fastcnn.kernels import _config
    from fastcnn.kernels._warmup import warm_up
    from fastcnn.model import mnist_cnn
    if not _config.CACHE:
        print("error: Numba's cache is off here (FASTCNN_NUMBA_CACHE=0 or FASTCNN_TILE set): unset them to fill it",
              file=sys.stderr)
        return 2
    if tuple(int(v) for v in numba.__version__.split(".")[:2]) < (0, 68):
        print(f"note: Numba {numba.__version__} stamps cache entries with the sources' modification times; a "
              "copied cache needs Numba >= 0.68", file=sys.stderr)
    t0 = time.perf_counter()
    for dtype in args.dtype or ["float32"]:
        for batchnorm in (False, True) if args.batchnorm else (False,):
            for optimizer in args.optimizer or ["adamw"]:
                model = mnist_cnn(dtype=np.dtype(dtype), batchnorm=batchnorm, backend="numba")
                seconds = warm_up(model, optimizer=optimizer)
                print(f"{dtype}{' batchnorm' if batchnorm else ''} {optimizer}: {seconds:.1f} s")
    print(f"filled Numba's cache in {time.perf_counter() - t0:.1f} s (CPU: {_config.compiled_features()[:60]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
