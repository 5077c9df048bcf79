"""The checks behind :func:`fastcnn.checkpoint.restore`: whether a loaded checkpoint fits what it is
restored into, before anything is changed: the model (dtype, layer config, parameter and buffer
shapes: :func:`_check_model`), the optimizer (type, hyper-parameters, state arrays:
:func:`_check_optimizer`) and the random generators (:func:`_check_rngs`). Each raises the
``fail(why)`` it is given, a :class:`~fastcnn.checkpoint.CheckpointError` naming the file.
"""
from __future__ import annotations

import json

import numpy as np


def _check_model(ckpt, model, fail):
    """The model's live arrays (name -> array) once ``ckpt`` is found to fit ``model``."""
    from fastcnn.checkpoint import _model_dtype  # fastcnn.checkpoint imports this module
    arch = ckpt.header["architecture"]
    model_dtype = _model_dtype(model)
    if ckpt.header["dtype"] != model_dtype:
        raise fail(f"dtype differs: checkpoint {ckpt.header['dtype']}, model {model_dtype}")
    saved_config, config = arch["config"], json.loads(json.dumps(model.config()))
    if saved_config != config:
        for i, (a, b) in enumerate(zip(saved_config, config)):
            if a != b:
                where = f"at layer {i}: checkpoint has {_layer_text(a)}, model has {_layer_text(b)}"
                break
        else:
            where = f"in length: checkpoint has {len(saved_config)} layers, model has {len(config)}"
        raise fail(f"architecture differs {where}")
    live = model.state_arrays()
    saved = arch["params"]
    if set(saved) != set(live):
        raise fail(f"architecture differs: checkpoint parameters {sorted(saved)}, model {sorted(live)}")
    for name, a in live.items():
        s = ckpt.arrays[f"param/{name}"]
        if tuple(s.shape) != a.shape or s.dtype != a.dtype:
            raise fail(f"architecture differs: parameter {name} is {s.dtype}{list(s.shape)} in the "
                       f"checkpoint, {a.dtype}{list(a.shape)} in the model")
    return live


def _layer_text(entry):
    """``Conv2D(in_channels=1, ...)`` for a config entry, for messages."""
    if not isinstance(entry, dict):
        return repr(entry)[:60]
    args = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "type")
    return f"{entry.get('type')}({args})"


def _check_optimizer(ckpt, optimizer, fail, check_hparams):
    """The optimizer's ``state_dict()`` once ``ckpt`` is found to fit ``optimizer``."""
    from fastcnn.checkpoint import optimizer_info  # fastcnn.checkpoint imports this module
    saved = ckpt.header.get("optimizer")
    info = optimizer_info(optimizer)
    if saved is None:
        raise fail("checkpoint holds no optimizer state (a model-only checkpoint cannot be resumed)")
    if saved.get("name") != info["name"]:
        raise fail(f"optimizer differs: checkpoint {saved.get('name')}, run {info['name']}")
    if check_hparams:
        old = saved.get("hparams", {})
        diffs = [f"{k}={old.get(k)!r} vs {v!r}" for k, v in info["hparams"].items() if old.get(k) != v]
        if diffs:
            raise fail(f"optimizer settings differ (checkpoint vs run): {', '.join(diffs)}")
    state = optimizer.state_dict()
    for key, live in state.items():
        if key == "t":
            continue
        s = ckpt.arrays.get(f"optim/{key}")
        if s is None:
            raise fail(f"optimizer state differs: checkpoint has no {key!r}")
        if s.shape != np.shape(live) or s.dtype != np.asarray(live).dtype:
            raise fail(f"optimizer state differs: {key} is {s.dtype}{list(s.shape)} in the checkpoint, "
                       f"{np.asarray(live).dtype}{list(np.shape(live))} in the run")
    extra = {k[len("optim/"):] for k in ckpt.arrays if k.startswith("optim/")} - set(state)
    if extra:
        raise fail(f"optimizer state differs: checkpoint has extra state {sorted(extra)[:3]}")
    return state


def _check_rngs(ckpt, rngs, fail):
    saved = ckpt.header["rngs"]
    for name, gen in rngs.items():
        if not isinstance(gen, np.random.Generator):
            raise fail(f"rngs[{name!r}] is not a numpy Generator")
        if name not in saved:
            raise fail(f"checkpoint has no state for random generator {name!r} "
                       f"(it has {', '.join(sorted(saved)) or 'none'})")
        state = saved[name]
        kind = type(gen.bit_generator).__name__
        if not isinstance(state, dict) or state.get("bit_generator") != kind:
            got = state.get("bit_generator") if isinstance(state, dict) else state
            raise fail(f"random generator {name!r} differs: checkpoint {got}, run {kind}")
