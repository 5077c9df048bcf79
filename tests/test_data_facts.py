"""A model's normalization and class names: one place (the checkpoint's ``data`` object, the
model's ``.data``), written alike by fastcnn.save and fastcnn-train, read by data_facts() in
fastcnn-eval, --predict, fastcnn-serve's load_model and fastcnn-export."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fastcnn
from fastcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastcnn.evaluate import eval_main, normalise
from fastcnn.images import read_image
from fastcnn.model import mnist_cnn
from fastcnn.normalization import MNIST_NORMALIZATION, DataFacts, Normalization, data_facts

from helpers import write_custom_dataset

FACTS = DataFacts(Normalization((0.5,), (0.25,)), tuple(f"c{k}" for k in range(10)))


def _saved(tmp_path):
    model = mnist_cnn(seed=3, backend="numpy")
    model.data = FACTS.to_dict()
    return fastcnn.save(model, tmp_path / "saved.npz")


def test_fastcnn_save_and_load_carry_the_facts(tmp_path):
    path = _saved(tmp_path)
    assert data_facts(load_checkpoint(path)) == FACTS == data_facts(fastcnn.load(path))
    plain = fastcnn.save(mnist_cnn(seed=3, backend="numpy"), tmp_path / "plain.npz")
    assert data_facts(fastcnn.load(plain)) == DataFacts(MNIST_NORMALIZATION, None)      # what old models had


def test_a_checkpoint_with_malformed_facts_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    save_checkpoint(path, mnist_cnn(seed=0), None, epoch=0, history=[], config={}, rngs={},
                    data={"normalization": {"mean": "x", "std": [1.0]}})
    with pytest.raises(CheckpointError, match="malformed header: 'data'"):
        load_checkpoint(path)


def test_trained_model_carries_the_facts_in_data_not_extra(tmp_path, capsys, monkeypatch):
    from fastcnn.cli import train_main
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    write_custom_dataset(tmp_path / "data", n_train=64, n_test=32)
    argv = ["--dataset", "custom", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "32",
            "--backend", "numpy", "--quiet", "--plots-dir", str(tmp_path / "plots"),
            "--save-model", str(tmp_path / "m.npz"), "--checkpoint", str(tmp_path / "c.npz")]
    assert train_main(argv) == 0, capsys.readouterr().err
    for name in ("m.npz", "c.npz"):
        ckpt = load_checkpoint(tmp_path / name)
        assert not {"normalization", "classes"} & set(ckpt.header["extra"])
        assert data_facts(ckpt).normalization != MNIST_NORMALIZATION            # the custom data's own
        assert data_facts(ckpt) == data_facts(fastcnn.load(tmp_path / name))


def test_eval_predict_uses_the_saved_facts(tmp_path, capsys):
    path = _saved(tmp_path)
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255
    np.save(tmp_path / "x.npy", img)
    assert eval_main([str(path), "--predict", str(tmp_path / "x.npy"), "--raw", "--backend", "numpy"]) == 0
    line = capsys.readouterr().out.strip()
    probs = fastcnn.load(path, backend="numpy").predict_proba(
        normalise(read_image(tmp_path / "x.npy")[None], np.float32, FACTS.normalization))
    k = int(probs[0].argmax())
    assert re.fullmatch(rf".*x\.npy: class {k} \(c{k}\) \(p={probs[0, k]:.2f}; raw\)", line), line


def test_serve_uses_the_saved_facts(tmp_path):
    pytest.importorskip("PIL")
    from fastcnn.serve.predict import load_model, predict_bytes, sample_digit
    model, info = load_model(_saved(tmp_path), backend="numpy")
    assert info.normalization == FACTS.normalization and info.names == list(FACTS.classes)
    answer = predict_bytes(model, info, sample_digit())
    x = normalise(np.asarray(answer["input"], np.float64)[None], info.dtype, FACTS.normalization)
    expected = model.predict_proba(x)[0]
    assert answer["classes"] == list(FACTS.classes)
    np.testing.assert_allclose(answer["probabilities"], expected, atol=2e-3)    # inputs rounded to 3 places


def test_export_writes_the_saved_facts(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from fastcnn.export import export_main
    assert export_main([str(_saved(tmp_path)), str(tmp_path / "m.safetensors")]) == 0
    with safetensors.safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
    assert data_facts(json.loads(meta["fastcnn.data"])) == FACTS
