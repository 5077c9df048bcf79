"""What every reader returns: a :class:`fastcnn.data.Dataset` with images (N, C, H, W), int64
labels, class names and the training split's per-channel statistics, checked the same way."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fastcnn.data import DataError, Dataset, DataWarning
from fastcnn.normalization import Normalization

MAX_CLASSES = 100_000            # more classes than any image dataset has: a label beyond is a damaged file


def make_dataset(x_train, y_train, x_test, y_test, name, source, class_names=None, normalization=None) -> Dataset:
    """Check two splits (either may be None) and wrap them: images 4-D with the same C x H x W in both
    splits, labels 1-D integers in 0..classes-1, as many as images; a split without images is an error,
    a training split of a single class a :class:`DataWarning`. The normalization is computed from the
    training split (unless given: a reader that cached it)."""
    splits = {}
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x is None:
            splits[split] = (None, None)
            continue
        if x.ndim != 4:
            raise DataError(f"{source}: {split} images must be 4-D (N, C, H, W), got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: {split} labels must be 1-D, one per image: {len(x)} images, "
                            f"labels of shape {y.shape}")
        if len(x) == 0:
            raise DataError(f"{source}: the {split} split holds no images")
        if 0 in x.shape[1:]:
            raise DataError(f"{source}: {split} images of shape {x.shape[1:]}: every axis needs at least 1")
        if y.dtype.kind not in "iu":
            raise DataError(f"{source}: {split} labels must be integers, got {y.dtype}")
        top = len(class_names) if class_names is not None else MAX_CLASSES
        if y.min() < 0 or y.max() >= top:
            raise DataError(f"{source}: {split} label {int(y.min() if y.min() < 0 else y.max())} out of range "
                            f"0..{top - 1}")
        if split == "train" and len(y) > 1 and y.min() == y.max():
            warnings.warn(f"{source}: all {len(y)} training labels are {int(y[0])}: a single class",
                          DataWarning, stacklevel=3)
        splits[split] = (x, y.astype(np.int64))
    (xi, yi), (xt, yt) = splits["train"], splits["test"]
    if xi is not None and xt is not None and xi.shape[1:] != xt.shape[1:]:
        raise DataError(f"{source}: image shape mismatch: train {xi.shape[1:]} vs test {xt.shape[1:]} (C, H, W)")
    norm = normalization if normalization is not None else Normalization.from_images(xi) if xi is not None else None
    names = tuple(class_names) if class_names is not None else None
    return Dataset(xi, yi, xt, yt, name, Path(source).absolute(), class_names=names, normalization=norm)
