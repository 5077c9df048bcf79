"""Per-channel normalization and the image-folder reader (fastcnn.normalization, fastcnn.datasets.folder)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from fastcnn.data import DataError, DataWarning, load_dataset, to_float
from fastcnn.datasets import folder
from fastcnn.datasets.folder import load_folder, parse_image_size
from fastcnn.normalization import MNIST_NORMALIZATION, DataFacts, Normalization, data_facts

from helpers import write_custom_dataset

# ------------------------------------------------------------------------------------ normalization


def test_mnist_scaling_is_unchanged():
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    expected = x.astype(np.float32)
    expected *= np.float32(1.0 / (255.0 * 0.3081))
    expected -= np.float32(0.1307 / 0.3081)
    assert np.array_equal(to_float(x), expected)
    assert np.array_equal(to_float(x, **MNIST_NORMALIZATION.kwargs()), expected)


def test_per_channel_scaling_and_float_images():
    x = np.random.default_rng(1).integers(0, 256, (3, 3, 5, 4), dtype=np.uint8)
    norm = Normalization((0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    out = to_float(x, np.float64, **norm.kwargs())
    for c in range(3):
        np.testing.assert_allclose(out[:, c], (x[:, c] / 255.0 - norm.mean[c]) / norm.std[c], rtol=1e-12)
    np.testing.assert_allclose(to_float(x / 255.0, np.float64, **norm.kwargs()), out, rtol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        to_float(x[:, :2], **norm.kwargs())
    with pytest.raises(TypeError):
        to_float(x.astype(np.int32))


def test_statistics_from_images():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (5000, 2, 3, 3), dtype=np.uint8)
    x[:, 1] = 7                                       # a constant channel: std 1, no division by zero
    norm = Normalization.from_images(x)
    assert norm.mean[0] == pytest.approx((x[:, 0] / 255).mean(), abs=1e-6)
    assert norm.std[0] == pytest.approx((x[:, 0] / 255).std(), abs=1e-6)
    assert norm.mean[1] == pytest.approx(7 / 255, abs=1e-6) and norm.std[1] == 1.0
    assert Normalization.from_dict(norm.to_dict()) == norm
    assert data_facts({}) == DataFacts(MNIST_NORMALIZATION, None)            # saved before models carried them
    assert data_facts({"normalization": norm.to_dict(), "classes": ["a", "b"]}) == DataFacts(norm, ("a", "b"))
    assert data_facts(DataFacts(norm, ("a",)).to_dict()) == DataFacts(norm, ("a",))
    for bad in ({"normalization": {"mean": 0.1, "std": 0.3}}, {"classes": [1, 2]}, {"classes": "ab"}):
        with pytest.raises(ValueError):
            data_facts(bad)
    with pytest.raises(ValueError):
        Normalization((0.1,), (0.0,))
    with pytest.raises(ValueError):
        Normalization.from_dict({"mean": [0.1]})


def test_idx_datasets_other_than_mnist_compute_their_statistics(tmp_path):
    write_custom_dataset(tmp_path)
    d = load_dataset("custom", data_dir=tmp_path)
    assert d.normalization == Normalization.from_images(d.x_train)


# ------------------------------------------------------------------------------------ image folders

def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _grey_folder(root, sizes=None, n=3):
    rng = np.random.default_rng(0)
    images = {}
    for split in ("train", "test"):
        for cls in ("cat", "ant"):                    # listed out of order: classes are sorted
            for i in range(n):
                img = rng.integers(0, 256, (sizes or (6, 5)), dtype=np.uint8)
                _save(root / split / cls / f"{i}.png", img)
                images[(split, cls, i)] = img
    return images


def test_grey_folder_loads_sorted_classes_and_caches(tmp_path, monkeypatch):
    images = _grey_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    d = load_folder(tmp_path / "data", cache_dir=cache)
    assert d.classes == ("ant", "cat") and d.name == "folder"
    assert d.x_train.shape == (6, 1, 6, 5) and d.x_train.dtype == np.uint8 and d.y_test.dtype == np.int64
    order = np.random.default_rng(0).permutation(6)          # the fixed shuffle of the sorted files
    sorted_files = [(cls, i) for cls in ("ant", "cat") for i in range(3)]
    for k, j in enumerate(order):
        cls, i = sorted_files[j]
        assert d.y_train[k] == ("ant", "cat").index(cls)
        assert np.array_equal(d.x_train[k, 0], images[("train", cls, i)])
    assert d.normalization == Normalization.from_images(d.x_train)
    assert len(list(cache.glob("*.npz"))) == 2        # the arrays and the digest manifest

    def no_decoding(*a):
        raise AssertionError("decoded again although cached")
    monkeypatch.setattr(folder, "_decode_chunk", no_decoding)
    again = load_folder(tmp_path / "data", cache_dir=cache)
    assert np.array_equal(again.x_train, d.x_train) and np.array_equal(again.y_test, d.y_test)
    # Changed contents make a new key (the size and time differ too, as after any edit).
    _save(tmp_path / "data" / "test" / "ant" / "0.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        load_folder(tmp_path / "data", cache_dir=cache)


def test_colour_formats_and_first_gif_frame(tmp_path):
    root = tmp_path / "data"
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    _save(root / "train" / "a" / "x.bmp", red)
    _save(root / "train" / "a" / "y.JPG", np.full((4, 4, 3), 128, np.uint8), "JPEG")
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 250)]
    (root / "train" / "b").mkdir(parents=True)
    frames[0].save(root / "train" / "b" / "z.gif", save_all=True, append_images=frames[1:])
    _save(root / "test" / "b" / "g.png", np.full((4, 4), 77, np.uint8))
    (root / "train" / "a" / "notes.txt").write_text("ignored")
    d = load_folder(root, cache_dir=tmp_path / "cache")
    assert d.x_train.shape == (3, 3, 4, 4)            # one colour image makes the dataset RGB
    x = d.x_train[np.argsort(np.random.default_rng(0).permutation(3))]        # back to file order
    assert x[0, :, 0, 0].tolist() == [200, 0, 0]
    assert abs(int(x[2, 0, 0, 0]) - 10) <= 1 and len(set(x[2, :, 0, 0].tolist())) == 1
    assert d.x_test[0, :, 0, 0].tolist() == [77, 77, 77]


def test_differing_sizes_need_image_size(tmp_path):
    root = tmp_path / "data"
    _grey_folder(root)
    _save(root / "train" / "cat" / "big.png", np.zeros((9, 9), np.uint8))
    with pytest.raises(DataError, match=r"images differ in size .*6x5.*big\.png: 9x9.*--image-size") as e:
        load_folder(root, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    d = load_folder(root, "8x7", cache_dir=tmp_path / "cache")
    assert d.x_train.shape[1:] == (1, 8, 7)
    assert parse_image_size("32") == (32, 32)
    with pytest.raises(ValueError):
        parse_image_size("3x")


def test_bad_files_name_themselves_or_are_skipped(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _grey_folder(root)
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"broken\.png: cannot decode.*--skip-bad") as e:
        load_folder(root, cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("[0-9a-f]*.npz"))       # nothing cached for a failed load
    with pytest.warns(DataWarning, match=r"skipped 1 unreadable image file: .*broken\.png"):
        d = load_folder(root, cache_dir=tmp_path / "cache", skip_bad=True)
    assert len(d.x_train) == 6
    with pytest.warns(DataWarning, match="skipped 1"):                 # the cached copy warns too
        load_folder(root, cache_dir=tmp_path / "cache", skip_bad=True)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(DataError, match=r"declares 5x6 pixels, more than Pillow's decompression-bomb limit"):
        load_folder(root, cache_dir=tmp_path / "cache2")


def test_layout_errors(tmp_path):
    _grey_folder(tmp_path / "data")
    (tmp_path / "data" / "test" / "dog").mkdir()
    with pytest.raises(DataError, match="'dog' has no counterpart in train/"):
        load_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="has no train/ folder"):
        load_folder(tmp_path / "data" / "test", cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="no such directory"):
        load_folder(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert folder.is_folder_layout(tmp_path / "data") and not folder.is_folder_layout(tmp_path)


def test_interrupted_caching_leaves_nothing(tmp_path, monkeypatch):
    _grey_folder(tmp_path / "data")

    def interrupted(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(folder.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_unwritable_cache_is_a_warning(tmp_path):
    _grey_folder(tmp_path / "data")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_folder(tmp_path / "data", cache_dir=blocker)
    assert len(d.x_train) == 6
    assert any("cannot cache" in str(w.message) for w in caught)
