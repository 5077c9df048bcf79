"""What a training run is built from before its first step, for :class:`fastcnn.train.Trainer` and
``fastcnn-train``: the network (:func:`build_network`), checked against the data
(:func:`check_network`), its optimizer (:func:`build_optimizer`), the epoch shuffle's generator
(:func:`shuffle_generator`), the throwaway copy of network and optimizer that the warm-up runs on
(:func:`throwaway_copy`), the thread count the run uses (:func:`apply_threads`), and the memory a
training step needs at least, to compare with the memory available (:func:`step_memory_lower_bound`,
:func:`available_memory_bytes`). :mod:`fastcnn.train` re-exports the two memory functions.
"""
from __future__ import annotations

import copy

import numpy as np

from fastcnn.model import Sequential, mnist_cnn
from fastcnn.optim import SGD, AdamW
from fastcnn.summary import ShapeError, check_input, format_shape
from fastcnn.trainconfig import ConfigError, TrainConfig

__all__ = ["step_memory_lower_bound", "available_memory_bytes", "build_network", "check_network",
           "build_optimizer", "shuffle_generator", "throwaway_copy", "apply_threads"]


def step_memory_lower_bound(config: TrainConfig, image_shape: tuple[int, int, int]) -> int:
    """Bytes one training step needs at least: the first convolution's output (32 channels at the
    input's resolution) and its gradient, for ``config.batch_size`` images of ``image_shape``
    (C, H, W). The real peak is higher (the other layers, the batch itself)."""
    _, height, width = image_shape
    return 2 * config.batch_size * 32 * height * width * np.dtype(config.dtype).itemsize


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_network(config, model, image_shape, num_classes):
    """The run's network: ``model`` (a Sequential, or a name/file/config for
    :func:`fastcnn.modelio.build`), else ``config.model``; mnist-cnn is built for the data's
    channels, image size and classes, with ``config.dropout`` and ``config.batchnorm``."""
    if isinstance(model, Sequential):
        model.set_backend(config.backend)
        return model
    spec = config.model if model is None else model
    if spec == "mnist-cnn":
        c, h, w = image_shape
        if h != w:
            raise ShapeError(f"the mnist-cnn model takes square images, the data has {h}x{w}: give --model a model "
                             "file for them")
        return mnist_cnn(seed=config.seed, backend=config.backend, dtype=np.dtype(config.dtype),
                         dropout=config.dropout, batchnorm=config.batchnorm, in_channels=c, image_size=h,
                         num_classes=num_classes)
    from fastcnn.modelio import build
    return build(spec, seed=config.seed, dtype=np.dtype(config.dtype), backend=config.backend,
                 num_classes=num_classes)


def check_network(config, model, image_shape, num_classes, source) -> int:
    """The number of outputs of ``model``, the run's network, after checking that it takes images of
    ``image_shape`` and gives at least the data's ``num_classes`` outputs (else
    :class:`~fastcnn.summary.ShapeError`, naming ``source``, the data), and that its weights are of
    ``config.dtype`` (else :class:`~fastcnn.trainconfig.ConfigError`)."""
    last = check_input(model, image_shape, source)
    if last.output_shape != (last.output_shape[0],) or last.output_shape[0] < num_classes:
        raise ShapeError(f"the model's last layer gives {format_shape(last.output_shape)} outputs, {source} has "
                         f"{num_classes} classes: end the model with a Linear of {num_classes} out_features")
    if any(a.dtype != np.dtype(config.dtype) for a in model.state_arrays().values()):
        raise ConfigError("dtype", f"dtype is {config.dtype} but the model's weights are not: build it with "
                                   f"dtype={config.dtype}")
    return int(last.output_shape[0])


def build_optimizer(config, model):
    if config.optimizer == "sgd":
        return SGD(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return AdamW(model, lr=config.lr, weight_decay=config.weight_decay)


def shuffle_generator(seed) -> np.random.Generator:
    """The epoch shuffle's generator (:attr:`~fastcnn.runstate.RunState.shuffle_rng`) for a run seeded ``seed``."""
    # mnist_cnn uses children 0 (init) and 1 (dropout) of SeedSequence(seed); the shuffle
    # takes child 2, an independent stream.
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])


def throwaway_copy(model, optimizer):
    """Deep copies of (model, optimizer), the copy's optimizer bound to the copy's model."""
    return copy.deepcopy((model, optimizer))


def apply_threads(config, stack):
    """Apply ``config.threads`` (Numba threads, or BLAS threads for the numpy backend), undone when
    ``stack`` closes; return the thread count in effect."""
    if config.backend == "numba":
        import numba
        if config.threads is not None:
            stack.callback(numba.set_num_threads, numba.get_num_threads())
            numba.set_num_threads(config.threads)
        return numba.get_num_threads()
    from threadpoolctl import threadpool_info, threadpool_limits
    if config.threads is not None:
        stack.enter_context(threadpool_limits(limits=config.threads, user_api="blas"))
        return config.threads
    counts = [info.get("num_threads") for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else None
