"""The .npz reader (fastcnn.datasets.arrays)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fastcnn.data import DataError
from fastcnn.datasets.arrays import load_arrays
from fastcnn.normalization import Normalization


def _arrays(shape=(8, 3, 5, 5), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape).astype(dtype)
    return {"x_train": x, "y_train": np.arange(shape[0]) % 3, "x_test": x[:4], "y_test": np.arange(4) % 3}


def test_nchw_nhwc_grey_and_float(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "nchw.npz", **a, classes=np.array(["a", "b", "c"]))
    d = load_arrays(tmp_path / "nchw.npz")
    assert d.x_train.shape == (8, 3, 5, 5) and d.classes == ("a", "b", "c") and d.y_train.dtype == np.int64
    assert d.normalization == Normalization.from_images(a["x_train"])
    nhwc = {**a, "x_train": a["x_train"].transpose(0, 2, 3, 1), "x_test": a["x_test"].transpose(0, 2, 3, 1)}
    np.savez(tmp_path / "nhwc.npz", **nhwc)
    assert np.array_equal(load_arrays(tmp_path / "nhwc.npz").x_train, a["x_train"])
    grey = {**a, "x_train": a["x_train"][:, 0], "x_test": a["x_test"][:, 0]}
    np.savez(tmp_path / "grey.npz", **grey)
    assert load_arrays(tmp_path / "grey.npz").x_train.shape == (8, 1, 5, 5)
    fl = {**a, "x_train": a["x_train"] / 255.0, "x_test": a["x_test"] / 255.0}
    np.savez_compressed(tmp_path / "float.npz", **fl)
    d = load_arrays(tmp_path / "float.npz")
    assert d.x_train.dtype == np.float64
    np.testing.assert_allclose(d.normalization.mean, Normalization.from_images(a["x_train"]).mean, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"y_train": None}, "lacks y_train"),
    ({"y_train": np.arange(7)}, "one per image"),
    ({"y_test": np.array([0, 1, 2, -1])}, "label -1 out of range"),
    ({"y_test": np.zeros(4)}, "labels must be integers"),
    ({"x_test": np.zeros((4, 3, 6, 6), np.uint8)}, "image shape mismatch"),
    ({"x_test": np.zeros((4, 3, 5, 5), np.int16)}, "images must be uint8"),
    ({"x_test": np.full((4, 3, 5, 5), np.nan)}, "NaN"),
    ({"x_train": np.zeros((8, 5), np.uint8)}, "must be"),
    ({"classes": np.array(["a", "b"])}, "label 2 out of range 0..1"),
])
def test_bad_arrays(tmp_path, change, message):
    a = {**_arrays(), **change}
    np.savez(tmp_path / "d.npz", **{k: v for k, v in a.items() if v is not None})
    with pytest.raises(DataError, match=message) as e:
        load_arrays(tmp_path / "d.npz")
    assert "\n" not in str(e.value)


def test_hostile_files(tmp_path):
    np.savez(tmp_path / "obj.npz", **{**_arrays(), "classes": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(DataError, match="Python objects"):
        load_arrays(tmp_path / "obj.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not a zip archive"):
        load_arrays(tmp_path / "text.npz")
    with pytest.raises(DataError, match="no such file"):
        load_arrays(tmp_path / "missing.npz")
    # A header declaring a terabyte in a tiny member is refused before anything is allocated.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as zf:
        for k, v in _arrays().items():
            if k != "x_train":
                with zf.open(f"{k}.npy", "w") as f:
                    np.save(f, v)
        zf.writestr("x_train.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(DataError, match="'x_train' declares 1000000000000 bytes"):
        load_arrays(tmp_path / "forged.npz")
