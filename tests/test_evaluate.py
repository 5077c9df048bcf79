"""Tests for fastcnn-eval (fastcnn.evaluate), run in-process on an untrained model: test-set
evaluation on real MNIST with both PNGs, --predict on .npy and .png files, and one-line errors
(exit 1) for bad inputs and checkpoints, exit 2 for usage errors."""
from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib import image as mpimg

from fastcnn.checkpoint import save_checkpoint
from fastcnn.data import load_dataset, to_float
from fastcnn.evaluate import eval_main, normalise, read_image
from fastcnn.model import mnist_cnn

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINE = re.compile(r"^(?P<path>.+): digit (?P<digit>\d) \(p=(?P<p>[01]\.\d\d); (?P<note>[^)]+)\)$")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = mnist_cnn(seed=0, backend="numpy")
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    save_checkpoint(path, model, None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "batchnorm": False, "dtype": "float32"})
    return path


def run(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines(), err.splitlines()


def assert_one_error(code, err, *needles, status=1):
    assert code == status
    assert len(err) == 1 and err[0].startswith("fastcnn-eval: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


# --------------------------------------------------------------------------------- the test set

def test_test_set_evaluation_writes_both_pngs(ckpt, mnist_dir, tmp_path, capsys):
    out_dir = tmp_path / "eval"
    code, out, err = run(capsys, ckpt, "--data-dir", mnist_dir, "--limit-test", 500, "--backend", "numpy",
                         "--out", out_dir, "--top", 12)
    assert code == 0, err
    m = re.match(r"test loss (\d+\.\d+), accuracy (\d+\.\d+)% \((\d+)/500 correct\)", out[0])
    assert m, out
    errors = 500 - int(m.group(3))
    assert out[2] == f"wrote {out_dir / 'most_confident_errors.png'} ({min(12, errors)} of {errors} errors)"
    for name in ("confusion_matrix.png", "most_confident_errors.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out_dir.iterdir()) == ["confusion_matrix.png", "most_confident_errors.png"]


@pytest.mark.parametrize("folder,needle", [("none", "no such directory"), ("empty", "files not found")])
def test_missing_data_is_one_line_error(ckpt, tmp_path, capsys, monkeypatch, folder, needle):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)     # nothing to fall back on
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, ckpt, "--dataset", "custom", "--data-dir", tmp_path / folder,
                         "--backend", "numpy", "--out", tmp_path / "o")
    assert_one_error(code, err, needle, "--no-test")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- --predict

@pytest.fixture(scope="module")
def digit(mnist_dir):
    return load_dataset("mnist", data_dir=mnist_dir).x_test[0, 0]          # a 7, uint8 28x28


def test_predict_npy_and_png_agree(ckpt, digit, tmp_path, capsys):
    files = {"u8.npy": digit, "f.npy": (digit / 255.0)[None], "i64.npy": digit.astype(np.int64)}
    for name, arr in files.items():
        np.save(tmp_path / name, arr)
    mpimg.imsave(tmp_path / "rgb.png", np.stack([digit] * 3, axis=-1))       # exact 8-bit RGB(A) copy
    mpimg.imsave(tmp_path / "gray.png", digit, cmap="gray")                  # colormap: may be 1/255 off
    paths = [tmp_path / n for n in (*files, "rgb.png", "gray.png")]
    code, out, err = run(capsys, ckpt, "--backend", "numpy", "--predict", *paths)
    assert code == 0 and err == []
    matches = [LINE.match(line) for line in out]
    assert all(matches) and [m["path"] for m in matches] == [str(p) for p in paths], out
    assert len({(m["digit"], m["p"]) for m in matches[:4]}) == 1              # same pixels, same answer


def test_png_and_npy_read_like_training(digit, tmp_path):
    mpimg.imsave(tmp_path / "d.png", np.stack([digit] * 3, axis=-1))
    img = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(normalise(img[None], np.float32), to_float(digit[None, None]))
    mpimg.imsave(tmp_path / "g.png", digit, cmap="gray")                     # gray colormap -> luminance
    assert np.abs(read_image(tmp_path / "g.png") * 255 - digit).max() <= 1.0 + 1e-9
    np.save(tmp_path / "d.npy", digit)
    np.testing.assert_array_equal(read_image(tmp_path / "d.npy") * 255, digit)


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    return path


BAD_FILES = [
    ("short.npy", np.zeros((27, 28), np.uint8), "expected a 28x28 image, got 27x28 (drop --raw"),
    ("rgb.npy", np.zeros((3, 28, 28)), "got shape 3x28x28"),
    ("nan.npy", np.full((28, 28), np.nan), "contains NaN or infinite values"),
    ("big.npy", np.full((28, 28), 255.0), "float pixels must lie in [0, 1]"),
    ("neg.npy", np.full((28, 28), -1, np.int16), "integer pixels must lie in 0..255"),
    ("cplx.npy", np.zeros((28, 28), complex), "unsupported .npy data type complex128"),
    ("obj.npy", np.array([None] * 784, object).reshape(28, 28), "cannot read as a .npy array"),
    ("notes.txt", b"hello", "unsupported file type '.txt'"),
    ("broken.png", PNG_SIGNATURE + b"\x00\x00\x00\rIHDR garbage", "cannot read PNG"),
    ("fake.png", b"GIF89a....", "not a PNG image"),
]


@pytest.mark.parametrize("name, content, why", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_predict_file_is_one_line_error(ckpt, tmp_path, capsys, name, content, why):
    path = _write(tmp_path, name, content)
    code, out, err = run(capsys, ckpt, "--backend", "numpy", "--raw", "--predict", path)
    assert_one_error(code, err, f"{path}: ", why)
    assert out == []


def test_wrong_size_png_and_partial_success(ckpt, digit, tmp_path, capsys):
    mpimg.imsave(tmp_path / "big.png", np.zeros((32, 32)), cmap="gray")
    np.save(tmp_path / "ok.npy", digit)
    code, out, err = run(capsys, ckpt, "--backend", "numpy", "--raw", "--predict", tmp_path / "big.png",
                         tmp_path / "ok.npy", tmp_path / "missing.npy")
    assert code == 1
    assert len(out) == 1 and LINE.match(out[0])["path"] == str(tmp_path / "ok.npy")
    assert len(err) == 2 and "got 32x32" in err[0] and "missing.npy: no such file" in err[1]


# ----------------------------------------------------------------------- checkpoints and usage

def test_damaged_checkpoint_is_one_line_error(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    code, out, err = run(capsys, bad, "--backend", "numpy", "--predict", tmp_path / "x.npy")
    assert_one_error(code, err, str(bad), "damaged or truncated")
    code, out, err = run(capsys, tmp_path / "absent.ckpt", "--backend", "numpy")
    assert_one_error(code, err, "absent.ckpt: no such file")


@pytest.mark.parametrize("argv", [[], ["c.ckpt", "--top", "0"], ["c.ckpt", "--backend", "gpu"],
                                  ["c.ckpt", "--bogus"]])
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert_one_error(code, err, status=2)


def test_help_exits_0(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and any("--predict" in line for line in out)
