"""fastcnn: a small CNN library whose convolution and pooling exist twice behind one interface,
as a clear NumPy reference (:mod:`fastcnn.reference`) and as Numba-JIT parallel kernels
(:mod:`fastcnn.kernels`) that must agree with it and beat it."""
from fastcnn._memory import tune_malloc
from fastcnn.backend import get_backend
from fastcnn.data import DataError, load_dataset, load_mnist, to_float
from fastcnn.layers import (
    AvgPool2D,
    BatchNorm2D,
    Conv2D,
    ConvReLUMaxPool2D,
    Dropout,
    Flatten,
    FusedLayer,
    Identity,
    Layer,
    Linear,
    MaxPool2D,
    ReLU,
    ReLUMaxPool2D,
)
from fastcnn.losses import softmax_cross_entropy
from fastcnn.model import Sequential, fuse, mnist_cnn
from fastcnn.optim import SGD, AdamW

__version__ = "0.1.0"

tune_malloc()

__all__ = ["get_backend", "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "ReLU", "Flatten", "Dropout",
           "Linear", "BatchNorm2D", "Identity", "FusedLayer", "ReLUMaxPool2D", "ConvReLUMaxPool2D",
           "softmax_cross_entropy", "Sequential", "fuse", "mnist_cnn", "SGD", "AdamW",
           "load_dataset", "load_mnist", "to_float", "DataError"]
