"""From image bytes to the answer the page and the API give: decode (PNG or JPEG, bounded), prepare
like an MNIST digit (:func:`fastcnn.images.prepare_digit`), run :func:`fastcnn.inspect.inspect_image`.
No web code here, so the server's answers can be checked without a server."""
from __future__ import annotations

import base64
import io
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcnn.images import InputError, prepare_digit
from fastcnn.inspect import inspect_image
from fastcnn.normalization import MNIST_NORMALIZATION, Normalization

#: Images with more pixels than this are refused before they are decoded (a small file can declare a
#: huge image: a decompression bomb). A 24-megapixel photo passes.
MAX_PIXELS = 25_000_000
#: Decoded images are shrunk to fit this many pixels a side before any float copy is made: a digit
#: needs far fewer, and the memory of a request stays bounded.
WORK_SIDE = 1024
# Decoding holds up to ~4 bytes per pixel of MAX_PIXELS: at most this many at once, whatever the
# number of requests in flight.
_DECODING = threading.BoundedSemaphore(2)
_LUMA = np.array([0.299, 0.587, 0.114])
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def load_model(path, backend=None):
    """(model, info) from a model file: the one place the server loads a model. ``info``: the class
    names (None for digits), the input side, the dtype, the dataset name and the normalization."""
    from fastcnn.checkpoint import build_model, load_checkpoint
    from fastcnn.data import DATASETS, dataset_spec
    from fastcnn.normalization import data_facts

    ckpt = load_checkpoint(Path(path))
    model = build_model(ckpt, backend=backend)
    facts = data_facts(model)
    extra = ckpt.header.get("extra") or {}
    dataset = extra.get("dataset", ckpt.config.get("dataset"))
    names = facts.classes or (dataset_spec(dataset).classes if dataset in DATASETS else None)
    channels, side, _ = model.input_shape or (1, 28, 28)           # the model's own record of its input
    info = ModelInfo(names=list(names) if names else None, side=int(side), channels=int(channels),
                     dtype=np.dtype(ckpt.header["dtype"]), dataset=dataset if isinstance(dataset, str) else None,
                     normalization=facts.normalization)
    return model, info


@dataclass(frozen=True)
class ModelInfo:
    names: list[str] | None
    side: int
    channels: int
    dtype: np.dtype
    dataset: str | None
    normalization: Normalization = MNIST_NORMALIZATION


def decode_image(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> float64 (H, W) luminance in [0, 1], transparency laid over white.
    :class:`InputError` (one line) for anything else: empty, not PNG/JPEG, damaged or truncated, or
    declaring more than :data:`MAX_PIXELS` pixels (checked from the header, before decoding)."""
    from PIL import Image, ImageOps

    if not data:
        raise InputError("empty body: send the PNG or JPEG bytes of an image")
    kind = next((k for sig, k in _SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None:
        raise InputError("not a PNG or JPEG image (bad signature)")
    try:
        with _DECODING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise InputError(f"{kind} image of size {w}x{h} has no pixels")
                if w * h > MAX_PIXELS:
                    raise InputError(f"{kind} image of {w}x{h}: more than the {MAX_PIXELS:,} pixels allowed")
                if kind == "JPEG":
                    im.draft("RGB", (WORK_SIDE, WORK_SIDE))        # decode at a reduced scale where it can
                im.load()
                im = ImageOps.exif_transpose(im)
                if max(im.size) > WORK_SIDE:
                    im.thumbnail((WORK_SIDE, WORK_SIDE))
                transparent = "A" in im.mode or "transparency" in im.info
                if im.mode.startswith("I") or im.mode == "F":
                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if im.mode.startswith("I") else 1.0
                    return np.clip(arr / top, 0.0, 1.0)
                rgba = np.asarray(im.convert("RGBA" if transparent else "RGB"), dtype=np.float64) / 255.0
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{kind} image declares more than the {MAX_PIXELS:,} pixels allowed") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot decode the {kind} image: {why}") from None
    gray = rgba[..., :3] @ _LUMA
    if transparent:
        alpha = rgba[..., 3]
        gray = gray * alpha + (1.0 - alpha)
    return np.clip(gray, 0.0, 1.0)


def _first_two_conv_blocks(maps):
    """The maps the page shows: for each of the first two Conv2D layers, its output after the ReLU
    that follows (when one does before the next pool or conv), else the conv's own output."""
    out, i = [], 0
    while i < len(maps) and len(out) < 2:
        if maps[i].name == "Conv2D":
            chosen = maps[i]
            for later in maps[i + 1:]:
                if later.name in ("Conv2D", "MaxPool2D", "AvgPool2D", "Flatten"):
                    break
                if later.name == "ReLU":
                    chosen = later
                    break
            out.append(chosen)
        i += 1
    return out


def _quantised(a: np.ndarray) -> dict:
    """(K, H, W) or (H, W) values >= 0 as base64 uint8 scaled by their maximum, with that maximum."""
    a = np.asarray(a, np.float64)
    top = float(a.max()) if a.size else 0.0
    q = np.zeros(a.shape, np.uint8) if top <= 0 else np.rint(np.clip(a / top, 0, 1) * 255).astype(np.uint8)
    return {"shape": list(a.shape), "max": top, "data": base64.b64encode(q.tobytes()).decode("ascii")}


def predict_bytes(model, info: ModelInfo, data: bytes, *, detail: bool = False) -> dict:
    """The JSON-ready answer for one image's bytes; :class:`InputError` when it cannot be used.

    Always: ``classes`` (names or digits), ``probabilities`` (per class), ``predicted``, ``top`` (3
    [class, probability] pairs), ``inverted`` (dark ink on light paper was inverted) and ``input``
    (the prepared side x side image as rows of values in [0, 1], as the network sees it before
    normalisation). ``detail``: also ``maps`` (the first two convolution blocks' outputs) and
    ``saliency`` (|d logit / d pixel|), each ``{"shape", "max", "data"}`` with base64 uint8 data
    scaled to that max."""
    from fastcnn.evaluate import normalise

    if info.channels != 1:
        raise InputError(f"this model takes {info.channels}-channel images; the server prepares grayscale digits")
    prep = prepare_digit(decode_image(data), size=info.side, box=round(info.side * 20 / 28), what="image")
    x = normalise(prep.image[None], info.dtype, info.normalization)[0]
    result = inspect_image(model, x, k=3, with_saliency=detail)
    classes = info.names or [str(k) for k in range(len(result.probs))]
    answer = {
        "classes": classes,
        "probabilities": [round(float(p), 6) for p in result.probs],
        "predicted": result.predicted,
        "top": [[c, round(p, 6)] for c, p in result.top],
        "inverted": prep.inverted,
        "input": np.round(prep.image, 3).tolist(),
    }
    if detail:
        answer["maps"] = [{"layer": f"layer {m.index} {m.layer}", **_quantised(np.maximum(m.output, 0))}
                          for m in _first_two_conv_blocks(result.maps)]
        answer["saliency"] = _quantised(np.abs(result.saliency).max(axis=0))
    return answer


def sample_digit(side: int = 140) -> bytes:
    """A PNG of a hand-drawn-like 7 (dark ink on white): the warm-up request, and an example."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (side, side), 255)
    d = ImageDraw.Draw(im)
    s = side / 140
    d.line([(35 * s, 30 * s), (105 * s, 30 * s), (60 * s, 115 * s)], fill=0, width=max(1, round(12 * s)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
