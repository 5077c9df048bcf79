"""Where the commands that take a model (``fastcnn-export MODEL``, ``fastcnn-bench --model``) get it:
a built-in name of :data:`fastcnn.zoo.MODELS`, a checkpoint, or a JSON model file holding a
``Sequential.config()`` list (random weights from seed 0: an architecture to time or to try).
:func:`_load_model` is the one place that reads a model file."""
from __future__ import annotations

import json
from pathlib import Path

from fastcnn.model import Sequential

#: A model file larger than this is not a hand-written architecture: refused before it is read.
MAX_CONFIG_BYTES = 1 << 20


class ModelSourceError(ValueError):
    """A model argument that names no built-in model and no readable model file."""


def _load_config(path: Path) -> Sequential:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelSourceError(f"give a model file under {MAX_CONFIG_BYTES >> 20} MiB: {str(path)!r} is larger")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"write {str(path)!r} as JSON holding a list of layers: {exc}") from None
    return Sequential.from_config(config, seed=0)


def _load_model(path: str | Path) -> Sequential:
    """The model saved at ``path``: a ``.json`` model config (random weights) or a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"give a built-in model name or an existing model file: {str(path)!r} "
                               f"{'is not a file' if path.exists() else 'does not exist'}")
    if path.suffix.lower() == ".json":
        return _load_config(path)
    from fastcnn.checkpoint import build_model, load_checkpoint
    return build_model(load_checkpoint(path))


def resolve_model(text: str) -> tuple[str, Sequential]:
    """(a display name, the model) for a command's MODEL argument: a name of
    :data:`fastcnn.zoo.MODELS` (seed 0) or a model file."""
    from fastcnn.zoo import MODELS
    if text in MODELS:
        return text, MODELS[text](seed=0)
    path = Path(text)
    if not path.exists() and path.suffix == "":
        raise ModelSourceError(f"choose a built-in model ({', '.join(MODELS)}) or a model file: {text!r} is "
                               f"neither")
    return path.name, _load_model(path)
