"""Per-channel pixel statistics: what :func:`fastcnn.data.to_float` subtracts and divides by.

Statistics are on the [0, 1] scale (uint8 pixels divided by 255; float images are taken as they
are). MNIST keeps the constants it has always used (:data:`MNIST_NORMALIZATION`), so its runs are
unchanged; every other dataset computes its own from its training split
(:meth:`Normalization.from_images`), and the model carries them, with its class names, in its
``data`` object (saved in the checkpoint, read by :func:`data_facts`) so evaluation and prediction
scale images exactly as training did."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MNIST_NORMALIZATION", "DataFacts", "Normalization", "data_facts"]

_CHUNK_IMAGES = 4096          # images per chunk of the float64 sums: bounded memory for any N


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` (tuples of floats, one per channel, on the [0, 1] scale)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        mean = tuple(float(m) for m in np.atleast_1d(self.mean))
        std = tuple(float(s) for s in np.atleast_1d(self.std))
        if not mean or len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"mean must be finite and std finite and positive, got {mean}, {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def kwargs(self) -> dict:
        """``mean=`` and ``std=`` for :func:`fastcnn.data.to_float` (plain floats for one channel, so
        a one-channel run scales exactly as with scalar constants)."""
        if self.channels == 1:
            return {"mean": self.mean[0], "std": self.std[0]}
        return {"mean": self.mean, "std": self.std}

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d) -> Normalization:
        """The inverse of :meth:`to_dict`; ValueError for anything else."""
        if not isinstance(d, dict) or set(d) != {"mean", "std"} or not all(
                isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                for v in d.values()):
            raise ValueError(f"a normalization is {{'mean': [...], 'std': [...]}}, got {d!r:.80}")
        return cls(tuple(d["mean"]), tuple(d["std"]))

    @classmethod
    def from_images(cls, images) -> Normalization:
        """Mean and standard deviation of each channel of ``images`` (N, C, H, W): uint8 pixels are
        divided by 255, floats are used as they are. Summed in float64 in chunks of images; a channel
        that is constant gets std 1 (it carries no information, and nothing is divided by zero)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be (N, C, H, W) with N > 0, got shape {images.shape}")
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        c = images.shape[1]
        total, total_sq, count = np.zeros(c), np.zeros(c), 0
        for i in range(0, len(images), _CHUNK_IMAGES):
            chunk = images[i:i + _CHUNK_IMAGES].astype(np.float64) / scale
            total += chunk.sum(axis=(0, 2, 3))
            total_sq += np.square(chunk).sum(axis=(0, 2, 3))
            count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        mean = total / count
        var = np.maximum(total_sq / count - mean ** 2, 0.0)
        std = np.sqrt(var)
        std[std < 1e-6] = 1.0
        return cls(tuple(np.round(mean, 6)), tuple(np.round(std, 6)))


#: MNIST's training-set pixel mean and standard deviation, the constants fastcnn has always used.
MNIST_NORMALIZATION = Normalization((0.1307,), (0.3081,))


@dataclass(frozen=True)
class DataFacts:
    """What a model knows of the images it takes: the ``normalization`` they are scaled by and the
    names of its ``classes`` (None when they have none but their numbers)."""
    normalization: Normalization = MNIST_NORMALIZATION
    classes: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        """The model's ``data`` object: ``{"normalization": {...}, "classes": [...]}`` (no classes when None)."""
        return {"normalization": self.normalization.to_dict(),
                **({"classes": list(self.classes)} if self.classes else {})}


def data_facts(source) -> DataFacts:
    """The :class:`DataFacts` of ``source``: a :class:`~fastcnn.model.Sequential` (its ``data``), a
    :class:`~fastcnn.checkpoint.Checkpoint` (its header's ``data`` object, which ``fastcnn.save`` and
    ``fastcnn-train`` write alike) or such a dict. The one reader of these facts: evaluation,
    prediction, the server and export all use it. A model saved before models carried them was
    trained on MNIST-scaled images: MNIST's constants, no class names. ValueError for facts of
    another form."""
    data = getattr(source, "data", source)
    data = data if isinstance(data, dict) else {}
    norm, classes = data.get("normalization"), data.get("classes")
    if classes is not None and not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"classes must be a list of names, got {classes!r:.60}")
    return DataFacts(MNIST_NORMALIZATION if norm is None else Normalization.from_dict(norm),
                     tuple(classes) if classes else None)
