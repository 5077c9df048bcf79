"""Shared pytest fixtures for the fastcnn test suite."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The project's shared MNIST copy: ``<repo>/../shared/data/mnist`` (see shared/data/README.md).
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the four real MNIST IDX files: ``$FASTCNN_DATA_DIR`` when it names an existing
    folder, else the shared copy at ``../shared/data/mnist``; skips the test when neither exists."""
    env = os.environ.get("FASTCNN_DATA_DIR")
    if env and Path(env).expanduser().is_dir():
        return Path(env).expanduser()
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST not available: {SHARED_MNIST} does not exist and FASTCNN_DATA_DIR "
                    "does not name an existing folder")
    return SHARED_MNIST
