"""Tests for fastcnn.data: IDX parsing and validation, folder search order, checksums, downloads
(against a local HTTP server on 127.0.0.1 only) and the real MNIST files when they are present."""
from __future__ import annotations

import functools
import gzip
import hashlib
import re
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from pathlib import Path

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data import (DATASETS, FASHION_MNIST, MNIST, DataError, DatasetSpec, FileSpec, find_data_dir,
                          load_dataset, read_idx, to_float)

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
            "short_header": good[:9], "tiny": b"\x00\x00"}[kind]


@pytest.mark.parametrize("kind, message", [
    ("truncated", r"truncated: header says 3x4x5 = 60 bytes of data, found 53"),
    ("trailing", r"trailing bytes: header says 3x4x5 = 60 bytes of data, found 63 \(3 extra\)"),
    ("type", r"unsupported IDX data type 0x0b \(only 0x08 = unsigned byte"),
    ("first_bytes", r"bad magic number 0x01000803: the first two bytes must be zero"),
    ("zero_ndim", r"bad magic number 0x00000800: zero dimensions"),
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
    assert first == ("MNIST not found (download disabled): pass --data-dir DIR or set FASTCNN_DATA_DIR "
                     "(looked in: env, cache)")
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
    pattern = (re.escape(str(tmp_path / "d" / NAMES[0])) + f": checksum mismatch: expected sha256 {expected} "
               f"of the decompressed data, got {actual}")
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
    with pytest.raises(DataError, match=re.escape(str(path)) + r": checksum mismatch: expected sha256 "
                                        + spec.test_images.digest + " of the decompressed data"):
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
    assert list(cache.iterdir()) == []  # no file, no temp file


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
    assert first == (f"MNIST not found and no network: pass --data-dir DIR or set FASTCNN_DATA_DIR "
                     f"(looked in: {env}, {cache})")
    assert f"  {env} (FASTCNN_DATA_DIR): missing {NAMES[1]}" in details
    assert any(line.startswith(f"  {cache} (cache): missing") for line in details)
    assert any(dead_url + NAMES[0] in line and "refused" in line.lower() for line in details)
    assert list(cache.iterdir()) == []


def test_no_data_error_first_line_stays_short(tmp_path, monkeypatch, dead_url):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8)
    monkeypatch.setenv("FASTCNN_DATA_DIR", str(deep))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", cache_dir=deep / "cache", mirrors=[dead_url], timeout=5)
    first, *details = str(info.value).splitlines()
    assert len(first) <= 200
    assert first.startswith("MNIST not found and no network: pass --data-dir DIR or set FASTCNN_DATA_DIR")
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
    with pytest.raises(TypeError, match="uint8"):
        to_float(x.astype(np.float32))


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
