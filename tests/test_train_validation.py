"""Training with a validation split, early stopping and augmentation: what is scored when, which
model is kept, and that an interrupted run resumes bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn.train import ConfigError, TrainConfig, Trainer, best_model_path, format_epoch

from helpers import synthetic

BASE = dict(batch_size=16, backend="numpy", quiet=True, warmup=False, seed=3)


def _weights(trainer):
    return {k: v.copy() for k, v in trainer.state.model.state_arrays().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_validation_split_scores_val_per_epoch_and_test_once():
    t = Trainer(TrainConfig(epochs=2, val_split=0.25, **BASE), synthetic())
    state = t.run()
    assert t.data_info["val_images"] == 32 and len(t.x_train) == 96 and state.steps_per_epoch == 6
    assert all("val_loss" in m and "test_loss" not in m for m in state.history)
    assert set(state.final_test) == {"test_loss", "test_acc"}
    assert "val " in format_epoch(state.history[0], 2) and "test" not in format_epoch(state.history[0], 2)
    both = Trainer(TrainConfig(epochs=1, val_split=32, test_each_epoch=True, **BASE), synthetic()).run()
    assert {"val_loss", "test_loss"} <= set(both.history[0])
    plain = Trainer(TrainConfig(epochs=1, **BASE), synthetic()).run()
    assert "val_loss" not in plain.history[0] and plain.final_test is None


def test_bad_settings():
    with pytest.raises(ConfigError, match="early_stop"):
        TrainConfig(early_stop=2).resolved()
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="rotate").resolved()
    with pytest.raises(ConfigError, match="val_split"):
        Trainer(TrainConfig(val_split=128, **BASE), synthetic())


def _scripted(trainer, losses):
    """Make the validation loss of epoch e equal losses[e - 1] (training itself is real)."""
    real = trainer.evaluate

    def evaluate(split="test"):
        loss, acc, sec = real(split)
        return (losses[trainer.state.epoch], acc, sec) if split == "val" else (loss, acc, sec)
    trainer.evaluate = evaluate
    return trainer


LOSSES = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def test_early_stopping_keeps_the_best_epoch_and_resumes_exactly(tmp_path):
    cfg = TrainConfig(epochs=7, val_split=0.25, early_stop=2, **BASE)
    a = _scripted(Trainer(cfg, synthetic()), LOSSES)
    kept = {}
    a.callbacks.append(lambda st, m: kept.__setitem__(st.epoch, _weights(a)))
    state = a.run()
    assert state.epoch == 4 and a.stopped_early                      # epochs 3 and 4 were no better than 2
    assert state.early_stopping["best_epoch"] == 2 and state.early_stopping["stopped_early"]
    assert _same(_weights(a), kept[2]) and not _same(kept[2], kept[4])

    # The same run, interrupted after epoch 3 (best: epoch 2, kept beside the checkpoint), then resumed.
    path = tmp_path / "run.ckpt"
    b = _scripted(Trainer(cfg, synthetic()), LOSSES)

    def stop_after_3(st, m):
        if st.epoch == 3:
            b.save_checkpoint(path)
            b.request_stop()
    b.callbacks.append(stop_after_3)
    b.run()
    assert b.state.epoch == 3 and b.state.final_test is None          # stopped: nothing finished
    assert (tmp_path / "run.ckpt.best.npz").is_file() and best_model_path(path) == str(path) + ".best.npz"
    c = _scripted(Trainer(cfg, synthetic()), LOSSES)
    c.restore(path)
    c.run()
    assert c.state.epoch == 4 and _same(_weights(c), _weights(a))
    assert c.final_test == a.final_test[:2] + c.final_test[2:]
    (tmp_path / "run.ckpt.best.npz").unlink()
    from fastcnn.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="weights of epoch 2"):
        Trainer(cfg, synthetic()).restore(path)


@pytest.mark.parametrize("mode", ["shift", "crop-flip"])
def test_augmentation_changes_training_and_resumes_exactly(tmp_path, mode):
    cfg = TrainConfig(epochs=2, augment=mode, **BASE)
    a = Trainer(cfg, synthetic())
    a.run()
    assert all(m["augment_seconds"] >= 0 for m in a.state.history)
    assert all("augment_seconds" not in m for m in a.state.summary(timings=False)["epochs"])     # a timing
    plain = Trainer(TrainConfig(epochs=2, **BASE), synthetic())
    plain.run()
    assert not _same(_weights(a), _weights(plain))
    b = Trainer(cfg, synthetic())
    b.callbacks.append(lambda st, m: (b.save_checkpoint(tmp_path / "a.ckpt"), b.request_stop()))
    b.run()
    c = Trainer(cfg, synthetic())
    c.restore(tmp_path / "a.ckpt")
    c.run()
    assert _same(_weights(c), _weights(a))


def test_resume_refuses_data_scaled_otherwise(tmp_path):
    from dataclasses import replace

    from fastcnn.checkpoint import CheckpointError
    from fastcnn.normalization import Normalization
    cfg = TrainConfig(epochs=2, **BASE)
    a = Trainer(TrainConfig(**{**cfg.to_dict(), "epochs": 1}), synthetic())
    a.run()
    a.save_checkpoint(tmp_path / "a.ckpt")
    other = replace(synthetic(), normalization=Normalization((0.5,), (0.25,)))
    with pytest.raises(CheckpointError, match="scaled by mean"):
        Trainer(cfg, other).restore(tmp_path / "a.ckpt")
    Trainer(cfg, synthetic()).restore(tmp_path / "a.ckpt")          # the same scaling resumes


def test_command_line_reports_validation_early_stopping_and_resumes(tmp_path, monkeypatch, capsys):
    import json

    from fastcnn.cli import train_main

    from helpers import write_custom_dataset
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    write_custom_dataset(tmp_path / "digits", n_train=64, n_test=32)
    common = ["--dataset", "custom", "--data-dir", "digits", "--batch-size", "16", "--backend", "numpy",
              "--plots-dir", "plots", "--metrics", "m.json", "--checkpoint", "c.ckpt"]
    assert train_main([*common, "--epochs", "2", "--val-split", "16", "--early-stop", "1", "--augment", "shift",
                       "--lr", "0.5", "--diverge-factor", "0"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "val loss" in out and "test (scored once, after training)" in out
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["status"] == "completed" and set(doc["final_test"]) == {"test_loss", "test_acc"}
    assert all("val_acc" in m and "test_acc" not in m for m in doc["epochs"])
    assert (tmp_path / "plots" / "test_acc.png").is_file()
    if doc["early_stopping"]["stopped_early"]:
        assert "early stopping: stopped after" in out
    else:                                           # more epochs continue the same settings, early stopping included
        assert train_main([*common, "--resume", "c.ckpt", "--epochs", "3"]) == 0, capsys.readouterr().err
        doc = json.loads((tmp_path / "m.json").read_text())
        assert doc["config"]["early_stop"] == 1 and doc["config"]["augment"] == "shift"
