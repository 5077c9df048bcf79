"""Tests for fastcnn.data: IDX parsing and validation, folder search order, checksums, downloads
(against a local HTTP server on 127.0.0.1 only) and the real MNIST files when they are present."""
from __future__ import annotations

import functools
import gzip
import hashlib
import re
import socket
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data import (
    DATASETS,
    FASHION_MNIST,
    MNIST,
    DataError,
    DatasetSpec,
    FileSpec,
    find_data_dir,
    load_dataset,
    read_idx,
    to_float,
)

from helpers import subprocess_env

NAMES = [f.name for f in MNIST.files]


# ------------------------------------------------------------------------------------------ helpers

def idx_bytes(arr):
    """The IDX encoding (unsigned bytes) of ``arr``."""
    arr = np.asarray(arr, dtype=np.uint8)
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return b"\x00\x00\x08" + bytes([arr.ndim]) + dims + arr.tobytes()


def write_idx(path, arr, gz=None, level=9):
    """Write ``arr`` as IDX to ``path``, gzipped when ``gz`` (default: when the name ends in .gz)."""
    payload = idx_bytes(arr)
    if gz if gz is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=level, mtime=0)
    path.write_bytes(payload)
    return path


def make_arrays(seed=0, n_train=6, n_test=4, hw=(4, 5)):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, *hw), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, *hw), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))


def make_dataset(directory, arrays=None, gz=True, level=9):
    """Write a small dataset (MNIST's four file names) into ``directory``; return its four arrays."""
    arrays = make_arrays() if arrays is None else arrays
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(NAMES, arrays):
        write_idx(directory / (name if gz else name[:-3]), arr, gz=gz, level=level)
    return arrays


def tiny_spec(arrays, mirrors=(), name="tiny", algorithm="sha256"):
    """A DatasetSpec whose checksums are those of the decompressed bytes of ``arrays``."""
    files = [FileSpec(n, hashlib.new(algorithm, idx_bytes(a)).hexdigest(), algorithm)
             for n, a in zip(NAMES, arrays)]
    return DatasetSpec(name, *files, mirrors=tuple(mirrors))


def assert_loaded(ds, arrays):
    xi, yi, xt, yt = arrays
    assert ds.x_train.shape == (len(xi), 1, *xi.shape[1:]) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (len(xt), 1, *xt.shape[1:]) and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[:, 0], xi)
    np.testing.assert_array_equal(ds.y_train, yi)
    np.testing.assert_array_equal(ds.x_test[:, 0], xt)
    np.testing.assert_array_equal(ds.y_test, yt)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No FASTCNN_DATA_DIR, a private XDG cache, and no proxies (downloads stay on 127.0.0.1)."""
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server(tmp_path, request):
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving that folder; shut down afterwards."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    request.addfinalizer(stop)
    return root, f"http://127.0.0.1:{httpd.server_address[1]}/"


@pytest.fixture
def dead_url():
    """A URL on 127.0.0.1 where nothing listens (a port bound and closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3)])
def test_read_idx_roundtrip(tmp_path, gz, shape):
    arr = np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(np.uint8)
    out = read_idx(write_idx(tmp_path / "f.idx", arr, gz=gz))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    out[...] = 0  # the result is an ordinary writable array


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "gz-without-suffix", arr, gz=True)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "raw-with-suffix.gz", arr, gz=False)), arr)


def corrupt(kind):
    good = idx_bytes(np.zeros((3, 4, 5), np.uint8))
    return {"truncated": good[:-7], "trailing": good + b"xyz", "type": good[:2] + b"\x0b" + good[3:],
            "first_bytes": b"\x01" + good[1:], "zero_ndim": b"\x00\x00\x08\x00",
            "many_ndim": b"\x00\x00\x08\xff" + b"\x00\x00\x00\x01" * 255 + b"x", "short_header": good[:9],
            "tiny": b"\x00\x00"}[kind]


@pytest.mark.parametrize("kind, message", [
    ("truncated", r"truncated: header says 3x4x5 = 60 bytes of data, found 53"),
    ("trailing", r"trailing bytes: header says 3x4x5 = 60 bytes of data, found 63 \(3 extra\)"),
    ("type", r"unsupported IDX data type 0x0b \(only 0x08 = unsigned byte"),
    ("first_bytes", r"bad magic number 0x01000803: the first two bytes must be zero"),
    ("zero_ndim", r"bad magic number 0x00000800: 0 dimensions \(not an IDX file\?\)"),
    ("many_ndim", r"bad magic number 0x000008ff: 255 dimensions"),          # NumPy's ValueError escaped
    ("short_header", r"truncated header: 3 dimensions need 16 bytes, found 9"),
    ("tiny", r"too short for an IDX header \(2 bytes\)"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_malformed(tmp_path, kind, message, gz):
    path = tmp_path / f"bad-{kind}-idx3-ubyte"
    payload = corrupt(kind)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        read_idx(path)


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_read_idx_rejects_bad_gzip(tmp_path, damage):
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    payload = b"\x1f\x8b" + b"not gzip at all" if damage == "garbage" else good[: len(good) // 2]
    path = tmp_path / "labels.gz"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": corrupt gzip data"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope")) + ": cannot read"):
        read_idx(tmp_path / "nope")


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# -------------------------------------------------------------------------------- custom datasets

@pytest.mark.parametrize("gz", [True, False])
def test_custom_dataset_loads(tmp_path, gz):
    arrays = make_dataset(tmp_path / "d", gz=gz)
    ds = load_dataset("custom", data_dir=tmp_path / "d")
    assert_loaded(ds, arrays)
    assert ds.name == "custom" and ds.source_dir == tmp_path / "d"
    assert ds.num_classes == int(max(arrays[1].max(), arrays[3].max())) + 1


def test_custom_labels_may_exceed_ten(tmp_path):
    xi, yi, xt, yt = make_arrays()
    yi[0] = 42
    make_dataset(tmp_path / "d", (xi, yi, xt, yt))
    assert load_dataset("custom", data_dir=tmp_path / "d").num_classes == 43


def test_custom_needs_a_folder(tmp_path):
    make_dataset(data.default_cache_dir("custom"))  # the cache is never consulted for custom
    with pytest.raises(DataError, match=r"custom dataset needs a folder: pass --data-dir DIR or set FASTCNN_DATA_DIR"):
        load_dataset("custom")


def test_custom_from_env_var(tmp_path, monkeypatch):
    arrays = make_dataset(tmp_path / "env")
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(tmp_path / "env"))
    assert_loaded(load_dataset("custom"), arrays)


def test_count_mismatch(tmp_path):
    xi, yi, xt, yt = make_arrays()
    make_dataset(tmp_path / "d", (xi, yi[:-1], xt, yt))
    pattern = re.escape(str(tmp_path / "d" / NAMES[1])) + r": count mismatch: 6 images but 5 labels"
    with pytest.raises(DataError, match=pattern):
        load_dataset("custom", data_dir=tmp_path / "d")


def test_images_must_be_3d(tmp_path):
    xi, yi, xt, yt = make_arrays()
    make_dataset(tmp_path / "d", (xi, yi, xt.reshape(len(xt), -1), yt))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "d" / NAMES[2])) + r": expected 3-D images"):
        load_dataset("custom", data_dir=tmp_path / "d")


def test_train_and_test_image_sizes_must_agree(tmp_path):
    xi, yi, _, yt = make_arrays()
    make_dataset(tmp_path / "d", (xi, yi, np.zeros((len(yt), 5, 4), np.uint8), yt))
    with pytest.raises(DataError, match=r"image size mismatch: train \(4, 5\) vs test \(5, 4\)"):
        load_dataset("custom", data_dir=tmp_path / "d")


def test_labels_out_of_range_for_ten_classes(tmp_path):
    xi, yi, xt, yt = make_arrays()
    yt[1] = 10
    spec = DatasetSpec("tiny", *(FileSpec(n) for n in NAMES))
    make_dataset(tmp_path / "d", (xi, yi, xt, yt))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "d" / NAMES[3])) + r": label 10 out of range 0..9"):
        load_dataset(spec, data_dir=tmp_path / "d")


def test_unknown_dataset_name():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'"):
        load_dataset("cifar")


# --------------------------------------------------------------------------------- where to look

def test_search_order(tmp_path, monkeypatch):
    spec = DatasetSpec("tiny", *(FileSpec(n) for n in NAMES))  # no checksums, no mirrors
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", data.default_cache_dir("tiny")
    assert cache == tmp_path / "xdg" / "fastcnn" / "tiny"
    content = {d: make_dataset(d, make_arrays(seed=i)) for i, d in enumerate((explicit, env, cache))}
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(env))

    assert find_data_dir(spec, explicit) == explicit
    assert_loaded(load_dataset(spec, data_dir=explicit), content[explicit])
    assert find_data_dir(spec) == env
    assert_loaded(load_dataset(spec), content[env])
    monkeypatch.delenv("FASTCNN_DATA_DIR")
    assert find_data_dir(spec) == cache
    ds = load_dataset(spec)
    assert_loaded(ds, content[cache])
    assert ds.source_dir == cache


def test_home_cache_when_xdg_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir("mnist") == tmp_path / "home" / ".cache" / "fastcnn" / "mnist"


def test_incomplete_env_folder_is_skipped(tmp_path, monkeypatch):
    spec = DatasetSpec("tiny", *(FileSpec(n) for n in NAMES))
    env, cache = tmp_path / "env", data.default_cache_dir("tiny")
    make_dataset(env)
    (env / NAMES[3]).unlink()
    arrays = make_dataset(cache, make_arrays(seed=5), gz=False)  # raw files count too
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(env))
    assert find_data_dir(spec) == cache
    assert_loaded(load_dataset(spec), arrays)


# An explicit folder is binding: whatever it lacks, neither $FASTCNN_DATA_DIR nor the cache nor a
# download stands in for it (each alternative below holds a complete, valid dataset).
EXPLICIT_CASES = [
    ("empty", [], r"--data-dir \S+ lacks all 4 IDX files \(train-images-idx3-ubyte.gz, ...\)"),
    ("no_test_labels", NAMES[:3], r"--data-dir \S+ lacks t10k-labels-idx1-ubyte.gz: put the .+ files there"),
    ("no_train_images", NAMES[1:], r"--data-dir \S+ lacks train-images-idx3-ubyte.gz: put the .+ files there"),
]


@pytest.mark.parametrize("dataset", ["custom", "mnist"])
@pytest.mark.parametrize("case, keep, message", EXPLICIT_CASES, ids=[c[0] for c in EXPLICIT_CASES])
def test_explicit_data_dir_is_binding(tmp_path, monkeypatch, server, dataset, case, keep, message):
    root, url = server
    arrays = make_dataset(root)
    make_dataset(tmp_path / "env", arrays)
    make_dataset(tmp_path / "cache", arrays)
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(tmp_path / "env"))
    explicit = tmp_path / "explicit"
    make_dataset(explicit, arrays)
    for name in set(NAMES) - set(keep):
        (explicit / name).unlink()
    with pytest.raises(DataError, match=message) as info:
        load_dataset(dataset, data_dir=explicit, cache_dir=tmp_path / "cache", mirrors=[url], timeout=5)
    first, *details = str(info.value).splitlines()
    assert len(first) < 200 + len(str(explicit)) and "or pass another folder" in first
    assert details == [f"missing: {', '.join(n for n in NAMES if n not in keep)}"]
    assert sorted(p.name for p in explicit.iterdir()) == sorted(keep)        # nothing downloaded into it


def test_explicit_data_dir_is_binding_for_the_test_split_too(tmp_path, monkeypatch):
    arrays = make_dataset(tmp_path / "env")
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(tmp_path / "env"))
    make_dataset(tmp_path / "explicit", arrays)
    (tmp_path / "explicit" / NAMES[2]).unlink()
    with pytest.raises(DataError, match=r"lacks t10k-images-idx3-ubyte.gz"):
        load_dataset("custom", data_dir=tmp_path / "explicit", splits=("test",))
    # the training split alone is complete there
    ds = load_dataset("custom", data_dir=tmp_path / "explicit", splits=("train",))
    assert ds.x_test is None and ds.source_dir == tmp_path / "explicit"


def test_test_split_alone_needs_only_the_t10k_files(tmp_path):
    arrays = make_dataset(tmp_path / "d")
    for name in NAMES[:2]:
        (tmp_path / "d" / name).unlink()
    ds = load_dataset(tiny_spec(arrays), data_dir=tmp_path / "d", splits=("test",))
    assert ds.x_train is None and ds.y_train is None
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays[2])
    np.testing.assert_array_equal(ds.y_test, arrays[3])
    assert ds.num_classes == int(arrays[3].max()) + 1


def test_missing_everywhere_without_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTCNN_DATA_DIR", "env")
    (tmp_path / "env").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", download=False, cache_dir="cache")
    first, *details = str(info.value).splitlines()
    assert first == ("MNIST not found (download disabled): set FASTCNN_DATA_DIR to the folder that holds the "
                     "IDX files (now: a folder missing 4 of 4) or pass --data-dir DIR (looked in: env, cache)")
    assert f"  env (FASTCNN_DATA_DIR): missing {NAMES[0]}, {NAMES[1]}, {NAMES[2]}, {NAMES[3]}" in details
    assert "  cache (cache): no such directory" in details
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------------ checksums

def test_checksum_mismatch_on_disk(tmp_path):
    arrays = make_dataset(tmp_path / "d")
    spec = tiny_spec(arrays)
    assert_loaded(load_dataset(spec, data_dir=tmp_path / "d"), arrays)
    xi, *rest = arrays
    xi = xi.copy()
    xi[0, 0, 0] ^= 1
    write_idx(tmp_path / "d" / NAMES[0], xi)
    expected = spec.train_images.digest
    actual = hashlib.sha256(idx_bytes(xi)).hexdigest()
    pattern = (re.escape(str(tmp_path / "d" / NAMES[0])) + rf": checksum mismatch \(not tiny's file\): sha256 "
               rf"{actual[:12]}\.\.\., expected {expected[:12]}\.\.\.\nexpected sha256 {expected} of the "
               f"decompressed data, got {actual}")
    with pytest.raises(DataError, match=pattern):
        load_dataset(spec, data_dir=tmp_path / "d")
    assert_loaded(load_dataset(spec, data_dir=tmp_path / "d", verify=False), (xi, *rest))


def test_data_digest_accepts_any_gzip_wrapper_and_raw(tmp_path):
    arrays = make_arrays()
    spec = tiny_spec(arrays, algorithm="md5")
    make_dataset(tmp_path / "a", arrays, level=1)
    make_dataset(tmp_path / "b", arrays, level=9)
    make_dataset(tmp_path / "c", arrays, gz=False)
    assert (tmp_path / "a" / NAMES[0]).read_bytes() != (tmp_path / "b" / NAMES[0]).read_bytes()
    for d in "abc":
        assert_loaded(load_dataset(spec, data_dir=tmp_path / d), arrays)


@pytest.mark.parametrize("container", ["gz-level-1", "gz-two-members", "raw"])
def test_any_container_of_wrong_content_is_refused(tmp_path, container):
    # A raw or re-gzipped copy is verified like the original: the digest is of the decompressed bytes.
    arrays = make_arrays()
    spec = tiny_spec(arrays)
    bad = arrays[2].copy()
    bad[0, 0, 0] ^= 1
    path = tmp_path / "d" / (NAMES[2] if container != "raw" else NAMES[2][:-3])
    make_dataset(tmp_path / "d", arrays, gz=container != "raw")
    payload = idx_bytes(bad)
    if container == "gz-level-1":
        payload = gzip.compress(payload, compresslevel=1)
    elif container == "gz-two-members":
        payload = gzip.compress(payload[:10]) + gzip.compress(payload[10:])
    path.write_bytes(payload)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": checksum mismatch \(not tiny's file\): sha256 "
                                        r"\w{12}\.\.\., expected " + spec.test_images.digest[:12]):
        load_dataset(spec, data_dir=tmp_path / "d")


def test_filespec_validates():
    with pytest.raises(ValueError):
        FileSpec("x.gz", "0" * 32, "nosuchhash")


def test_registry():
    assert DATASETS == {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}
    assert [f.name for f in FASHION_MNIST.files] == NAMES
    assert MNIST.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/" and len(MNIST.mirrors) == 3
    for spec in (MNIST, FASHION_MNIST):             # every digest is a SHA-256 of decompressed bytes
        assert all(f.algorithm == "sha256" and re.fullmatch(r"[0-9a-f]{64}", f.digest) for f in spec.files)
    assert FASHION_MNIST.train_images.digest.startswith("c59f468a")
    assert (MNIST.title, FASHION_MNIST.title) == ("MNIST", "Fashion-MNIST")
    assert MNIST.classes is None and FASHION_MNIST.classes[9] == "Ankle boot"
    with pytest.raises(AttributeError):
        MNIST.name = "x"  # frozen


# ------------------------------------------------------------------------------------- downloads

def test_download_into_cache(server, tmp_path, dead_url):
    root, url = server
    arrays = make_dataset(root)
    cache = tmp_path / "cache" / "tiny"
    ds = load_dataset(tiny_spec(arrays, [url]), cache_dir=cache, timeout=5)
    assert_loaded(ds, arrays)
    assert ds.source_dir == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)
    for n in NAMES:
        assert (cache / n).read_bytes() == (root / n).read_bytes()
    # second time: served from the cache, the network is not needed
    assert_loaded(load_dataset(tiny_spec(arrays, [dead_url]), cache_dir=cache, timeout=5), arrays)


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    root, url = server
    make_dataset(root)                            # the server holds the real files
    spec = tiny_spec(make_arrays(seed=1), [url])  # checksums of different content
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"download failed(?s:.*)checksum mismatch") as info:
        load_dataset(spec, cache_dir=cache, timeout=5)
    assert url + NAMES[0] in str(info.value)
    assert not cache.exists()  # no file, no temp file, not even the folder it created


def test_download_keeps_verified_files_only(server, tmp_path):
    root, url = server
    arrays = make_dataset(root)
    spec = tiny_spec(arrays, [url])
    bad = FileSpec(NAMES[2], "0" * 64)
    spec = DatasetSpec("tiny", spec.train_images, spec.train_labels, bad, spec.test_labels, mirrors=(url,))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=re.escape(NAMES[2]) + r": .*checksum mismatch"):
        load_dataset(spec, cache_dir=cache, timeout=5)
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES[:2])  # verified ones stay, atomically


def test_server_down(tmp_path, monkeypatch, dead_url):
    monkeypatch.chdir(tmp_path)
    env, cache = Path("env"), Path("cache")
    make_dataset(env)
    (env / NAMES[1]).unlink()
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(env))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", cache_dir=cache, mirrors=[dead_url], timeout=5)
    first, *details = str(info.value).splitlines()
    assert first == (f"MNIST not found and no network: set FASTCNN_DATA_DIR to the folder that holds the IDX "
                     f"files (now: a folder missing 1 of 4) or pass --data-dir DIR (looked in: {env}, {cache})")
    assert f"  {env} (FASTCNN_DATA_DIR): missing {NAMES[1]}" in details
    assert f"  {cache} (cache): no such directory" in details      # the folder it created is gone again
    assert any(dead_url + NAMES[0] in line and "refused" in line.lower() for line in details)
    assert not cache.exists()


@pytest.mark.parametrize("via", ["--data-dir", "FASTCNN_DATA_DIR"])
def test_a_folder_one_level_above_the_data_is_pointed_down(tmp_path, monkeypatch, via):
    make_dataset(tmp_path / "data" / "mnist")
    (tmp_path / "data" / "other").mkdir()
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "data" if via == "--data-dir" else None, download=False,
                     cache_dir=tmp_path / "cache")
    first = str(info.value).splitlines()[0]
    if via == "--data-dir":
        assert first == (f"--data-dir {tmp_path / 'data'} lacks all 4 IDX files ({NAMES[0]}, ...): pass --data-dir "
                         f"{tmp_path / 'data' / 'mnist'}, the subfolder that holds them")
    else:
        assert first.startswith("MNIST not found (download disabled): set "
                                f"FASTCNN_DATA_DIR={tmp_path / 'data' / 'mnist'}, the subfolder that holds the files")


def test_a_file_given_as_the_data_folder_is_named_as_such(tmp_path):
    (tmp_path / "README.md").write_text("not data")
    with pytest.raises(DataError, match=r"README.md: is a file, not a folder: pass the folder that holds"):
        load_dataset("mnist", data_dir=tmp_path / "README.md", download=False)


def test_no_data_error_first_line_stays_short(tmp_path, monkeypatch, dead_url):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8)
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(deep))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", cache_dir=deep / "cache", mirrors=[dead_url], timeout=5)
    first, *details = str(info.value).splitlines()
    assert len(first) <= 200
    assert first.startswith("MNIST not found and no network: set FASTCNN_DATA_DIR to the folder that holds the "
                            "IDX files (now: a folder missing 4 of 4) or pass --data-dir DIR")
    assert any(str(deep) in line for line in details)


def test_download_error_that_is_not_the_network(server, tmp_path):
    _, url = server
    with pytest.raises(DataError) as info:
        load_dataset(tiny_spec(make_arrays(), [url + "a/"]), cache_dir=tmp_path / "c", timeout=5)
    assert str(info.value).startswith("tiny not found and its download failed: pass --data-dir DIR")


def test_mirror_fallback(server, tmp_path):
    root, url = server
    arrays = make_dataset(root / "good")
    ds = load_dataset(tiny_spec(arrays, [url + "missing/", url + "good/"]), cache_dir=tmp_path / "c", timeout=5)
    assert_loaded(ds, arrays)


def test_a_mirror_serving_a_web_page_is_left_at_its_first_bytes(server, tmp_path):
    root, url = server
    arrays = make_dataset(root / "good")
    (root / "portal").mkdir()
    for name in NAMES:                     # a captive portal: the same page for every file, of any size
        (root / "portal" / name).write_bytes(b"<html>" + b" " * (4 << 20))
    ds = load_dataset(tiny_spec(arrays, [url + "portal/", url + "good/"]), cache_dir=tmp_path / "c", timeout=5)
    assert_loaded(ds, arrays)
    with pytest.raises(DataError, match=re.escape(f"{url}portal/{NAMES[0]}: not an IDX file, gzipped or raw "
                                                  "(it starts with b'<html>")):
        load_dataset(tiny_spec(arrays, [url + "portal/"]), cache_dir=tmp_path / "d", timeout=5)


def test_a_bad_content_length_does_not_stop_the_download(tmp_path):
    arrays = make_arrays()
    blobs = {f"/{n}": gzip.compress(idx_bytes(a)) for n, a in zip(NAMES, arrays)}

    class BadLength(SimpleHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "abc")
            self.end_headers()
            self.wfile.write(blobs[self.path])
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BadLength)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        assert_loaded(load_dataset(tiny_spec(arrays, [url]), cache_dir=tmp_path / "c", timeout=5), arrays)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_killed_downloads_temporary_file_is_removed_once_stale(server, tmp_path):
    import os
    import time
    root, url = server
    arrays = make_dataset(root)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, fresh = cache / f".{NAMES[0]}.abcd1234.part", cache / f".{NAMES[1]}.abcd1234.part"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"x" * 1000)                  # perhaps another process's download in progress
    from fastcnn.download import _STALE_PART_SECONDS
    old = time.time() - 2 * _STALE_PART_SECONDS
    os.utime(stale, (old, old))
    assert_loaded(load_dataset(tiny_spec(arrays, [url]), cache_dir=cache, timeout=5), arrays)
    assert not stale.exists() and fresh.exists()


def test_a_damaged_file_in_the_cache_says_to_delete_it(server, tmp_path):
    root, url = server
    arrays = make_dataset(root)
    cache = tmp_path / "cache"
    load_dataset(tiny_spec(arrays, [url]), cache_dir=cache, timeout=5)
    damaged = cache / NAMES[2]
    damaged.write_bytes(damaged.read_bytes()[:-10])                 # a cut-off gzip stream
    with pytest.raises(DataError, match=re.escape(str(damaged)) + r": .*\(delete it to download it again\)"):
        load_dataset(tiny_spec(arrays, [url]), cache_dir=cache, timeout=5)


def test_all_mirrors_404(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match=r"(?s)" + re.escape(url) + r"a/train-images-idx3-ubyte.gz: HTTP Error 404.*"
                                        + re.escape(url) + r"b/train-images-idx3-ubyte.gz: HTTP Error 404"):
        load_dataset(tiny_spec(make_arrays(), [url + "a/", url + "b/"]), cache_dir=tmp_path / "c", timeout=5)


# ------------------------------------------------------------------------------------------ to_float

def test_to_float():
    x = np.array([0, 255, 51], np.uint8).reshape(1, 1, 1, 3)
    out = to_float(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.ravel(), [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081, (0.2 - 0.1307) / 0.3081],
                               rtol=1e-6)
    plain = to_float(x, np.float64, mean=0.0, std=1.0)
    assert plain.dtype == np.float64
    np.testing.assert_allclose(plain.ravel(), [0.0, 1.0, 0.2], rtol=1e-12)
    # Float images (from a .npz) are taken as already on the [0, 1] scale; other types are refused.
    np.testing.assert_allclose(to_float(x / 255.0), out, rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        to_float(x.astype(np.int32))


# ------------------------------------------------------------------------------------- real MNIST

def test_real_mnist(mnist_dir, tmp_path):
    ds = load_dataset("mnist", data_dir=mnist_dir, download=False, verify=True, cache_dir=tmp_path / "c")
    assert ds.source_dir == mnist_dir and ds.name == "mnist"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.y_train.shape == (60000,)
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.y_test.shape == (10000,)
    assert ds.x_train.min() == 0 and ds.x_train.max() == 255
    counts = np.bincount(ds.y_train, minlength=10)
    assert len(counts) == 10 and counts.min() >= 5000 and counts.max() <= 7000, counts
    assert np.bincount(ds.y_test, minlength=10).min() >= 800
    assert ds.num_classes == 10
    x = to_float(ds.x_train[:10000])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # the documented mean/std fit


def test_explicit_data_dir_that_does_not_exist_is_an_error_not_skipped(tmp_path, monkeypatch):
    # Even with a valid $FASTCNN_DATA_DIR to fall back on, a mistyped folder must be reported.
    good = tmp_path / "good"
    good.mkdir()
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(good))
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("custom", data_dir=tmp_path / "typo", download=False)


# ------------------------------------------------------------------------ bounded, streamed reading

def gzip_bomb(path, dims, zeros):
    """A gzip file: the IDX header declaring ``dims``, then ``zeros`` zero bytes (rounded up to whole
    64 MiB members, each compressed once and repeated: a few MB on disk for gigabytes of data)."""
    unit = 64 << 20
    member = gzip.compress(b"\0" * unit, compresslevel=9, mtime=0)
    head = b"\x00\x00\x08" + bytes([len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    with open(path, "wb") as f:
        f.write(gzip.compress(head, mtime=0))
        f.writelines(member for _ in range(-(-zeros // unit)))
    return path


# (declared dims, zero bytes that follow, message): each file is ~4 MB of gzip holding 4 GiB.
BOMBS = [
    ((10**9, 28, 28), 4 << 30, (r"refused: header says 1000000000x28x28 = 784000000000 bytes of data, more "
                                r"than a \d+-byte gzip file can hold \(damaged or forged file\)")),
    ((4_000_000, 28, 28), 4 << 30, (r"refused: header says 4000000x28x28 = 3136000000 bytes of data, more "
                                    r"than the 1073741824 bytes fastcnn reads from one file")),
    ((60_000, 28, 28), 4 << 30, (r"trailing bytes: header says 60000x28x28 = 47040000 bytes of data, found "
                                 r"\d+\+ \(at least \d+ extra\)")),
]

_PEAK_RSS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))   # a runaway allocation fails, not the machine
from fastcnn.data import DataError, read_idx
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_idx(sys.argv[1])
except DataError as exc:
    print(exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)   # peak growth, MiB
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and RLIMIT_AS as on Linux")
@pytest.mark.parametrize("dims, zeros, message", BOMBS, ids=["1e9-images", "over-the-maximum", "trailing"])
def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path, dims, zeros, message):
    path = gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", dims, zeros)
    assert path.stat().st_size < 8 << 20
    env = subprocess_env()
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], check=False, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    error, growth_mib = proc.stdout.splitlines()
    assert re.fullmatch(re.escape(str(path)) + ": " + message, error), error
    # Reading may hold the buffer the header declares when it is plausible (47 MB here) and a few
    # chunks; the 4 GiB behind it are never held.
    declared = int(np.prod(dims))
    limit_mib = 16 + (declared >> 20 if declared <= data.MAX_IDX_BYTES else 0)
    assert int(growth_mib) < limit_mib, (growth_mib, error)


def test_raw_file_declaring_more_than_it_holds_is_truncated_not_allocated(tmp_path, monkeypatch):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + (10**9).to_bytes(4, "big") + bytes(10))
    allocations = []
    real_empty = np.empty
    monkeypatch.setattr(data.np, "empty", lambda n, *a, **k: allocations.append(n) or real_empty(n, *a, **k))
    with pytest.raises(DataError, match=r"truncated: header says 1000000000 = 1000000000 bytes of data, found 10"):
        read_idx(path)
    assert allocations == []


def test_multi_member_gzip_reads_whole(tmp_path):
    arr = np.arange(3000, dtype=np.int64).reshape(30, 10, 10).astype(np.uint8)
    payload = idx_bytes(arr)
    path = tmp_path / "x.gz"
    path.write_bytes(b"".join(gzip.compress(payload[i:i + 777]) for i in range(0, len(payload), 777)))
    np.testing.assert_array_equal(read_idx(path), arr)


# ----------------------------------------------------------------- what a dataset's files must hold

def one_class(arrays):
    xi, yi, xt, yt = arrays
    return xi, np.full_like(yi, 3), xt, yt


# (what to change in the four arrays, error pattern): each split checked on its own.
SPLIT_CASES = [
    ("train_count", lambda a: (a[0], a[1][:-1], a[2], a[3]),
     r"{d}/train-images-idx3-ubyte.gz, {d}/train-labels-idx1-ubyte.gz: count mismatch: 6 images but 5 labels"),
    ("test_count", lambda a: (a[0], a[1], a[2], a[3][:-1]),
     r"{d}/t10k-images-idx3-ubyte.gz, {d}/t10k-labels-idx1-ubyte.gz: count mismatch: 4 images but 3 labels"),
    ("test_count_more_labels", lambda a: (a[0], a[1], a[2][:-2], a[3]), r"count mismatch: 2 images but 4 labels"),
    ("train_0x0", lambda a: (np.zeros((6, 0, 0), np.uint8), *a[1:]),
     r"{d}/train-images-idx3-ubyte.gz: images are 0x0 pixels: an image needs at least 1x1"),
    ("test_0x0", lambda a: (*a[:2], np.zeros((4, 0, 0), np.uint8), a[3]),
     r"{d}/t10k-images-idx3-ubyte.gz: images are 0x0 pixels: an image needs at least 1x1"),
    ("test_5x0", lambda a: (*a[:2], np.zeros((4, 5, 0), np.uint8), a[3]), r"images are 5x0 pixels"),
    ("train_empty", lambda a: (np.zeros((0, 4, 5), np.uint8), np.zeros(0, np.uint8), *a[2:]),
     r"{d}/train-images-idx3-ubyte.gz: holds no images \(the train split is empty\)"),
    ("test_empty", lambda a: (*a[:2], np.zeros((0, 4, 5), np.uint8), np.zeros(0, np.uint8)),
     r"{d}/t10k-images-idx3-ubyte.gz: holds no images \(the test split is empty\)"),
    ("test_labels_2d", lambda a: (*a[:3], a[3].reshape(2, 2)), r"{d}/t10k-labels-idx1-ubyte.gz: expected 1-D labels"),
]


@pytest.mark.parametrize("case, change, message", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_each_split_is_checked(tmp_path, case, change, message):
    make_dataset(tmp_path / "d", change(make_arrays()))
    pattern = message.replace("{d}", re.escape(str(tmp_path / "d")))
    with pytest.raises(DataError, match=pattern):
        load_dataset("custom", data_dir=tmp_path / "d")
    split = "test" if case.startswith("test") else "train"
    with pytest.raises(DataError, match=pattern):          # the split loaded alone is checked too
        load_dataset("custom", data_dir=tmp_path / "d", splits=(split,))


@pytest.mark.parametrize("split", ["train", "test"])
def test_single_class_label_file_warns(tmp_path, split):
    xi, yi, xt, yt = make_arrays()
    if split == "train":
        yi = np.full_like(yi, 3)
    else:
        yt = np.full_like(yt, 3)
    make_dataset(tmp_path / "d", (xi, yi, xt, yt))
    name = NAMES[1] if split == "train" else NAMES[3]
    pattern = re.escape(str(tmp_path / "d" / name)) + rf": all \d+ {split} labels are 3: a single class"
    with pytest.warns(data.DataWarning, match=pattern):
        ds = load_dataset("custom", data_dir=tmp_path / "d")
    assert ds.num_classes == max(int(yi.max()), int(yt.max())) + 1


def test_two_classes_do_not_warn(tmp_path):
    xi, yi, xt, yt = make_arrays()
    make_dataset(tmp_path / "d", (xi, yi % 2, xt, yt % 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("custom", data_dir=tmp_path / "d")


# ------------------------------------------------------- data the command line refuses, in one line

def _custom(folder, hw, n_train=8, n_test=4):
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, *hw), dtype=np.uint8), np.arange(n_train, dtype=np.uint8) % 10,
              rng.integers(0, 256, (n_test, *hw), dtype=np.uint8), np.arange(n_test, dtype=np.uint8) % 10)
    make_dataset(folder, arrays, gz=False)
    return folder


# (image height x width, the one error line's pattern)
TRAIN_CLI_CASES = [
    ((0, 0), r"fastcnn-train: error: \S+/train-images-idx3-ubyte: images are 0x0 pixels: an image needs at least 1x1"),
    ((3, 3), (r"fastcnn-train: error: images of 3x3 pixels are too small for this network: its two 2x2 "
              r"max-poolings need at least 4x4 pixels \(MNIST's are 28x28\)")),
]


@pytest.mark.parametrize("hw, line", TRAIN_CLI_CASES, ids=["0x0", "3x3"])
def test_train_refuses_images_the_network_cannot_take(tmp_path, capsys, hw, line):
    from fastcnn.cli import train_main
    folder = _custom(tmp_path / "d", hw)
    code = train_main(["--dataset", "custom", "--data-dir", str(folder), "--epochs", "1", "--batch-size", "4",
                       "--backend", "numpy", "--plots-dir", str(tmp_path / "plots"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1 and re.fullmatch(line, err.strip()), err


def test_four_pixel_images_are_enough(tmp_path, capsys):
    from fastcnn.cli import train_main
    folder = _custom(tmp_path / "d", (4, 4))
    code = train_main(["--dataset", "custom", "--data-dir", str(folder), "--epochs", "1", "--batch-size", "4",
                       "--backend", "numpy", "--plots-dir", str(tmp_path / "plots"), "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_package_exports_the_loader(tmp_path):
    import fastcnn
    assert fastcnn.load_dataset is load_dataset and fastcnn.to_float is to_float
    assert fastcnn.DataError is DataError
    arrays = make_dataset(tmp_path / "d", tiny_arrays := make_arrays())
    assert arrays is tiny_arrays
    spec = tiny_spec(arrays)
    assert_loaded(fastcnn.load_dataset(spec, tmp_path / "d"), arrays)


def test_load_mnist(mnist_dir):
    import fastcnn
    ds = fastcnn.load_mnist(mnist_dir, splits=("test",))
    assert ds.name == "mnist" and ds.x_train is None and ds.x_test.shape == (10000, 1, 28, 28)


@pytest.mark.parametrize("where", ["data_dir", "env", "cache"])
def test_checksum_error_says_what_to_do_where_the_file_is(tmp_path, monkeypatch, where):
    # The real MNIST registry entry: a folder of other data is refused with a fix fitting its place.
    folder = {"data_dir": tmp_path / "d", "env": tmp_path / "env", "cache": tmp_path / "cache"}[where]
    make_dataset(folder)
    if where == "env":
        monkeypatch.setenv("FASTCNN_DATA_DIR", str(folder))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=folder if where == "data_dir" else None, cache_dir=tmp_path / "cache",
                     download=False)
    first = str(info.value).splitlines()[0]
    fix = ("delete it to download it again" if where == "cache"
           else "not MNIST's file; for other data use --dataset custom")
    assert first.startswith(f"{folder / NAMES[0]}: checksum mismatch ({fix}): sha256 "), first
    assert len(first) < 150 + len(str(folder / NAMES[0]))


# -------------------------------------------------- the no-data error, as every command prints it

def _no_data_commands(tmp_path):
    from fastcnn.benchmarks.cli import bench_main
    from fastcnn.checkpoint import save_checkpoint
    from fastcnn.cli import train_main
    from fastcnn.evaluate import eval_main
    from fastcnn.model import mnist_cnn
    model = tmp_path / "m.npz"
    save_checkpoint(model, mnist_cnn(backend="numpy"), None, epoch=0, history=[], config={}, rngs={},
                    model_kwargs={}, extra={"dataset": "mnist"})
    return {"fastcnn-train": lambda: train_main(["--epochs", "1", "--plots-dir", str(tmp_path / "p")]),
            "fastcnn-eval": lambda: eval_main([str(model), "--backend", "numpy", "--out", str(tmp_path / "e")]),
            "fastcnn-bench": lambda: bench_main(["--quick", "--out", str(tmp_path / "b")])}


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("prog", ["fastcnn-train", "fastcnn-eval", "fastcnn-bench"])
def test_no_data_error_is_short_and_fix_first(tmp_path, monkeypatch, capsys, dead_url, prog, verbose):
    monkeypatch.setitem(data.DATASETS, "mnist", data.replace(MNIST, mirrors=(dead_url, dead_url + "b/")))
    monkeypatch.setenv("XDG_CACHE_HOME", "xdg")
    monkeypatch.chdir(tmp_path)
    if verbose:
        monkeypatch.setenv("FASTCNN_VERBOSE", "1")
    else:
        monkeypatch.delenv("FASTCNN_VERBOSE", raising=False)
    assert _no_data_commands(tmp_path)[prog]() == 1
    first, *details = capsys.readouterr().err.splitlines()
    assert first == (f"{prog}: error: MNIST not found and no network: pass --data-dir DIR or set FASTCNN_DATA_DIR "
                     "(looked in: xdg/fastcnn/mnist)")
    if verbose:              # each mirror's error on its own line
        assert sum(dead_url in line and "refused" in line.lower() for line in details) == 2, details
    else:
        assert details == []
