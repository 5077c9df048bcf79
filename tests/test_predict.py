"""Your own digits, read like MNIST's: a network trained here on real MNIST (a few hundred steps)
classifies MNIST test digits re-drawn the way a person would give them (black on white, 200x200,
off-centre; or with a thick pen) about as well as the originals once they are prepared
(fastcnn.images.prepare_digit), and far worse without; and ``fastcnn-eval --predict`` does the same
from PNG and JPEG files, writes the --predict-grid PNG, and accepts CHECKPOINT after the files."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastcnn.checkpoint import save_checkpoint
from fastcnn.data import load_dataset, to_float
from fastcnn.evaluate import eval_main, normalise
from fastcnn.images import _morph, prepare_digit, resize
from fastcnn.model import mnist_cnn
from fastcnn.optim import AdamW

STEPS, BATCH = 300, 128          # well trained enough to tell a misread digit from a read one
N_IMAGES = 300                   # test digits per condition
PAGE, SCALE = 200, 5             # digits drawn 140x140 on a 200x200 page
THICK = 6                        # pen radius added at the 140 px scale (1.2 px at MNIST's 28)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINE = re.compile(r"^(?P<path>.+): digit (?P<digit>\d) \(p=(?P<p>[01]\.\d\d); (?P<note>[^)]+)\)$")


@pytest.fixture(scope="session")
def trained(mnist_dir, tmp_path_factory):
    """mnist_cnn trained for STEPS batches of real MNIST (numba backend), saved as a checkpoint."""
    data = load_dataset("mnist", data_dir=mnist_dir)
    model = mnist_cnn(seed=0, backend="numba")
    opt = AdamW(model, lr=2e-3, weight_decay=1e-2)
    order = np.random.default_rng(0).permutation(len(data.y_train))
    for step in range(STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        model.train_step(to_float(data.x_train[idx]), data.y_train[idx], opt)
    path = tmp_path_factory.mktemp("trained") / "model.npz"
    save_checkpoint(path, model, None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "batchnorm": False, "dtype": "float32"})
    return SimpleNamespace(model=model, path=path, x=data.x_test[:N_IMAGES, 0] / 255.0,
                           y=data.y_test[:N_IMAGES])


def draw(digit01, rng, pen=0):
    """The digit as a person gives it: 5x larger, ``pen`` pixels thicker, black on a white
    200x200 page at a random offset, saved as 8-bit. Values in [0, 1]."""
    big = resize(digit01, (28 * SCALE, 28 * SCALE))
    if pen:
        big = _morph(big, pen, np.maximum)
    page = np.ones((PAGE, PAGE))
    top, left = rng.integers(0, PAGE - 28 * SCALE + 1, 2)
    page[top:top + 28 * SCALE, left:left + 28 * SCALE] = 1.0 - big
    return np.rint(page * 255) / 255


def accuracy(model, images01, labels):
    logits = model.forward(normalise(np.stack(images01), np.float32), training=False)
    return float((logits.argmax(axis=1) == labels).mean())


@pytest.fixture(scope="session")
def accuracies(trained):
    rng = np.random.default_rng(0)
    pages = [draw(d, rng) for d in trained.x]
    thick = [draw(d, rng, THICK) for d in trained.x]
    m, y = trained.model, trained.y
    return {
        "originals": accuracy(m, trained.x, y),
        "originals, prepared": accuracy(m, [prepare_digit(d).image for d in trained.x], y),
        "black on white 200x200, prepared": accuracy(m, [prepare_digit(p).image for p in pages], y),
        "thick strokes, prepared": accuracy(m, [prepare_digit(p).image for p in thick], y),
        "black on white 200x200, only resized": accuracy(m, [resize(p, (28, 28)) for p in pages], y),
        "black on white 200x200, resized and inverted": accuracy(m, [1 - resize(p, (28, 28)) for p in pages], y),
    }


def test_prepared_drawings_are_read_like_the_originals(accuracies):
    report = "; ".join(f"{k} {v:.1%}" for k, v in accuracies.items())
    print(f"\naccuracy on {N_IMAGES} MNIST test digits: {report}")
    original = accuracies["originals"]
    assert original >= 0.95, report
    # A few points at most (one image is a third of a point): the thick pen fills small loops.
    assert accuracies["originals, prepared"] >= original - 0.02, report
    assert accuracies["black on white 200x200, prepared"] >= original - 0.02, report
    assert accuracies["thick strokes, prepared"] >= original - 0.05, report
    # Without the preparation the same drawings are misread: the test can tell.
    assert accuracies["black on white 200x200, only resized"] < 0.5, report
    assert accuracies["black on white 200x200, resized and inverted"] < original - 0.2, report


# ---------------------------------------------------------------------------------- the command

def run(capsys, *argv):
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines(), err.splitlines()


@pytest.fixture(scope="session")
def drawn_files(trained, tmp_path_factory):
    """Twelve test digits the model reads confidently, drawn on paper and saved as PNG (even) and
    JPEG (odd); -> (paths, the model's digit for each original)."""
    folder = tmp_path_factory.mktemp("drawn")
    logits = trained.model.forward(normalise(trained.x, np.float32), training=False)
    margin = np.max(logits, 1) - np.sort(logits, 1)[:, -2]                     # > 5: p > 0.99
    sure = np.flatnonzero((logits.argmax(1) == trained.y) & (margin > 5))[:12]
    rng = np.random.default_rng(1)
    paths = []
    for k, i in enumerate(sure):
        page = Image.fromarray(np.rint(draw(trained.x[i], rng, pen=THICK * (k % 3 == 2)) * 255).astype(np.uint8))
        path = folder / f"digit{k:02d}.{'png' if k % 2 == 0 else 'jpg'}"
        page.save(path, **({"quality": 90} if k % 2 else {}))
        paths.append(path)
    return paths, [int(trained.y[i]) for i in sure]


def test_predict_reads_drawn_png_and_jpeg_files(trained, drawn_files, tmp_path, capsys):
    paths, digits = drawn_files
    grid = tmp_path / "out" / "grid.png"
    code, out, err = run(capsys, "--predict", *paths, trained.path, "--predict-grid", grid)   # CHECKPOINT last
    assert code == 0 and err == [], err
    lines = [LINE.match(line) for line in out[:-1]]
    assert all(lines), out
    assert [m["path"] for m in lines] == [str(p) for p in paths]
    assert [int(m["digit"]) for m in lines] == digits
    assert {m["note"] for m in lines} == {"light background: inverted"}
    assert out[-1] == f"wrote {grid}"
    assert grid.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in grid.parent.iterdir()] == ["grid.png"]              # no temporary file left


def test_raw_skips_the_preparation(trained, drawn_files, tmp_path, capsys):
    paths, _ = drawn_files
    code, out, err = run(capsys, trained.path, "--raw", "--predict", paths[0])
    assert code == 1 and out == []
    assert len(err) == 1 and "expected a 28x28 image, got 200x200 (drop --raw to have it resized)" in err[0]
    paper = 1.0 - trained.x[0]                                                   # 28x28, black on white
    np.save(tmp_path / "paper.npy", paper)
    code, out, err = run(capsys, trained.path, "--raw", "--predict", tmp_path / "paper.npy")
    assert code == 0 and LINE.match(out[0])["note"] == "raw, light background: add --invert"
    code, out, err = run(capsys, trained.path, "--raw", "--invert", "--predict", tmp_path / "paper.npy")
    m = LINE.match(out[0])
    assert code == 0 and m["note"] == "raw, inverted" and int(m["digit"]) == trained.y[0]


def test_forced_polarity(trained, drawn_files, capsys):
    paths, digits = drawn_files
    code, out, err = run(capsys, trained.path, "--invert", "--predict", paths[0])
    m = LINE.match(out[0])
    assert code == 0 and m["note"] == "inverted: --invert" and int(m["digit"]) == digits[0]
    code, out, err = run(capsys, trained.path, "--no-invert", "--predict", paths[0])
    assert code == 1 and len(err) == 1
    assert "no digit found" in err[0] and "inversion forced off" in err[0]


@pytest.mark.parametrize("argv, needle", [
    (["--predict", "a.png", "b.jpg"], "missing CHECKPOINT: give the model file first"),
    (["--predict", "model.npz"], "--predict needs at least one image file"),
    (["model.npz", "--raw"], "--raw needs --predict FILE"),
    (["model.npz", "--predict-grid", "g.png"], "--predict-grid needs --predict FILE"),
    (["model.npz", "--no-invert"], "--invert/--no-invert needs --predict FILE"),
    (["model.npz", "--predict", "a.png", "--predict-grid", "g.jpg"], "give a name ending in .png, not g.jpg"),
])
def test_predict_usage_errors(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2 and len(err) == 1 and needle in err[0], err
