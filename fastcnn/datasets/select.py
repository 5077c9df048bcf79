"""One entry point for every data source, as the commands' ``--dataset`` names them."""
from __future__ import annotations

from pathlib import Path

from fastcnn.data import DATASETS, load_dataset

__all__ = ["SOURCES", "detect_source", "load_any"]

#: ``--dataset`` choices: the IDX datasets, then image folders, ``.npz`` arrays and CIFAR-10.
SOURCES = (*DATASETS, "custom", "folder", "npz", "cifar10")


def detect_source(data_dir) -> str | None:
    """The source ``data_dir`` holds, judged by its layout: ``"npz"`` for a ``.npz`` file, ``"folder"``
    for ``train/<class>/`` and ``test/<class>/`` folders, ``"cifar10"`` for CIFAR-10's archive or
    batch files; None for anything else (IDX files are then assumed)."""
    from fastcnn.datasets.cifar import _source_in
    from fastcnn.datasets.folder import is_folder_layout

    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if path.is_file() and path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir() and is_folder_layout(path):
        return "folder"
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")) or path.is_dir() and _source_in(path):
        return "cifar10"
    return None


def load_any(name, data_dir=None, *, download=True, image_size=None, skip_bad=False, splits=("train", "test")):
    """Load ``name`` (one of :data:`SOURCES`) -> :class:`fastcnn.data.Dataset`. ``image_size`` and
    ``skip_bad`` apply to image folders; ``splits`` to the IDX datasets (the others read both)."""
    if name == "folder":
        from fastcnn.datasets.folder import load_folder
        if data_dir is None:
            raise ValueError("an image folder dataset needs --data-dir DIR (DIR/train/<class>/, DIR/test/<class>/)")
        return load_folder(data_dir, image_size, skip_bad=skip_bad)
    if name == "npz":
        from fastcnn.datasets.arrays import load_arrays
        if data_dir is None:
            raise ValueError("a .npz dataset needs --data-dir FILE.npz")
        return load_arrays(data_dir)
    if name == "cifar10":
        from fastcnn.datasets.cifar import load_cifar10
        return load_cifar10(data_dir, download=download)
    return load_dataset(name, data_dir=data_dir, download=download, splits=splits)
