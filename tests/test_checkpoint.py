"""Tests for fastcnn.checkpoint: exact round trips, bit-identical resumption (every random generator
captured), refusal of damaged files and of mismatched models/optimizers without touching anything,
atomic writes, and never unpickling."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from fastcnn import checkpoint as ck
from fastcnn.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    model_rngs,
    restore,
    save_checkpoint,
)
from fastcnn.model import mnist_cnn
from fastcnn.optim import SGD, AdamW

from helpers import as_version_2

KW = {"dropout": 0.5, "batchnorm": True, "dtype": "float32"}


# ------------------------------------------------------------------------------------------ helpers

def make(seed=0, **overrides):
    kw = {**KW, **overrides}
    return mnist_cnn(seed=seed, backend="numpy", **kw), kw


def snapshot(model, optimizer=None, rngs=()):
    """Deep copies of everything restore() may change."""
    snap = {f"param/{k}": v.copy() for k, v in model.state_arrays().items()}
    if optimizer is not None:
        snap.update({f"optim/{k}": np.array(v, copy=True) for k, v in optimizer.state_dict().items()})
    snap.update({f"rng/{k}": json.dumps(g.bit_generator.state, default=ck._jsonable)
                 for k, g in dict(rngs).items()})
    return snap


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            assert a[k].dtype == b[k].dtype, k
        else:
            assert a[k] == b[k], k


def one_step(model, optimizer, seed=0, n=8):
    """One training step on random data, so every array (params, BN buffers, moments) is non-trivial."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 1, 28, 28)).astype(model.state_arrays()["0.weight"].dtype)
    model.train_step(x, r.integers(0, 10, n), optimizer)


def save(path, model, optimizer, rngs, *, epoch=1, history=(), **kw):
    kwargs = {"epoch": epoch, "history": list(history), "config": {"lr": 1e-3, "batch_size": 16},
              "rngs": rngs}
    kwargs.update(kw)
    return save_checkpoint(path, model, optimizer, **kwargs)


@pytest.fixture
def saved(tmp_path):
    """A checkpoint after one AdamW step: (path, model, optimizer, rngs)."""
    model, _ = make(0)
    opt = AdamW(model, lr=1e-3)
    one_step(model, opt)
    rngs = {"shuffle": np.random.default_rng(42), **model_rngs(model)}
    rngs["shuffle"].random(3)
    path = save(tmp_path / "run.ckpt", model, opt, rngs, history=[{"epoch": 1, "loss": 2.3}])
    return path, model, opt, rngs


def rewrite(path, dest, *, header=None, drop=(), change=None, add=None, rehash=False, raw_header=None):
    """Copy the checkpoint at ``path`` to ``dest`` with the header edited (``header(h)`` on the parsed
    JSON, or ``raw_header(bytes) -> bytes``) and arrays dropped, changed or added, as a well-formed
    archive. The content hash is kept as it was (an edit to detect) unless ``rehash``: then it is
    recomputed, as a forger would, so that the header's fields themselves are what gets checked."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    text = arrays.pop("__header__").tobytes()
    if header:
        h = json.loads(text)
        header(h)
        text = json.dumps(h).encode()
    if raw_header:
        text = raw_header(text)
    for k in drop:
        del arrays[k]
    if change:
        arrays[change] = arrays[change].copy()
        arrays[change].flat[0] += 1
    arrays.update(add or {})
    if rehash:
        digest = ck.content_hash(text, {k: v for k, v in arrays.items() if k != "__sha256__"})
        arrays["__sha256__"] = np.frombuffer(digest.encode(), np.uint8)
    arrays["__header__"] = np.frombuffer(text, np.uint8)
    np.savez(dest, **arrays)
    return dest


# ---------------------------------------------------------------------------------------- round trip

def test_model_rngs_names_every_dropout():
    model, _ = make(0)
    rngs = model_rngs(model)
    assert list(rngs) == ["dropout/9"] and rngs["dropout/9"] is model.unfused_layers()[9].rng


def test_round_trip_restores_params_optimizer_and_rngs_exactly(saved):
    path, model, opt, rngs = saved
    ckpt = load_checkpoint(path)
    h = ckpt.header
    assert (h["format"], h["version"], h["epoch"]) == ("fastcnn-checkpoint", 3, 1)
    assert h["dtype"] == "float32" and h["backend"] == "numpy"
    assert h["optimizer"]["name"] == "adamw" and h["optimizer"]["t"] == 1
    assert h["architecture"]["config"] == model.config() and h["architecture"]["input_shape"] == [1, 28, 28]
    assert h["history"] == [{"epoch": 1, "loss": 2.3}] and h["config"]["batch_size"] == 16
    assert set(h["versions"]) == {"python", "numpy", "numba", "fastcnn"}
    assert "param/1.running_mean" in ckpt.arrays and "optim/m/0.weight" in ckpt.arrays

    fresh, _ = make(seed=7)                                 # different weights and dropout stream
    fopt = AdamW(fresh, lr=1e-3)
    frngs = {"shuffle": np.random.default_rng(0), **model_rngs(fresh)}
    assert restore(ckpt, fresh, fopt, frngs) == []
    assert_same(snapshot(fresh, fopt), snapshot(model, opt))
    for name in rngs:                                       # the next draws are identical
        np.testing.assert_array_equal(frngs[name].random(5), rngs[name].random(5))


def test_file_is_plain_npz_with_json_header(saved):
    path = saved[0]
    with np.load(path, allow_pickle=False) as z:
        text = z["__header__"].tobytes()
        header = json.loads(text.decode("utf-8"))
        names = sorted(k for k in z.files if k not in ("__header__", "__sha256__"))
        assert z["__sha256__"].tobytes().decode() == ck.content_hash(text, {k: z[k] for k in names})
    assert names == header["arrays"]
    assert all(n.startswith(("param/", "optim/")) for n in names)
    assert isinstance(header["rngs"]["shuffle"]["state"]["state"], int)   # 128-bit int kept exactly


def test_build_model_reproduces_outputs(saved, tmp_path):
    path, model, _, _ = saved
    rebuilt = build_model(path, backend="numpy")
    x = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt(x), model(x))
    # a model-only checkpoint (optimizer=None) also rebuilds, but cannot be resumed
    p2 = save(tmp_path / "final.ckpt", model, None, {})
    np.testing.assert_array_equal(build_model(p2, backend="numpy")(x), model(x))
    fresh, _ = make(3)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore(p2, fresh, AdamW(fresh))


def test_non_json_config_fails_before_writing(tmp_path, saved):
    _, model, opt, rngs = saved
    with pytest.raises(TypeError, match="cannot store"):
        save(tmp_path / "x.ckpt", model, opt, rngs, config={"bad": object()})
    assert not (tmp_path / "x.ckpt").exists()


# ------------------------------------------------------------------------- bit-identical resumption

def _epoch(model, opt, shuffle, x, y, batch=16):
    perm = shuffle.permutation(len(x))
    losses, correct = [], 0
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        loss, c = model.train_step(x[idx], y[idx], opt)
        losses.append(loss)
        correct += c
    return {"loss": float(np.mean(losses)), "accuracy": correct / len(x)}


@pytest.mark.parametrize("opt_cls, batchnorm", [(AdamW, True), (SGD, False)])
def test_resume_is_bit_identical(tmp_path, opt_cls, batchnorm):
    data = np.random.default_rng(2024)
    x = data.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = data.integers(0, 10, 64)
    kw = {**KW, "batchnorm": batchnorm}

    def fresh(seed):
        model = mnist_cnn(seed=seed, backend="numpy", **kw)
        opt = opt_cls(model, lr=0.01)
        return model, opt, {"shuffle": np.random.default_rng(seed + 100), **model_rngs(model)}

    straight_model, straight_opt, rngs = fresh(0)            # 2 epochs straight
    straight = [_epoch(straight_model, straight_opt, rngs["shuffle"], x, y) for _ in range(2)]

    model, opt, rngs = fresh(0)                              # 1 epoch, save, stop
    history = [_epoch(model, opt, rngs["shuffle"], x, y)]
    path = save(tmp_path / "ck.npz", model, opt, rngs, history=history)
    del model, opt, rngs

    model, opt, rngs = fresh(5)                              # new process: other seeds, then resume
    ckpt = load_checkpoint(path)
    assert restore(ckpt, model, opt, rngs) == []
    history = ckpt.history + [_epoch(model, opt, rngs["shuffle"], x, y)]

    assert history == straight
    assert_same(snapshot(model, opt), snapshot(straight_model, straight_opt))


def test_resume_without_dropout_rng_diverges(tmp_path):
    """Negative control: the equivalence above depends on restoring the dropout generator too."""
    data = np.random.default_rng(7)
    x = data.standard_normal((32, 1, 28, 28)).astype(np.float32)
    y = data.integers(0, 10, 32)
    model, _ = make(0)
    opt = SGD(model, lr=0.01)
    rngs = {"shuffle": np.random.default_rng(1), **model_rngs(model)}
    _epoch(model, opt, rngs["shuffle"], x, y)
    path = save(tmp_path / "ck", model, opt, rngs)
    _epoch(model, opt, rngs["shuffle"], x, y)

    other, _ = make(5)
    oopt = SGD(other, lr=0.01)
    shuffle = np.random.default_rng(0)
    notes = restore(path, other, oopt, {"shuffle": shuffle})          # dropout/9 left out
    assert notes == ["random generators saved but not restored: dropout/9"]
    _epoch(other, oopt, shuffle, x, y)
    assert not np.array_equal(other.state_arrays()["10.weight"], model.state_arrays()["10.weight"])


# ---------------------------------------------------------------------------------- damaged files

def _damage_truncate(src, dst):
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _damage_flip(src, dst):
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    dst.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, message", [
    (_damage_truncate, r"damaged or truncated archive"),
    (_damage_flip, r"damaged"),
    (lambda s, d: d.write_bytes(np.random.default_rng(0).bytes(5000)), r"not an \.npz \(zip\) archive"),
    (lambda s, d: d.write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(5000)),
     r"damaged or truncated archive"),
    (lambda s, d: d.write_bytes(b""), r"empty file"),
    (lambda s, d: np.savez(d, a=np.zeros(3)), r"no __header__ array"),
    (lambda s, d: np.savez(d, __header__=np.frombuffer(b"{not json", np.uint8)), r"not valid UTF-8 JSON"),
    (lambda s, d: np.savez(d, __header__=np.zeros(3, np.float64)), r"malformed header: expected 1-D uint8"),
    (lambda s, d: rewrite(s, d, header=lambda h: h.update(version=4), rehash=True), r"format version 4 is newer"),
    (lambda s, d: rewrite(s, d, header=lambda h: h.update(version="1"), rehash=True), r"bad format version"),
    (lambda s, d: rewrite(s, d, header=lambda h: h.update(format="other"), rehash=True), r"not a fastcnn checkpoint"),
    (lambda s, d: rewrite(s, d, header=lambda h: h.pop("epoch"), rehash=True), r"'epoch' missing"),
    (lambda s, d: rewrite(s, d, header=lambda h: h.update(optimizer="sgd"), rehash=True),
     r"'optimizer' must be null"),
    (lambda s, d: rewrite(s, d, change="param/0.weight"), r"SHA-256 of its content .* does not match"),
    (lambda s, d: rewrite(s, d, drop=["optim/v/10.bias"], rehash=True), r"missing arrays optim/v/10\.bias"),
    (lambda s, d: rewrite(s, d, add={"param/x": np.zeros(2)}, rehash=True), r"unexpected arrays param/x"),
], ids=["truncated", "flipped-byte", "random-bytes", "zip-magic-then-garbage", "empty", "no-header",
        "bad-json", "header-not-bytes", "newer-version", "bad-version", "wrong-format", "missing-key",
        "bad-optimizer", "hash-mismatch", "missing-array", "extra-array"])
def test_damaged_files_are_refused_with_one_line_reason(saved, tmp_path, damage, message):
    dst = tmp_path / "bad.npz"
    damage(saved[0], dst)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(dst)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(dst) + ": ")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_object_arrays_are_never_unpickled(saved, tmp_path, monkeypatch):
    dst = rewrite(saved[0], tmp_path / "obj.npz", add={"param/evil": np.array([{"x": 1}], dtype=object)})

    def boom(*a, **k):
        raise AssertionError("load_checkpoint unpickled something")
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(CheckpointError, match=r"refused: the archive holds an object \(pickled\) array"):
        load_checkpoint(dst)


# ------------------------------------------------------------------------------------- mismatches

def _with(make_optimizer, rngs=None):
    """(model, its optimizer, rngs) for the mismatch cases."""
    model = make(1)[0]
    return model, make_optimizer(model), rngs or {}


@pytest.mark.parametrize("build, message", [
    (lambda: (make(1, batchnorm=False)[0], None, {}),
     r"architecture differs at layer 1: checkpoint has BatchNorm2D\(eps=1e-05, momentum=0\.1, num_features=32\), "
     r"model has ReLU\(\)"),
    (lambda: (make(1, dtype="float64")[0], None, {}), r"dtype differs: checkpoint float32, model float64"),
    (lambda: (make(1, dropout=0.25)[0], None, {}), r"Dropout\(p=0\.5\), model has Dropout\(p=0\.25\)"),
    (lambda: _with(lambda m: SGD(m)), r"optimizer differs: checkpoint adamw, run sgd"),
    (lambda: _with(lambda m: AdamW(m, lr=0.1)),
     r"optimizer settings differ \(checkpoint vs run\): lr=0\.001 vs 0\.1"),
    (lambda: _with(AdamW, {"shuffle": np.random.default_rng(0), "augment": np.random.default_rng(0)}),
     r"no state for random generator 'augment'"),
    (lambda: (make(1)[0], None, {"shuffle": np.random.Generator(np.random.MT19937(0))}),
     r"random generator 'shuffle' differs: checkpoint PCG64, run MT19937"),
], ids=["batchnorm", "dtype", "dropout-p", "optimizer", "hparams", "rng-missing", "rng-kind"])
def test_mismatch_is_refused_before_anything_changes(saved, build, message):
    path = saved[0]
    model, opt, rngs = build()
    if opt is not None:
        one_step(model, opt, seed=3)
    before = snapshot(model, opt, rngs)
    with pytest.raises(CheckpointError, match=message) as info:
        restore(path, model, opt, rngs)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")
    assert_same(snapshot(model, opt, rngs), before)


def test_hparams_check_can_be_waived(saved):
    model, _ = make(1)
    opt = AdamW(model, lr=0.5)
    restore(saved[0], model, opt, check_hparams=False)
    assert opt.t == 1 and opt.lr == 0.5
    assert_same(snapshot(model), snapshot(saved[1]))


# ------------------------------------------------------------------------------------- atomicity

@pytest.mark.parametrize("where", ["savez", "replace"])
def test_failed_save_keeps_previous_checkpoint(saved, monkeypatch, where):
    path, model, opt, rngs = saved
    before = path.read_bytes()
    if where == "savez":
        def failing(file, *args, **kwargs):
            file.write(b"PK\x03\x04 half-written")
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(np, "savez", failing)
    else:
        def failing(src, dst):
            raise KeyboardInterrupt                         # killed just before the rename
        monkeypatch.setattr(os, "replace", failing)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save(path, model, opt, rngs, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]      # no temp files left


def test_save_overwrites_and_leaves_no_temp_files(saved):
    path, model, opt, rngs = saved
    save(path, model, opt, rngs, epoch=2, history=[{"a": 1}, {"a": 2}])
    assert load_checkpoint(path).epoch == 2
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)                    # normal permissions


# ------------------------------------------------------------ the whole content is covered, header too

def _set(path_keys, value):
    """A header edit: set the value at ``path_keys`` (a tuple of keys/indices)."""
    def edit(h):
        node = h
        for key in path_keys[:-1]:
            node = node[key]
        node[path_keys[-1]] = value
    return edit


@pytest.fixture
def trained(tmp_path):
    """A checkpoint after 3 epochs with real-looking metrics: (path, model, optimizer, rngs)."""
    model, _ = make(0)
    opt = AdamW(model, lr=1e-3)
    one_step(model, opt)
    rngs = {"shuffle": np.random.default_rng(42), **model_rngs(model)}
    history = [{"epoch": e, "train_loss": 0.5 / e, "train_acc": 0.9, "test_loss": 0.4 / e, "test_acc": 0.95,
                "seconds": 1.0, "images_per_second": 100.0} for e in (1, 2, 3)]
    return save(tmp_path / "run.ckpt", model, opt, rngs, epoch=3, history=history), model, opt, rngs


# Edits an attacker or a slip could make, each written back as a well-formed archive with the old hash.
HEADER_EDITS = [
    ("lr-50", lambda h: h["optimizer"]["hparams"].update(lr=50.0)),
    ("epoch-3-to-1", lambda h: h.update(epoch=1)),
    ("test-acc", _set(("history", 2, "test_acc"), 0.999)),
    ("config", lambda h: h["config"].update(batch_size=32)),
    ("dataset", lambda h: h.setdefault("extra", {}).update(dataset="fashion-mnist")),
    ("rng-state", lambda h: h["rngs"]["shuffle"]["state"].update(state=1)),
    ("whitespace", None),                      # same JSON value, different bytes: still refused
]


@pytest.mark.parametrize("name, edit", HEADER_EDITS, ids=[e[0] for e in HEADER_EDITS])
def test_any_header_edit_is_refused(trained, tmp_path, name, edit):
    dst = tmp_path / "edited.npz"
    if edit is None:
        rewrite(trained[0], dst, raw_header=lambda b: b + b" ")
    else:
        rewrite(trained[0], dst, header=edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(dst)
    assert str(info.value) == (f"{dst}: damaged or modified: the SHA-256 of its content (header and arrays) "
                               "does not match the one stored in it")


def test_a_forged_header_with_a_huge_number_is_refused(trained, tmp_path):
    # A rehashed header (as a forger would) whose number has more digits than Python converts.
    dst = tmp_path / "forged.npz"
    rewrite(trained[0], dst, raw_header=lambda b: b.replace(b'"epoch": ', b'"epoch": 1' + b"0" * 5000, 1),
            rehash=True)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(dst)
    assert str(info.value) == f"{dst}: malformed header: not valid UTF-8 JSON (ValueError)"


def test_a_file_of_the_previous_format_loads_and_restores(trained, tmp_path):
    path, model, opt, rngs = trained
    old = load_checkpoint(as_version_2(path, tmp_path / "v2.npz", KW))
    assert old.header["version"] == 2
    assert old.model_config == model.config() and old.input_shape == (1, 28, 28)
    assert old.model_kwargs == {"dtype": "float32", "in_channels": 1, "image_size": 28, "num_classes": 10}
    rebuilt = build_model(old, backend="numpy")
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt(x), model(x))
    fresh, _ = make(seed=7)
    fopt = AdamW(fresh, lr=1e-3)
    restore(old, fresh, fopt, {"shuffle": np.random.default_rng(0), **model_rngs(fresh)})
    assert_same(snapshot(fresh, fopt), snapshot(model, opt))


def test_every_header_byte_is_covered(trained, tmp_path):
    """Flip one bit at 64 positions spread over the header (first and last byte included)."""
    with np.load(trained[0], allow_pickle=False) as z:
        size = z["__header__"].size
    dst = tmp_path / "flipped.npz"
    for pos in sorted({0, size - 1, *range(0, size, max(1, size // 62))}):
        def flip(b, pos=pos):
            return b[:pos] + bytes([b[pos] ^ 0x04]) + b[pos + 1:]
        rewrite(trained[0], dst, raw_header=flip)
        with pytest.raises(CheckpointError, match=r"damaged or modified: the SHA-256"):
            load_checkpoint(dst)


def test_header_bytes_flipped_in_the_file_itself(trained, tmp_path):
    raw = trained[0].read_bytes()
    with np.load(trained[0], allow_pickle=False) as z:
        start = raw.find(z["__header__"].tobytes()[:64])
    assert start > 0
    for offset in (0, 10, 100):
        damaged = bytearray(raw)
        damaged[start + offset] ^= 0x01
        dst = tmp_path / f"flip{offset}.npz"
        dst.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=r"damaged") as info:
            load_checkpoint(dst)
        assert "\n" not in str(info.value)


def test_version_1_files_are_refused(trained, tmp_path):
    dst = rewrite(trained[0], tmp_path / "v1.npz", header=_set(("version",), 1), drop=["__sha256__"])
    with pytest.raises(CheckpointError, match=r"format version 1 is no longer read: its header is not covered "
                                              r"by a checksum, so it cannot be verified; train the model again"):
        load_checkpoint(dst)


# Headers a forger made consistent (hash recomputed): each field is still checked by type and range.
FORGED = [
    ("history-junk", lambda h: h["history"].append("junk"), r"history entry 4 is str 'junk', not an object"),
    ("history-acc-text", _set(("history", 0, "test_acc"), "99%"),
     r"history entry 1: 'test_acc' is '99%', not a number"),
    ("history-epoch", _set(("history", 1, "epoch"), -2), r"history entry 2: 'epoch' is -2, not an epoch number"),
    ("epoch-negative", _set(("epoch",), -1), r"'epoch' must be a count of epochs, got -1"),
    ("epoch-text", _set(("epoch",), "3"), r"'epoch' missing or not a int"),
    ("epoch-bool", _set(("epoch",), True), r"'epoch' missing or not a int"),
    ("dtype", _set(("dtype",), "float16"), r"'dtype' must be one of float32, float64, got 'float16'"),
    ("lr-text", _set(("optimizer", "hparams", "lr"), "fast"), r"optimizer setting lr='fast' is not a finite number"),
    ("lr-nan", _set(("optimizer", "hparams", "lr"), float("nan")), r"optimizer setting lr=nan is not a finite"),
    ("optimizer-t", _set(("optimizer", "t"), -5), r"'optimizer' must be null or an object"),
    ("threads", _set(("threads",), 0), r"'threads' must be null or a thread count, got 0"),
    ("rng-state", _set(("rngs", "shuffle"), [1, 2]), r"the state of random generator 'shuffle' is not an object"),
    ("param-shape", _set(("architecture", "params", "0.weight", "shape"), [32, 1, 3, 4]),
     r"its config implies parameter 0\.weight of shape \(32, 1, 3, 3\), its params say \(32, 1, 3, 4\)"),
    ("param-shape-text", _set(("architecture", "params", "0.weight", "shape"), "big"),
     r"parameter '0\.weight' needs a 'shape' list and a float 'dtype'"),
    ("config-junk", _set(("architecture", "config"), [1, 2]), r"architecture: write layer 0 as an object"),
    ("config-empty", _set(("architecture", "config"), []), r"architecture needs a 'config' list of 1\.\.10000"),
    ("config-bigger", _set(("architecture", "config", 10, "out_features"), 200_000),
     r"its config implies parameter 10\.weight of shape \(200000, 3136\), its params say \(10, 3136\)"),
    ("input-shape", _set(("architecture", "input_shape"), [1, 28]), r"'input_shape' must be null or \[C, H, W\]"),
    ("data", _set(("data",), [1]), r"'data' is not an object"),
    ("deep-json", None, r"malformed header: not valid UTF-8 JSON \(RecursionError\)"),
]


@pytest.mark.parametrize("name, edit, message", FORGED, ids=[f[0] for f in FORGED])
def test_forged_header_fields_are_refused(trained, tmp_path, name, edit, message):
    dst = tmp_path / "forged.npz"
    if edit is None:
        rewrite(trained[0], dst, raw_header=lambda b: b"[" * 100_000 + b"]" * 100_000, rehash=True)
    else:
        rewrite(trained[0], dst, header=edit, rehash=True)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(dst)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{dst}: ")
    assert len(str(info.value)) < 200 + len(str(dst))


FORGED_V2 = [
    ("num-classes-text", {"num_classes": "10"}, r"model setting num_classes='10' is not an integer in 1\.\.1048576"),
    ("image-size-huge", {"image_size": 10**9}, r"model setting image_size=1000000000 is not an integer in 4\.\.65536"),
    ("dropout", {"dropout": 1.5}, r"dropout=1\.5 is not a number in \[0, 1\)"),
    ("batchnorm", {"batchnorm": "yes"}, r"batchnorm='yes' is not true or false"),
]


@pytest.mark.parametrize("name, kwargs, message", FORGED_V2, ids=[f[0] for f in FORGED_V2])
def test_forged_settings_of_previous_format_files_are_refused(trained, tmp_path, name, kwargs, message):
    dst = as_version_2(trained[0], tmp_path / "forged.npz", {**KW, **kwargs})
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(dst)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{dst}: malformed header: ")


def test_huge_num_classes_is_refused_before_anything_is_allocated(trained, tmp_path, monkeypatch):
    dst = as_version_2(trained[0], tmp_path / "forged.npz", {**KW, "num_classes": 200_000})
    import fastcnn._checkpoint_format
    import fastcnn.architecture

    def never(*a, **k):
        raise AssertionError("a model was built from the forged settings")
    monkeypatch.setattr(fastcnn._checkpoint_format, "layers_from_config", never)
    monkeypatch.setattr(fastcnn.architecture, "layers_from_config", never)
    message = (r"malformed header: architecture: its config implies parameter 10\.weight of shape \(200000, 3136\), "
               r"its params say \(10, 3136\)")
    with pytest.raises(CheckpointError, match=message):     # in range for its type, bounded by the file
        load_checkpoint(dst)
    with pytest.raises(CheckpointError, match=message):
        build_model(dst, backend="numpy")


def _zip_with(dst, members, compress=False):
    import zipfile
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _npy_bytes(arr, shape=None):
    """``arr`` as .npy bytes; ``shape``: declare that shape in the header instead (a forgery)."""
    import io
    buf = io.BytesIO()
    if shape is None:
        np.lib.format.write_array(buf, arr, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(arr.dtype),
                                                   "fortran_order": False, "shape": tuple(shape)})
        buf.write(arr.tobytes())
    return buf.getvalue()


ARCHIVES = [
    ("huge-declared-shape", lambda d, ok: _zip_with(d, {**ok, "param/0.weight.npy": _npy_bytes(np.zeros(4, np.float32),
                                                                                                (10**10,))}),
     r"damaged: array 'param/0\.weight' declares 40000000000 bytes, its member holds 16"),
    ("compressed-member", lambda d, ok: _zip_with(d, ok, compress=True), r"refused: member .* is compressed"),
    ("object-array", lambda d, ok: _zip_with(d, {**ok, "x.npy": _npy_bytes(np.array([None], dtype=object))}),
     r"refused: the archive holds an object \(pickled\) array"),
    ("not-npy-member", lambda d, ok: _zip_with(d, {**ok, "notes.txt": b"hello"}),
     r"unexpected archive member 'notes\.txt'"),
]


@pytest.mark.parametrize("name, make_archive, message", ARCHIVES, ids=[a[0] for a in ARCHIVES])
def test_archive_members_are_checked_before_reading(trained, tmp_path, name, make_archive, message):
    import zipfile
    with zipfile.ZipFile(trained[0]) as zf:
        ok = {info.filename: zf.read(info) for info in zf.infolist()}
    dst = make_archive(tmp_path / "forged.npz", ok)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(dst)
    assert "\n" not in str(info.value)
