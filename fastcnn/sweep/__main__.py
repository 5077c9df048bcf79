"""``python -m fastcnn.sweep``: the same as ``fastcnn-sweep``."""
import sys

from fastcnn.sweep.cli import sweep_main

if __name__ == "__main__":       # Dask's spawned workers import this module too: they must not run a sweep
    sys.exit(sweep_main())
