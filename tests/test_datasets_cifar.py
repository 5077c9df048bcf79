"""The CIFAR-10 reader (fastcnn.datasets.cifar) on files written in the published binary format."""
from __future__ import annotations

import functools
import hashlib
import io
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fastcnn.data import DataError
from fastcnn.datasets import cifar
from fastcnn.datasets.cifar import CIFAR10_CLASSES, load_cifar10


def _batch(n, seed):
    """n records: label byte, then the red, green and blue 32x32 planes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return records.tobytes(), images, labels


def _files(n=4):
    files, train_x, train_y = {}, [], []
    for i in range(1, 6):
        files[f"data_batch_{i}.bin"], x, y = _batch(n, i)
        train_x.append(x)
        train_y.append(y)
    files["test_batch.bin"], test_x, test_y = _batch(3, 9)
    files["batches.meta.txt"] = ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()
    return files, (np.concatenate(train_x), np.concatenate(train_y), test_x, test_y)


def _write_folder(folder, files):
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _write_archive(path, files, extra=()):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in [*extra, *((f"cifar-10-batches-bin/{n}", d) for n, d in files.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check(d, expected):
    x_train, y_train, x_test, y_test = expected
    assert d.name == "cifar10" and d.classes == CIFAR10_CLASSES
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_train.dtype == np.uint8
    assert np.array_equal(d.x_train, x_train) and np.array_equal(d.y_train, y_train)
    assert np.array_equal(d.x_test, x_test) and np.array_equal(d.y_test, y_test)
    assert d.normalization.channels == 3


def test_extracted_folder(tmp_path):
    files, expected = _files()
    _write_folder(tmp_path / "cifar-10-batches-bin", files)
    _check(load_cifar10(tmp_path, cache_dir=tmp_path / "cache"), expected)
    _check(load_cifar10(tmp_path / "cifar-10-batches-bin", cache_dir=tmp_path / "cache"), expected)
    assert not (tmp_path / "cache").exists()          # an unverified folder is not remembered


def test_verified_archive_is_remembered(tmp_path, monkeypatch):
    files, expected = _files()
    md5 = _write_archive(tmp_path / "cifar-10-binary.tar.gz", files)
    cache = tmp_path / "cache"
    _check(load_cifar10(tmp_path / "cifar-10-binary.tar.gz", cache_dir=cache, md5=md5), expected)
    assert (cache / "cifar-10-binary.tar.gz").read_bytes() == (tmp_path / "cifar-10-binary.tar.gz").read_bytes()
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    _check(load_cifar10(cache_dir=cache, md5=md5, download=False), expected)       # found again, no flag
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_cifar10(tmp_path, cache_dir=cache)                                    # the published MD5
    assert "\n" not in str(e.value)


def test_archive_members_are_never_extracted(tmp_path):
    files, expected = _files()
    evil = [("../../escaped.bin", b"x"), ("/tmp/absolute.bin", b"y")]
    _write_archive(tmp_path / "a.tar.gz", files, extra=evil)
    _check(load_cifar10(tmp_path / "a.tar.gz", md5=None, cache_dir=tmp_path / "cache"), expected)
    assert not (tmp_path.parent / "escaped.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


@pytest.mark.parametrize("name, data, message", [
    ("data_batch_3.bin", b"\x00" * 3000, "not a whole number of 3073-byte"),
    ("test_batch.bin", bytes([10]) + b"\x00" * 3072, "label 10 out of range"),
    ("batches.meta.txt", b"cat\ndog\n", "expected 10 class names"),
    ("data_batch_1.bin", b"\x00" * (3073 * 10_001), "more than CIFAR-10's 30730000"),
])
def test_damaged_files(tmp_path, name, data, message):
    files, _ = _files()
    files[name] = data
    _write_folder(tmp_path / "f", files)
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path / "f", cache_dir=tmp_path / "cache")
    _write_archive(tmp_path / "a.tar.gz", files)
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path / "a.tar.gz", md5=None, cache_dir=tmp_path / "cache")


def test_missing_and_not_an_archive(tmp_path):
    files, _ = _files()
    del files["data_batch_5.bin"]
    _write_folder(tmp_path / "f", files)
    with pytest.raises(DataError, match="lacks data_batch_5.bin"):
        load_cifar10(tmp_path / "f", cache_dir=tmp_path / "cache")
    _write_archive(tmp_path / "a.tar.gz", files)
    with pytest.raises(DataError, match="the archive lacks data_batch_5.bin"):
        load_cifar10(tmp_path / "a.tar.gz", md5=None, cache_dir=tmp_path / "cache")
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read the archive"):
        load_cifar10(tmp_path / "junk.tar.gz", md5=None, cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds neither"):
        load_cifar10(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_offline_and_download(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^CIFAR-10 not found \(download disabled\): pass --data-dir"):
        load_cifar10(cache_dir=cache, download=False)
    with pytest.raises(DataError, match=r"^CIFAR-10 not found and its download failed: pass --data-dir"):
        load_cifar10(cache_dir=cache, url="http://127.0.0.1:9/cifar-10-binary.tar.gz", timeout=5)
    assert not list(cache.glob("*"))                  # no partial file left
    files, expected = _files()
    served = tmp_path / "site"
    served.mkdir()
    md5 = _write_archive(served / "cifar-10-binary.tar.gz", files)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"
        with pytest.raises(DataError, match="checksum mismatch"):
            load_cifar10(cache_dir=cache, url=url)
        assert not list(cache.glob("*"))
        _check(load_cifar10(cache_dir=cache, url=url, md5=md5), expected)
        server.shutdown()
    assert (cache / "cifar-10-binary.tar.gz").is_file()
    monkeypatch.setattr(cifar, "CIFAR10_BYTES", 10)
    with pytest.raises(DataError, match="refused: more than the published 10 bytes"):
        cifar._download(tmp_path / "c2", "file://" + str(served / "cifar-10-binary.tar.gz"), None, 5)
