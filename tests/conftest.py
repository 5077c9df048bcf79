"""Shared pytest fixtures for the fastcnn test suite."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastcnn.testing import real_mnist_dir


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with the real MNIST IDX files (see :func:`fastcnn.testing.real_mnist_dir`)."""
    return real_mnist_dir(Path(__file__).resolve().parents[1])
