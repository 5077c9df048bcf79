"""Tests for fastcnn.images: reading PNG / JPEG / .npy images of any size, the anti-aliased resize,
and each step of the MNIST-style preparation (polarity from the border, crop, fit into 20x20
keeping the aspect ratio, stroke width, centre of mass at the field's centre). The accuracy of a
trained network on prepared images is in tests/test_predict.py."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastcnn.data import load_dataset
from fastcnn.images import (
    INK_THRESHOLD,
    STROKE_WIDTH,
    InputError,
    border_level,
    prepare_digit,
    read_image,
    resize,
    stroke_width,
)


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """The first 100 MNIST test digits, float64 in [0, 1]."""
    return load_dataset("mnist", data_dir=mnist_dir).x_test[:100, 0] / 255.0


def ink_box(img):
    rows, cols = np.flatnonzero((img > INK_THRESHOLD).any(1)), np.flatnonzero((img > INK_THRESHOLD).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(img):
    r = np.arange(img.shape[0])
    return float(img.sum(1) @ r / img.sum()), float(img.sum(0) @ np.arange(img.shape[1]) / img.sum())


def on_paper(digit01, side=200, offset=(30, 50), scale=5):
    """A digit drawn black on white: upscaled, inverted, placed off-centre on a side x side page."""
    big = resize(digit01, (28 * scale, 28 * scale))
    page = np.ones((side, side))
    page[offset[0]:offset[0] + big.shape[0], offset[1]:offset[1] + big.shape[1]] = 1.0 - big
    return page


def corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---------------------------------------------------------------------------------------- resize

def test_resize_to_same_size_is_identity():
    img = np.random.default_rng(0).random((13, 7))
    np.testing.assert_allclose(resize(img, (13, 7)), img, rtol=0, atol=1e-12)


def test_resize_keeps_constants_and_range():
    np.testing.assert_allclose(resize(np.full((37, 91), 0.3), (5, 11)), 0.3, rtol=0, atol=1e-12)
    out = resize(np.random.default_rng(1).random((50, 40)), (120, 9))
    assert out.shape == (120, 9) and out.min() >= 0.0 and out.max() <= 1.0


def test_resize_is_anti_aliased():
    """Halving a one-pixel checkerboard gives grey everywhere; plain subsampling would give 0 or 1."""
    board = (np.indices((40, 40)).sum(0) % 2).astype(float)
    assert np.abs(resize(board, (20, 20)) - 0.5).max() < 0.15


# ---------------------------------------------------------------------------------------- reading

def test_read_png_jpeg_and_npy_of_any_size(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (45, 31), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png") * 255, gray)
    rgb = rng.integers(0, 256, (20, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), rgb @ [0.299, 0.587, 0.114] / 255, atol=1e-12)
    g16 = rng.integers(0, 65536, (9, 8)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), g16 / 65535, atol=1e-12)
    smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    Image.fromarray(smooth).save(tmp_path / "s.jpg", quality=95)
    img = read_image(tmp_path / "s.jpg")
    assert img.shape == (48, 64) and np.abs(img * 255 - smooth).max() < 8       # lossy, but close
    np.save(tmp_path / "big.npy", gray[None])
    np.testing.assert_array_equal(read_image(tmp_path / "big.npy") * 255, gray)


def test_camera_orientation_is_applied(tmp_path):
    """A phone photo stores its pixels as the sensor saw them and the rotation in EXIF: apply it."""
    img = Image.fromarray(np.full((20, 40), 200, np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6                                   # Orientation: rotate 90 degrees clockwise to view
    img.save(tmp_path / "photo.jpg", exif=exif)
    assert read_image(tmp_path / "photo.jpg").shape == (40, 20)


def test_transparent_pixels_are_laid_over_white(tmp_path):
    """A black stroke on a transparent canvas (as drawing programs save it) reads as black on white."""
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[10:20, 14:16, 3] = 255                      # opaque black stroke; the rest transparent black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    img = read_image(tmp_path / "t.png")
    assert img[0, 0] == 1.0 and img[15, 14] == 0.0


def test_transparency_of_a_16_bit_grayscale_png_is_laid_over_white(tmp_path):
    g16 = np.zeros((6, 6), np.uint16)
    g16[2:4, 2:4] = 1000                                     # a dark mark; the rest is the transparent key 0
    Image.fromarray(g16).save(tmp_path / "t16.png", transparency=0)
    img = read_image(tmp_path / "t16.png")
    assert img[0, 0] == 1.0 and img[2, 2] == pytest.approx(1000 / 65535)


def test_a_file_that_cannot_be_opened_or_declares_terabytes_is_an_input_error(tmp_path):
    import socket
    sock = socket.socket(socket.AF_UNIX)                     # opening a socket fails (ENXIO), as no permission would
    try:
        sock.bind(str(tmp_path / "sock.png"))
        with pytest.raises(InputError, match=r"sock\.png: cannot read: "):
            read_image(tmp_path / "sock.png")
    finally:
        sock.close()
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (10000000, 10000000), }"
    header = header.ljust(117) + "\n"
    (tmp_path / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
                                        + b"x" * 16)
    with pytest.raises(InputError, match=r"huge\.npy: its header declares 100,000,000,000,000 values, more than "):
        read_image(tmp_path / "huge.npy")


@pytest.mark.parametrize("name, content, why", [
    ("a.jpg", b"\x89PNG\r\n\x1a\n....", "not a JPEG image (bad signature)"),
    ("b.jpeg", b"\xff\xd8\xff\xe0 truncated", "cannot read JPEG"),
    ("c.gif", b"GIF89a", "unsupported file type '.gif'"),
])
def test_unreadable_files_name_the_file(tmp_path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(info.value).startswith(f"{path}: ") and why in str(info.value)


def test_required_size_is_enforced(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((30, 28), np.uint8))
    with pytest.raises(InputError, match=r"expected a 28x28 image, got 30x28 \(drop --raw"):
        read_image(tmp_path / "x.npy", (28, 28))


# ---------------------------------------------------------------------------------------- preparation

def test_border_level_tells_paper_from_a_black_field(digits):
    assert border_level(digits[0]) == 0.0
    page = on_paper(digits[0])
    page[:, :5] = 0.0                                  # a dark smudge along one edge
    assert border_level(page) == 1.0


def test_prepared_digit_fits_20x20_with_mass_at_the_centre():
    """A tall black-on-white bar of 300x60 pixels on a 400x500 page: inverted, 20 pixels tall,
    about 4 wide (aspect ratio kept, after stroke normalisation), centre of mass at (14, 14)."""
    page = np.full((400, 500), 0.9)                    # grey paper, dark grey ink
    page[50:350, 300:360] = 0.2
    prep = prepare_digit(page)
    assert prep.inverted and prep.background == pytest.approx(0.9)
    assert prep.box == (50, 300, 300, 60)
    assert prep.image.shape == (28, 28) and prep.image.max() == 1.0 and prep.image.min() == 0.0
    h, w = ink_box(prep.image)
    assert h == 20 and 2 <= w <= 5
    cy, cx = centre_of_mass(prep.image)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_mnist_digits_pass_nearly_unchanged(digits):
    """MNIST's own digits are already prepared: the preparation moves them little."""
    scores = [corr(prepare_digit(d).image, d) for d in digits]
    assert np.median(scores) > 0.95 and np.percentile(scores, 5) > 0.8


def test_black_on_white_page_prepares_like_the_original(digits):
    """The same digit, 5x larger, dark on white and off-centre on a page, prepares like itself."""
    scores = [corr(prepare_digit(on_paper(d)).image, prepare_digit(d).image) for d in digits]
    assert np.median(scores) > 0.95 and np.percentile(scores, 5) > 0.8
    white_on_black = prepare_digit(1.0 - on_paper(digits[0]))
    assert not white_on_black.inverted
    np.testing.assert_allclose(white_on_black.image, prepare_digit(on_paper(digits[0])).image, atol=1e-9)


def test_thick_and_thin_strokes_get_mnist_width(digits):
    """Strokes far too thick or thin come out near MNIST's typical width (STROKE_WIDTH of the 20 px
    box, 2 px), measured on the prepared 28x28 image upscaled 4x. Without the stroke step the thick
    ones measure 5-7 px and the thin ones down to 1.3 px."""
    from fastcnn.images import _morph

    def width(img28):
        return stroke_width(resize(img28, (112, 112)) > 0.5) / 4

    target = STROKE_WIDTH * 20
    for digit in digits[:20]:
        big = resize(digit, (140, 140))
        for variant in (_morph(big, 8, np.maximum), _morph(big, 3, np.minimum)):
            assert 0.5 * target <= width(prepare_digit(1.0 - variant).image) <= 2.0 * target


def test_stroke_width_of_a_bar():
    bar = np.zeros((50, 120), bool)
    bar[20:25, 10:110] = True
    assert stroke_width(bar) == pytest.approx(5, rel=0.06)


def test_polarity_can_be_forced():
    page = np.ones((60, 60))
    page[10:50, 25:32] = 0.0
    np.testing.assert_array_equal(prepare_digit(page, invert=True).image, prepare_digit(page).image)
    with pytest.raises(InputError, match="no digit found"):
        prepare_digit(page, invert=False, what="p.png")


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_blank_image_is_an_error(level):
    with pytest.raises(InputError, match=r"^p\.png: no digit found: the image is blank"):
        prepare_digit(np.full((40, 30), level), what="p.png")
