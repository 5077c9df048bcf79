"""``python -m fastcnn.benchmarks``: the same as ``fastcnn-bench`` (see :mod:`fastcnn.benchmarks.cli`)."""
import sys

from fastcnn.benchmarks.cli import bench_main

if __name__ == "__main__":
    sys.exit(bench_main())
