"""``python -m fastcnn``: the same as ``fastcnn-train`` (see :mod:`fastcnn.cli`)."""
import sys

from fastcnn.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
