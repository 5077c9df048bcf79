"""fastcnn: a small CNN library whose convolution and pooling exist twice behind one interface,
as a clear NumPy reference (:mod:`fastcnn.reference`) and as Numba-JIT parallel kernels
(:mod:`fastcnn.kernels`) that must agree with it and beat it.

The public names below are imported on first use (PEP 562), so ``import fastcnn.cli`` stays
light: ``fastcnn-train`` installs its signal handlers before NumPy is imported, and a Ctrl-C in
its first moments ends with one line, not a traceback. Importing fastcnn changes nothing outside
it: the commands tune glibc's malloc in their own processes (:func:`tune_malloc`, which a script
may call too). The fusion internals (``FusedLayer``, ``Identity``) live in :mod:`fastcnn.layers`."""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "get_backend": "fastcnn.backend",
    **dict.fromkeys(("AvgPool2D", "BatchNorm2D", "Conv2D", "ConvReLUMaxPool2D", "Dropout", "DropoutLinear", "Flatten",
                     "Linear", "MaxPool2D", "ReLU", "ReLUMaxPool2D"), "fastcnn.layers"),
    "Layer": "fastcnn.layerbase",
    "softmax_cross_entropy": "fastcnn.losses",
    **dict.fromkeys(("Sequential", "fuse", "mnist_cnn"), "fastcnn.model"),
    **dict.fromkeys(("DataError", "load_dataset", "load_mnist", "to_float"), "fastcnn.data"),
    **dict.fromkeys(("save", "load"), "fastcnn.modelio"),
    **dict.fromkeys(("lenet5", "cifar_cnn"), "fastcnn.zoo"),
    "SGD": "fastcnn.optim",
    "AdamW": "fastcnn.optim",
    **dict.fromkeys(("Trainer", "TrainConfig", "ConfigError", "TrainingDiverged", "TrainingInterrupted"),
                    "fastcnn.train"),
    **dict.fromkeys(("CheckpointError", "save_checkpoint", "load_checkpoint", "build_model"), "fastcnn.checkpoint"),
    "InputError": "fastcnn.images",
    "tune_malloc": "fastcnn._memory",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastcnn' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
