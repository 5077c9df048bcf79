"""Your own images, read and prepared the way MNIST's digits were, so a network trained on MNIST
reads them like its training data.

MNIST's digits are light strokes on a black background, scaled (anti-aliased, keeping the aspect
ratio) to fit a 20 x 20 box and placed in a 28 x 28 field so that their centre of mass lies at the
field's centre. A digit drawn by hand or photographed differs in every one of those respects, and
the network, which never saw anything else, reads it badly. :func:`prepare_digit` undoes the
differences, in order:

1. **grayscale**: :func:`read_image` reduces colour to luminance (ITU-R BT.601, as Pillow's ``L``)
   and lays transparent pixels over white, as an image viewer shows them;
2. **polarity**: the background level is the median of the outermost pixel ring; a light one
   (above 0.5) means dark ink on paper, and the image is inverted;
3. **levels**: the background becomes 0 and the brightest ink 1, so grey paper or a pencil stroke
   look like MNIST's black field and white ink;
4. **crop** to the bounding box of the ink (pixels above :data:`INK_THRESHOLD`);
5. **scale** the crop to fit ``box`` x ``box`` (20 x 20 for 28 x 28), keeping its aspect ratio, with
   an anti-aliasing filter (:func:`resize`), and stretch it again so its brightest pixel is 1;
6. **centre** it in the ``size`` x ``size`` field by its centre of mass (shifted by whole pixels, as
   in MNIST, and never so far that ink falls off the edge).

Everything here is NumPy but decoding PNG and JPEG files and resizing, which Pillow (a dependency
of matplotlib, so present wherever fastcnn is installed) does. Errors raise :class:`InputError` with one line that
names the file.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcnn._files import InputFileError, open_input, read_npy_header, shown

__all__ = [
    "IMAGE_SUFFIXES",
    "INK_THRESHOLD",
    "MAX_IMAGE_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "InputError",
    "Prepared",
    "border_level",
    "prepare_digit",
    "read_colour_image",
    "read_image",
    "resize",
    "to_unit_float",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
#: The most pixels read from one image (checked from the file's header, before decoding): 4096 x 4096,
#: more than a 12-megapixel phone photo, decoded and prepared in well under 1 GB. And the largest
#: image file read.
MAX_IMAGE_PIXELS = 1 << 24
MAX_IMAGE_FILE_BYTES = 256 << 20
# A pixel counts as ink for the crop when it is this bright after step 3 (0 background, 1 ink):
# well above JPEG and scanner noise, well below the core of any stroke.
INK_THRESHOLD = 0.25
# Below this difference between the brightest pixel and the background there is no digit to find.
MIN_CONTRAST = 0.1
# MNIST's typical stroke width as a fraction of the box: the median of :func:`stroke_width` over its
# training digits, measured at the working scale below.
STROKE_WIDTH = 0.1
# Strokes are measured and thinned or thickened at this many times the box size: fine enough for
# sub-pixel widths at the final size, small enough that the cost does not depend on the input size.
_WORK = 4
_LUMA = np.array([0.299, 0.587, 0.114])          # ITU-R BT.601, as Pillow's RGB -> L
_SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",)}


class InputError(ValueError):
    """An image file cannot be used; the message (one line) names the file and says why. Control
    characters in it (a newline in a file name) are escaped, so it stays one line."""

    def __init__(self, message: str):
        super().__init__(shown(message))


@dataclass(frozen=True)
class Prepared:
    """The result of :func:`prepare_digit`.

    ``image``: (size, size) float64 in [0, 1], a light digit on a black field like MNIST's;
    ``inverted``: whether the input was inverted (dark ink on a light background);
    ``background``: the input's border level (median of the outermost pixel ring, 0 black .. 1 white);
    ``box``: (top, left, height, width) of the digit's bounding box in the input."""
    image: np.ndarray
    inverted: bool
    background: float
    box: tuple[int, int, int, int]


# ------------------------------------------------------------------------------------ reading files

def to_unit_float(arr: np.ndarray, what: str = "image", kind: str = "") -> np.ndarray:
    """Real-valued pixels -> float64 in [0, 1]: integers are taken as 0..255, floats must already
    lie in [0, 1]. :class:`InputError` (naming ``what``, and ``kind`` of data) otherwise."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "uif":
        raise InputError(f"{what}: unsupported {kind + ' ' if kind else ''}data type {arr.dtype} "
                         "(expected integers in 0..255 or floats in [0, 1])")
    if arr.size == 0:
        raise InputError(f"{what}: empty image")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            raise InputError(f"{what}: float pixels must lie in [0, 1], got {lo:g}..{hi:g} "
                             "(store 0..255 values as an integer array)")
        return arr.astype(np.float64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise InputError(f"{what}: integer pixels must lie in 0..255, got {lo}..{hi}")
    return arr.astype(np.float64) / 255.0


def _luminance(im, transparent: bool) -> np.ndarray:
    """An RGB(A) Pillow image -> float64 (H, W) luminance in [0, 1], transparency over white; one
    float64 plane and one temporary at a time (not a float copy of every channel)."""
    mode = "RGBA" if transparent else "RGB"
    arr = np.asarray(im if im.mode == mode else im.convert(mode))
    gray = np.zeros(arr.shape[:2])
    tmp = np.empty_like(gray)
    for channel, weight in enumerate(_LUMA):
        np.multiply(arr[..., channel], weight / 255.0, out=tmp)
        gray += tmp
    if transparent:
        np.multiply(arr[..., 3], 1.0 / 255.0, out=tmp)          # alpha
        gray *= tmp
        gray += 1.0
        gray -= tmp
    return np.clip(gray, 0.0, 1.0, out=gray)


def _too_large(path: Path, h: int, w: int) -> InputError:
    return InputError(f"{path}: {w}x{h} pixels is more than the {MAX_IMAGE_PIXELS:,} pixels read from one image: "
                      "scale it down (a digit needs far fewer)")


def _kind(ext: str) -> str:
    return "PNG" if ext == ".png" else "JPEG"


def _open_decoded(fh, path: Path, ext: str):
    """The PNG or JPEG image in ``fh``, decoded and turned the way the camera was held (a Pillow
    image). Its signature and pixel count (from the header) are checked before anything is decoded."""
    # Pillow decodes PNG and JPEG; it is imported here, on first use, to keep it off the import path
    # of the training command.
    from PIL import Image, ImageOps

    head = fh.read(8)
    if not head.startswith(_SIGNATURES[ext]):
        raise InputError(f"{path}: not a {_kind(ext)} image (bad signature)")
    fh.seek(0)
    try:
        with warnings.catch_warnings():          # Pillow's own, larger bound: ours below speaks first
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(fh)
    except Image.DecompressionBombError:
        raise InputError(f"{path}: more than the {MAX_IMAGE_PIXELS:,} pixels read from one image: scale it down "
                         "(a digit needs far fewer)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read {_kind(ext)}: {why}") from None
    try:
        with opened:
            w, h = opened.size
            if w * h > MAX_IMAGE_PIXELS:
                raise _too_large(path, h, w)
            im = ImageOps.exif_transpose(opened)       # photos: turn them the way the camera was held
            im.load()
            return im
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read {_kind(ext)}: {why}") from None


def _decode(fh, path: Path, ext: str) -> np.ndarray:
    """A PNG or JPEG file (open in ``fh``) -> float64 (H, W) luminance in [0, 1] (transparency laid
    over white). Its pixel count, from the header, is checked before anything is decoded."""
    im = _open_decoded(fh, path, ext)
    try:
        if im.mode.startswith("I;16") or im.mode == "I":           # 16-bit grayscale
            raw = np.asarray(im, dtype=np.float64)
            arr = np.clip(raw / 65535.0, 0.0, 1.0)
            key = im.info.get("transparency")                   # one gray level marks transparent pixels
            if isinstance(key, int):
                arr[raw == key] = 1.0
            return arr
        if im.mode == "F":
            return to_unit_float(np.asarray(im, dtype=np.float64), str(path))
        transparent = "A" in im.mode or "transparency" in im.info
        if im.mode in ("1", "L") and not transparent:
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        return _luminance(im, transparent)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read {_kind(ext)}: {why}") from None


def _open_image(path: Path, suffixes, what: str, expected: str):
    """(suffix, open file) of an image file of a known type, opened as a regular file of at most
    :data:`MAX_IMAGE_FILE_BYTES`; :class:`InputError` naming the file otherwise."""
    ext = path.suffix.lower()
    if ext not in suffixes:
        raise InputError(f"{path}: unsupported file type {ext or '(no extension)'!r}{what} (expected {expected})")
    try:
        return ext, open_input(path, MAX_IMAGE_FILE_BYTES)
    except InputFileError as exc:
        raise InputError(f"{path}: {exc}") from None


def read_colour_image(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Read a ``.png`` or ``.jpg``/``.jpeg`` file -> float64 (3, H, W) RGB in [0, 1], resized
    (bilinear) to ``size`` = (H, W) when it differs: as an image-folder dataset's images are read
    (grey images repeat their channel, transparency is dropped). Bounded as :func:`read_image`;
    :class:`InputError`, one line naming the file, for anything unusable."""
    from PIL import Image

    path = Path(path)
    ext, fh = _open_image(path, _SIGNATURES, " for a colour image", ".png, .jpg or .jpeg")
    with fh:
        im = _open_decoded(fh, path, ext)
    try:
        if im.mode.startswith("I;16"):
            im = Image.fromarray((np.asarray(im, dtype=np.uint32) >> 8).astype(np.uint8))
        im = im.convert("RGB")
        h, w = size
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        return np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255.0
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{path}: cannot read {_kind(ext)}: {why}") from None


def _read_npy(fh, path: Path) -> np.ndarray:
    """A .npy array from ``fh``, its header checked (shape, size against the file) before any data
    is allocated; never unpickles."""
    try:
        shape, dtype = read_npy_header(fh)
        if dtype.hasobject:
            raise ValueError("it holds Python objects (pickled data), not pixels")
        count = 1
        for n in shape:
            count *= n
        if count > MAX_IMAGE_PIXELS:
            raise InputError(f"{path}: its header declares {count:,} values, more than the {MAX_IMAGE_PIXELS:,} "
                             "pixels read from one image")
        left = os.fstat(fh.fileno()).st_size - fh.tell()
        if count * dtype.itemsize > left:
            raise ValueError(f"its header declares {count * dtype.itemsize} bytes of data, the file holds {left}")
        fh.seek(0)
        return np.load(fh, allow_pickle=False)
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read as a .npy array: {' '.join(str(exc).split())}") from None


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ``.png``, ``.jpg``/``.jpeg`` or ``.npy`` image -> float64 (H, W) pixels in [0, 1].

    PNG and JPEG: grayscale, RGB or palette images are reduced to luminance; transparent pixels are
    laid over white. ``.npy``: an (H, W) or (1, H, W) array of integers in 0..255 or floats in [0, 1].
    ``size`` = (H, W) requires that size. Only a regular file of at most :data:`MAX_IMAGE_FILE_BYTES`
    holding at most :data:`MAX_IMAGE_PIXELS` pixels is read (a pipe, a device or a link loop is
    refused before a byte is read, a too large image before it is decoded). Anything unusable
    raises :class:`InputError`, one line naming the file."""
    path = Path(path)
    ext, fh = _open_image(path, IMAGE_SUFFIXES, "", ".png, .jpg, .jpeg or .npy")
    with fh:
        if ext != ".npy":
            img = _decode(fh, path, ext)
            _check_size(img, path, size)
            return img
        arr = _read_npy(fh, path)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{path}: expected an HxW image (or 1xHxW), got shape "
                         f"{'x'.join(map(str, arr.shape)) or 'scalar'}")
    _check_size(arr, path, size)
    return to_unit_float(arr, str(path), ".npy")


def _check_size(arr: np.ndarray, path: Path, size: tuple[int, int] | None) -> None:
    if size is not None and arr.shape != tuple(size):
        h, w = size
        raise InputError(f"{path}: expected a {h}x{w} image, got {arr.shape[0]}x{arr.shape[1]} "
                         "(drop --raw to have it resized)")


# ------------------------------------------------------------------------------------ preparation

def border_level(image: np.ndarray) -> float:
    """The background level of an (H, W) image in [0, 1]: the median of its outermost pixel ring
    (robust to a digit that touches the edge on less than half of it)."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[0] <= 2 or image.shape[1] <= 2:
        return float(np.median(image))
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return float(np.median(ring))


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) image to ``shape`` with an anti-aliased linear filter: Pillow's bilinear
    resampling of a 32-bit float image, whose triangle filter widens with the scale when shrinking so
    that every input pixel contributes. Cost and memory grow with the pixel count only (a separable
    matrix would grow with the product of the input and output widths). Float64 out, within the
    input's range; the same shape returns a copy."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float64)
    h, w = shape
    if h < 1 or w < 1:
        raise ValueError(f"resize: target shape must be positive, got {shape}")
    if image.shape == (h, w):
        return image.copy()
    src = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    out = np.asarray(src.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    return np.clip(out, image.min(), image.max(), out=out)


def _fit(image: np.ndarray, box: int) -> np.ndarray:
    """Scale ``image`` to fit ``box`` x ``box`` keeping its aspect ratio; brightest pixel 1 (a thin
    stroke, once shrunk, is grey, while MNIST's stroke cores are white)."""
    h, w = image.shape
    scale = box / max(h, w)
    out = resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))
    return out / out.max()


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of the ink ``mask``, in pixels: twice its area over its perimeter (a stroke
    of width w and length L has area wL and perimeter about 2L)."""
    m = np.pad(np.asarray(mask, bool), 1)
    perimeter = np.count_nonzero(m[1:] != m[:-1]) + np.count_nonzero(m[:, 1:] != m[:, :-1])
    return 2.0 * np.count_nonzero(m) / perimeter if perimeter else 0.0


def _morph(image: np.ndarray, radius: int, op) -> np.ndarray:
    """Grey dilation (``op=np.maximum``) or erosion (``np.minimum``) by a disk of ``radius`` pixels."""
    h, w = image.shape
    pad = np.pad(image, radius, constant_values=0.0)
    out = image.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                op(out, pad[radius + dy:radius + dy + h, radius + dx:radius + dx + w], out=out)
    return out


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def prepare_digit(image: np.ndarray, *, size: int = 28, box: int = 20, invert: bool | None = None,
                  what: str = "image") -> Prepared:
    """Prepare one (H, W) image with pixels in [0, 1] (any size) as MNIST's digits were prepared:
    the six steps of this module's description. ``invert``: None detects the polarity from the
    border, True / False force it. Raises :class:`InputError` (naming ``what``) when there is no
    digit to find (a blank or nearly uniform image)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"{what}: expected a non-empty 2-D image, got shape {img.shape}")
    if not 1 <= box <= size:
        raise ValueError(f"box must lie in 1..size ({size}), got {box}")
    background = border_level(img)
    inverted = background > 0.5 if invert is None else bool(invert)
    img = np.array(img)                      # one working copy, changed in place (a page can be 25 megapixels)
    if inverted:
        np.subtract(1.0, img, out=img)
    lo, hi = (1.0 - background if inverted else background), float(img.max())
    if hi - lo < MIN_CONTRAST:
        forced = "" if invert is None else f", with inversion forced {'on' if inverted else 'off'}"
        raise InputError(f"{what}: no digit found: the image is blank or has almost no contrast "
                         f"(background {background:.2f}, {'darkest' if inverted else 'brightest'} pixel "
                         f"{1 - hi if inverted else hi:.2f}{forced})")
    img -= lo
    img /= hi - lo
    np.clip(img, 0.0, 1.0, out=img)
    top, left, h, w = _bounding_box(img > INK_THRESHOLD)
    digit = _fit(img[top:top + h, left:left + w], _WORK * box)
    width = stroke_width(digit > 0.5)
    radius = round((width - STROKE_WIDTH * _WORK * box) / 2)
    if radius:
        # Padded first, so that a thickened stroke can grow past the crop's edge.
        reshaped = _morph(np.pad(digit, abs(radius)), abs(radius), np.minimum if radius > 0 else np.maximum)
        if reshaped.max() > INK_THRESHOLD:             # never thin a digit away
            t, l_, hh, ww = _bounding_box(reshaped > INK_THRESHOLD)
            digit = _fit(reshaped[t:t + hh, l_:l_ + ww], _WORK * box)
    digit = _fit(digit, box)
    new_h, new_w = digit.shape
    mass = digit.sum()
    com_y = float(digit.sum(axis=1) @ np.arange(new_h)) / mass
    com_x = float(digit.sum(axis=0) @ np.arange(new_w)) / mass
    # MNIST's centres of mass sit at pixel index size/2 (14.0 for 28x28) in both directions.
    y0 = min(max(round(size / 2 - com_y), 0), size - new_h)
    x0 = min(max(round(size / 2 - com_x), 0), size - new_w)
    out = np.zeros((size, size))
    out[y0:y0 + new_h, x0:x0 + new_w] = digit
    return Prepared(out, bool(inverted), background, (top, left, h, w))
