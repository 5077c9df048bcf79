"""Tests for fastcnn-eval (fastcnn.evaluate), run in-process on an untrained model: test-set
evaluation on real MNIST with both PNGs, --predict on .npy and .png files, and one-line errors
(exit 1) for bad inputs and checkpoints, exit 2 for usage errors."""
from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from fastcnn.checkpoint import save_checkpoint
from fastcnn.data import DATASETS, FASHION_MNIST, load_dataset, to_float
from fastcnn.evaluate import normalise, read_image
from fastcnn.model import mnist_cnn

from helpers import run_eval as run
from helpers import write_custom_dataset, write_idx

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINE = re.compile(r"^(?P<path>.+): digit (?P<digit>\d) \(p=(?P<p>[01]\.\d\d); (?P<note>[^)]+)\)$")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = mnist_cnn(seed=0, backend="numpy")
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    save_checkpoint(path, model, None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "batchnorm": False, "dtype": "float32"})
    return path


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


@pytest.mark.parametrize("folder,needle,status", [
    ("none", "--data-dir", 2),                               # not a folder: a usage error, as in fastcnn-train
    ("empty", "lacks t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz", 1)])
def test_missing_data_is_one_line_error(ckpt, tmp_path, capsys, monkeypatch, folder, needle, status):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)     # nothing to fall back on
    (tmp_path / "empty").mkdir()
    code, _out, err = run(capsys, ckpt, "--dataset", "custom", "--data-dir", tmp_path / folder,
                         "--backend", "numpy", "--out", tmp_path / "o")
    assert_one_error(code, err, needle, status=status)
    if folder == "none":
        assert err[0].endswith(f"{tmp_path / 'none'}': no such directory; pass the folder that holds the IDX files")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------- the test set the model was trained on

def write_test_split(folder, n=40, hw=(28, 28), labels=None, n_labels=None, seed=0):
    """t10k-images/t10k-labels IDX files (raw) in ``folder``; returns the folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n, *hw))
    labels = np.arange(n) % 10 if labels is None else labels
    write_idx(folder / "t10k-images-idx3-ubyte", images)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[:n_labels])
    return folder


def model_file(path, dataset, source_dir):
    """A model-only checkpoint, as --save-model writes it, trained on ``dataset`` from ``source_dir``."""
    save_checkpoint(path, mnist_cnn(seed=0, backend="numpy"), None, epoch=1, history=[], config={}, rngs={},
                    model_kwargs={"dropout": 0.5, "batchnorm": False, "dtype": "float32", "in_channels": 1,
                                  "image_size": 28, "num_classes": 10},
                    extra={"dataset": dataset, "source_dir": str(source_dir)})
    return path


def fake_fashion(monkeypatch, folder):
    """Fashion-MNIST-shaped test files in ``folder``, with the registry's checksums made theirs."""
    from fastcnn import data as data_module
    write_test_split(folder, labels=np.arange(40) % 10)
    digests = {name: hashlib.sha256((folder / name[:-3]).read_bytes()).hexdigest()
               for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    spec = data_module.FASHION_MNIST
    spec = dataclasses.replace(spec, test_images=dataclasses.replace(spec.test_images,
                                                                     digest=digests[spec.test_images.name]),
                               test_labels=dataclasses.replace(spec.test_labels,
                                                               digest=digests[spec.test_labels.name]))
    monkeypatch.setitem(data_module.DATASETS, "fashion-mnist", spec)
    return folder


# (name, dataset the model was trained on, how to lay out the folders -> extra argv, expected exit,
#  pattern of stdout's first line or of the one error line)
EVAL_DATA_CASES = [
    ("custom-saved-folder-t10k-only", "custom", lambda t, mp: write_test_split(t / "trained") and [], 0,
     r"test loss \d\.\d+, accuracy \d+\.\d+% \(\d+/40 correct\) on custom from {t}/trained"),
    ("fashion-saved-folder", "fashion-mnist", lambda t, mp: fake_fashion(mp, t / "trained") and [], 0,
     r"test loss .* \(\d+/40 correct\) on fashion-mnist from {t}/trained"),
    ("explicit-dir-is-used", "custom", lambda t, mp: (write_test_split(t / "trained"),
                                                      write_test_split(t / "other", n=30)) and
     ["--data-dir", t / "other"], 0, r"test loss .* \(\d+/30 correct\) on custom from {t}/other"),
    ("explicit-dir-is-binding", "custom", lambda t, mp: (write_test_split(t / "trained"), (t / "empty").mkdir())
     and ["--data-dir", t / "empty"], 1,
     (r"fastcnn-eval: error: --data-dir {t}/empty lacks t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz: "
     r"put the custom dataset files there \(gzipped or not\) or pass another folder")),
    ("images-do-not-fit", "custom", lambda t, mp: write_test_split(t / "trained", hw=(16, 16)) and [], 1,
     (r"fastcnn-eval: error: pass --data-dir with the custom test files the model was trained on: {t}/trained "
     r"holds 16x16 test images, the model takes 28x28")),
    ("labels-do-not-fit", "custom", lambda t, mp: write_test_split(t / "trained", labels=np.arange(40) % 13) and [],
     1, (r"fastcnn-eval: error: pass --data-dir with the custom test files the model was trained on: {t}/trained "
        r"has test labels up to 12, the model has 10 classes \(0\.\.9\)")),
    ("count-mismatch", "custom", lambda t, mp: write_test_split(t / "trained", n_labels=39) and [], 1,
     (r"fastcnn-eval: error: {t}/trained/t10k-images-idx3-ubyte, {t}/trained/t10k-labels-idx1-ubyte: count "
     r"mismatch: 40 images but 39 labels")),
    ("custom-folder-gone", "custom", lambda t, mp: [], 1,
     (r"fastcnn-eval: error: pass --data-dir DIR with the test files of the custom dataset the model was trained "
     r"on from {t}/trained, which no longer holds its test files")),
]


@pytest.mark.parametrize("name, dataset, layout, code, pattern", EVAL_DATA_CASES, ids=[c[0] for c in EVAL_DATA_CASES])
def test_eval_uses_the_data_the_model_was_trained_on(tmp_path, capsys, monkeypatch, name, dataset, layout, code,
                                                     pattern):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a download was attempted"))
    model = model_file(tmp_path / "model.npz", dataset, tmp_path / "trained")
    extra = layout(tmp_path, monkeypatch)
    got, out, err = run(capsys, model, *extra, "--backend", "numpy", "--out", tmp_path / "eval")
    assert got == code, (out, err)
    line = out[0] if code == 0 else (err[0] if len(err) == 1 else err)
    assert re.fullmatch(pattern.replace("{t}", re.escape(str(tmp_path))), line), line
    if code == 0:
        assert err == []
        assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:8] == PNG_SIGNATURE
    assert_only_remembered(tmp_path / "xdg")                       # no download


def assert_only_remembered(cache_root, *sources):
    """The cache holds nothing but IDX files remembered from a verified data folder (equal to the file of
    that name in one of ``sources``, when given): no download, no temporary file."""
    import filecmp
    names = {f.name for spec in DATASETS.values() for f in spec.files}
    names |= {n[:-3] for n in names}
    for p in (q for q in Path(cache_root).rglob("*") if q.is_file()):
        assert p.name in names, p
        if sources:
            assert any((d / p.name).is_file() and filecmp.cmp(p, d / p.name, shallow=False) for d in sources), p


def test_fashion_model_predicts_fashion_class_names(tmp_path, capsys, monkeypatch):
    model = model_file(tmp_path / "model.npz", "fashion-mnist", tmp_path / "trained")
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((28, 28), np.uint8))
    code, out, err = run(capsys, model, "--backend", "numpy", "--raw", "--predict", image)
    assert code == 0, err
    m = re.fullmatch(re.escape(str(image)) + r": class (\d) \((.+)\) \(p=[01]\.\d\d; raw\)", out[0])
    assert m and m.group(2) == FASHION_MNIST.classes[int(m.group(1))], out


def test_single_class_test_labels_warn(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    write_test_split(tmp_path / "trained", labels=np.full(40, 3))
    model = model_file(tmp_path / "model.npz", "custom", tmp_path / "trained")
    code, _out, err = run(capsys, model, "--backend", "numpy", "--out", tmp_path / "eval")
    assert code == 0
    warning = (f"fastcnn-eval: warning: {tmp_path}/trained/t10k-labels-idx1-ubyte: all 40 test labels are 3: "
               "a single class (a wrong or truncated label file?)")
    assert err == [warning]


def test_trained_model_is_evaluated_on_its_own_data_folder(tmp_path, capsys, monkeypatch):
    """fastcnn-train --save-model records the folder; fastcnn-eval MODEL, from elsewhere, reads it."""
    from fastcnn.cli import train_main
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = write_custom_dataset(tmp_path / "digits", n_train=64, n_test=32)
    monkeypatch.chdir(tmp_path)
    assert train_main(["--dataset", "custom", "--data-dir", "digits", "--epochs", "1", "--batch-size", "16",
                       "--backend", "numpy", "--quiet", "--save-model", "m.npz", "--plots-dir", "plots"]) == 0
    capsys.readouterr()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run(capsys, tmp_path / "m.npz", "--backend", "numpy")
    assert code == 0, err
    assert re.fullmatch(r"test loss .* \(\d+/32 correct\) on custom from " + re.escape(str(folder)), out[0]), out


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


def test_an_output_path_that_cannot_be_a_folder_is_refused_first(ckpt, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("")
    code, out, err = run(capsys, ckpt, "--backend", "numpy", "--out", taken / "sub")
    assert_one_error(code, err, f"choose another --out: '{taken}' is a file, not a folder", status=2)
    code, out, err = run(capsys, ckpt, "--backend", "numpy", "--predict", tmp_path / "x.npy",
                         "--predict-grid", taken / "grid.png")
    assert_one_error(code, err, f"choose another --predict-grid folder: '{taken}' is a file", status=2)
    assert out == [] and taken.read_text() == ""


def test_help_exits_0(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and any("--predict" in line for line in out)


def test_mnist_model_reads_the_folder_its_training_used(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)         # and nothing in the cache: no fallback
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a download was attempted"))
    model = model_file(tmp_path / "model.npz", "mnist", mnist_dir)
    code, out, err = run(capsys, model, "--backend", "numpy", "--limit-test", 200, "--out", tmp_path / "eval")
    assert code == 0, err
    assert re.fullmatch(r"test loss .* \(\d+/200 correct\) on mnist from " + re.escape(str(mnist_dir))
                        + r" \(first 200 images\)", out[0]), out
    assert_only_remembered(tmp_path / "xdg", mnist_dir)


def test_predict_alone_needs_no_data_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    model = model_file(tmp_path / "model.npz", "custom", tmp_path / "gone")
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((28, 28), np.uint8))
    code, out, err = run(capsys, model, "--backend", "numpy", "--raw", "--predict", image)
    assert code == 0 and err == [] and re.fullmatch(re.escape(str(image)) + r": .* \(p=[01]\.\d\d; raw\)", out[0]), out
