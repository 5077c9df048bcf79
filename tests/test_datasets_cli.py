"""fastcnn-train and fastcnn-eval on image folders, .npz arrays and CIFAR-10 files: the source is
detected from --data-dir, colour flows through, and evaluation scales images as training did."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from test_datasets_cifar import _files, _write_folder

from fastcnn.checkpoint import load_checkpoint
from fastcnn.cli import train_main
from fastcnn.evaluate import eval_main
from fastcnn.normalization import data_facts


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rgb_folder(root, n=12, side=8):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", n // 2)):
        for k, cls in enumerate(("red", "green", "blue")):
            for i in range(count):
                img = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
                img[..., k] += 150                          # a class is its dominant colour
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")


def _train_and_eval(capsys, data, *extra):
    args = ["--data-dir", str(data), "--epochs", "2", "--batch-size", "8", "--backend", "numpy", "--quiet",
            "--checkpoint", "c.ckpt", "--plots-dir", "plots", *extra]
    assert train_main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    ckpt = load_checkpoint("c.ckpt")
    assert eval_main(["c.ckpt", "--backend", "numpy", "--out", "eval"]) == 0
    out = capsys.readouterr().out.splitlines()
    return ckpt, out


def test_rgb_folder_trains_and_evaluates(env, capsys):
    _rgb_folder(env / "colours")
    ckpt, out = _train_and_eval(capsys, env / "colours")
    facts = data_facts(ckpt)
    assert ckpt.header["extra"]["dataset"] == "folder" and facts.classes == ("blue", "green", "red")
    assert ckpt.input_shape == (3, 8, 8) and facts.normalization.channels == 3
    acc = ckpt.history[-1]["test_acc"]
    assert re.fullmatch(rf"test loss .*, accuracy {100 * acc:.2f}% .* on folder from .*colours", out[0]), out
    assert acc > 0.9                                            # colour is easy to tell apart


def test_npz_trains_and_evaluates(env, capsys):
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2
    x = rng.integers(0, 100, (60, 10, 10, 1), dtype=np.uint8) + (y * 120).astype(np.uint8)[:, None, None, None]
    np.savez(env / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    ckpt, out = _train_and_eval(capsys, env / "d.npz")
    assert ckpt.header["extra"]["dataset"] == "npz"
    assert f"accuracy {100 * ckpt.history[-1]['test_acc']:.2f}%" in out[0]


def test_cifar10_folder_trains(env, capsys):
    files, _ = _files(n=8)
    _write_folder(env / "cifar-10-batches-bin", files)
    ckpt, out = _train_and_eval(capsys, env)
    assert data_facts(ckpt).classes[0] == "airplane" and ckpt.input_shape[0] == 3
    assert "on cifar10 from" in out[0]


def test_folder_errors_are_one_line(env, capsys):
    _rgb_folder(env / "colours")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(env / "colours" / "train" / "red" / "odd.png")
    assert train_main(["--data-dir", "colours", "--epochs", "1", "--backend", "numpy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "images differ in size" in err[0] and "--image-size" in err[0], err
    (env / "colours" / "train" / "red" / "odd.png").write_bytes(b"garbage")
    code = train_main(["--data-dir", "colours", "--epochs", "1", "--backend", "numpy", "--skip-bad", "--quiet",
                       "--plots-dir", "plots", "--batch-size", "8"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: skipped 1 unreadable image file" in err and "odd.png" in err


def test_predict_meets_a_colour_image_in_colour(env, capsys):
    _rgb_folder(env / "colours")
    _train_and_eval(capsys, env / "colours")
    img = np.zeros((20, 20, 3), np.uint8)
    img[..., 0] = 200                                            # red, larger than the training images
    Image.fromarray(img).save(env / "red.png")
    assert eval_main(["c.ckpt", "--backend", "numpy", "--predict", "red.png", "--predict-grid", "g.png"]) == 0
    out = capsys.readouterr().out
    assert "red.png: class 2 (red)" in out and "colour, resized" in out and (env / "g.png").is_file()


def test_eval_and_resume_read_a_folder_as_training_did(env, capsys):
    _rgb_folder(env / "colours")
    Image.fromarray(np.zeros((11, 9, 3), np.uint8)).save(env / "colours" / "test" / "red" / "odd.png")
    ckpt, out = _train_and_eval(capsys, env / "colours", "--image-size", "8x8")      # eval: no --image-size
    assert ckpt.header["extra"]["image_size"] == [8, 8] and "on folder from" in out[0]
    assert train_main(["--resume", "c.ckpt", "--epochs", "3", "--backend", "numpy", "--quiet",
                       "--plots-dir", "plots"]) == 0, capsys.readouterr().err
