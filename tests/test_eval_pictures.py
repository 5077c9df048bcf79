"""Tests for the pictures: fastcnn-eval --filters and --inspect (in-process, untrained models), and
fastcnn.inspect_plots on other architectures (BatchNorm, AvgPool, colour input)."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from fastcnn.checkpoint import save_checkpoint
from fastcnn.inspect import Filters, conv_filters, inspect_image
from fastcnn.inspect_plots import mosaic, plot_filters, plot_inspection
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Flatten, Linear, ReLU
from fastcnn.model import Sequential, mnist_cnn
from fastcnn.serve.predict import sample_digit

from helpers import PNG_SIGNATURE
from helpers import run_eval as run


def checkpoint(path, **kwargs):
    model = mnist_cnn(seed=0, backend="numpy", **kwargs)
    save_checkpoint(path, model, None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "dtype": "float32", **kwargs})
    return path


def read_png(path):
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    return mpimg.imread(path)


@pytest.mark.parametrize("kwargs", [{"batchnorm": False}, {"batchnorm": True}])
def test_filters_and_inspect_pages_are_written(kwargs, mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(mnist_dir))
    model = checkpoint(tmp_path / "model.npz", **kwargs)
    (tmp_path / "seven.png").write_bytes(sample_digit())
    code, out, err = run(capsys, model, "--filters", tmp_path / "f" / "filters.png", "--inspect", "test:0",
                         tmp_path / "seven.png", "--out", tmp_path / "pages", "--backend", "numpy")
    assert code == 0, err
    assert out[0] == f"wrote {tmp_path / 'f' / 'filters.png'}"
    assert out[1].startswith("test:0: digit ") and out[1].endswith(str(tmp_path / "pages" / "inspect_test_0.png"))
    assert out[2].startswith(f"{tmp_path / 'seven.png'}: digit ")
    filters = read_png(tmp_path / "f" / "filters.png")
    page = read_png(tmp_path / "pages" / "inspect_seven.png")
    assert filters.shape[0] > 300 and page.shape[0] > page.shape[1]         # a tall page: one row per layer
    assert not (tmp_path / "eval").exists()                                  # no test-set evaluation


def test_inspect_bad_entries(tmp_path, capsys, mnist_dir, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(mnist_dir))
    model = checkpoint(tmp_path / "model.npz")
    code, _, err = run(capsys, model, "--inspect", "notes.txt")
    assert code == 2 and len(err) == 1 and "--inspect takes image files" in err[0]
    code, _, err = run(capsys, model, "--filters", tmp_path / "filters.jpg")
    assert code == 2 and len(err) == 1 and "ending in .png" in err[0], err
    code, out, err = run(capsys, model, "--inspect", "test:10000", "test:1", "--out", tmp_path, "--backend", "numpy")
    assert code == 1 and len(err) == 1 and "test:0 .. test:9999" in err[0], err
    assert len(out) == 1 and (tmp_path / "inspect_test_1.png").exists()


def test_mosaic_lays_tiles_row_by_row_with_gaps():
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    m = mosaic(tiles, cols=3)
    assert m.shape == (2 * 2 + 1, 3 * 3 + 2)
    np.testing.assert_array_equal(m[0:2, 4:7], tiles[1])
    np.testing.assert_array_equal(m[3:5, 4:7], tiles[4])
    assert np.isnan(m[2]).all() and np.isnan(m[3:5, 8:]).all()


def test_other_architectures_draw(tmp_path):
    """A colour-input network with BatchNorm and average pooling: filters as colour, every map drawn."""
    rng = np.random.default_rng(0)
    layers = [Conv2D(3, 6, 5, padding=2, rng=rng), BatchNorm2D(6), ReLU(), AvgPool2D(2), Conv2D(6, 8, 3, rng=rng),
              ReLU(), Flatten(), Linear(8 * 6 * 6, 4, rng=rng)]
    model = Sequential(layers, backend="numpy", input_shape=(3, 16, 16))
    result = inspect_image(model, rng.normal(size=(3, 16, 16)).astype(np.float32))
    assert [m.name for m in result.maps][:4] == ["Conv2D", "BatchNorm2D", "ReLU", "AvgPool2D"]
    page = read_png(plot_inspection(result, tmp_path / "page.png", class_names=["a", "b", "c", "d"]))
    filters = read_png(plot_filters(conv_filters(model), tmp_path / "filters.png", deep="mean"))
    assert page.shape[2] in (3, 4) and filters.shape[0] > 100
    two = [Filters(0, "Conv2D", rng.normal(size=(4, 2, 3, 3)))]
    read_png(plot_filters(two, tmp_path / "two.png"))
    with pytest.raises(ValueError, match="no convolution"):
        plot_filters([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="deep"):
        plot_filters(two, tmp_path / "x.png", deep="max")
