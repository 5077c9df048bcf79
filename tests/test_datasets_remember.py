"""Data found once is found again: verified files from --data-dir are placed in the cache."""
from __future__ import annotations

import os

import pytest

from fastcnn.data import DataError, load_dataset
from fastcnn.datasets.remember import remember_files


def test_files_are_linked_once_and_never_half_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.gz").write_bytes(b"aaa")
    (src / "b").write_bytes(b"bbb")
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / "b.gz").write_bytes(b"other form")             # already cached (gzipped): left alone
    assert remember_files([src / "a.gz", src / "b"], cache) == [cache / "a.gz"]
    assert (cache / "a.gz").read_bytes() == b"aaa" and not (cache / "b").exists()
    assert os.stat(cache / "a.gz").st_ino == os.stat(src / "a.gz").st_ino          # a hard link, not a copy
    assert remember_files([src / "a.gz"], cache) == []                              # once
    assert remember_files([src / "a.gz"], src) == []                                # never onto itself
    assert sorted(p.name for p in cache.iterdir()) == ["a.gz", "b.gz"]              # no temporary files
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert remember_files([src / "b"], blocked) == []                               # best effort


def test_mnist_from_data_dir_is_found_again_without_it(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    first = load_dataset("mnist", data_dir=mnist_dir, cache_dir=cache, splits=("test",))
    assert len(list(cache.iterdir())) == 2                                          # the test split's files
    again = load_dataset("mnist", cache_dir=cache, download=False, splits=("test",))
    assert again.source_dir == cache.absolute() and (again.x_test == first.x_test).all()
    with pytest.raises(DataError, match="not found"):                               # the training files were not
        load_dataset("mnist", cache_dir=cache, download=False)
