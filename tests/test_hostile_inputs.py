"""Hostile inputs to every command, with real files, FIFOs, devices, links and processes: each ends
in the right result or a one-line error naming the cause and the fix, with a non-zero exit, in
bounded time and memory; no output replaces an input or a file of another kind.

The sweep's own cases with a cluster and signals are in test_sweep_resilience.py."""
from __future__ import annotations

import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from fastcnn._cli import EXIT_ERROR, EXIT_USAGE
from fastcnn._files import InputFileError, open_input, shown
from fastcnn.backend import check_numba_threads, numba_threads_limit
from fastcnn.checkpoint import DIGEST_KEY, HEADER_KEY, CheckpointError, content_hash, load_checkpoint, save_checkpoint
from fastcnn.data import MAX_IDX_ITEM_BYTES, DataError, read_idx
from fastcnn.evaluate import plot_confusion_matrix
from fastcnn.images import MAX_IMAGE_PIXELS, resize
from fastcnn.model import mnist_cnn
from fastcnn.sweep.cli import sweep_main
from fastcnn.testing import RESIZE

from helpers import PNG_SIGNATURE, subprocess_env

# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    save_checkpoint(path, mnist_cnn(seed=0, backend="numpy"), None, epoch=1, history=[], config={}, rngs={},
                    model_kwargs={"dropout": 0.5, "batchnorm": False, "dtype": "float32"})
    return path


def _digit_png(path, size=60):
    img = np.full((size, size), 255, np.uint8)
    img[size // 4:3 * size // 4, size // 2 - 3:size // 2 + 3] = 0          # a dark "1" on paper
    Image.fromarray(img).save(path)
    return path


# The child's own peak memory in MB: VmHWM starts afresh with its program (ru_maxrss would keep the
# forked parent's).
PEAK_MB = ("int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024")


def _eval(args, cwd, env=None, timeout=120):
    """fastcnn-eval in a child process -> (code, stdout, stderr, peak memory of the child in MB)."""
    code = ("import sys\nfrom fastcnn.evaluate import eval_main\nrc = eval_main(sys.argv[1:])\n"
            f"print({PEAK_MB}, file=sys.stderr)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, timeout=timeout,
                          env={**subprocess_env(), "FASTCNN_BACKEND": "numpy", **(env or {})})
    *err, peak = proc.stderr.decode("utf-8", "replace").splitlines()
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), "\n".join(err), int(peak)


# ------------------------------------------------------------------------------------ regular files

def test_only_regular_files_of_bounded_size_are_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "dir").mkdir()
    (tmp_path / "big").write_bytes(b"x" * 101)
    cases = {"fifo": r"is a named pipe \(FIFO\), not a regular file", "loop1": "is a symbolic-link loop",
             "dir": "is a directory", "missing": "no such file", "big": "is 101 bytes, more than the 100 bytes"}
    for name, why in cases.items():
        with pytest.raises(InputFileError, match=why):
            open_input(tmp_path / name, max_bytes=100)
    with pytest.raises(InputFileError, match="is a character device"):
        open_input("/dev/zero")
    with open_input(tmp_path / "big", max_bytes=101) as fh:
        assert fh.read() == b"x" * 101


def test_predict_refuses_fifo_device_and_link_loop_and_still_classifies_the_rest(model_file, tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "l1.png").symlink_to(tmp_path / "l2.png")
    (tmp_path / "l2.png").symlink_to(tmp_path / "l1.png")
    _digit_png(tmp_path / "good.png")
    code, out, err, _ = _eval([model_file, "--predict", "fifo.png", "zero.png", "l1.png", "good.png"], tmp_path,
                              timeout=60)
    assert code == EXIT_ERROR
    assert err.splitlines() == [
        "fastcnn-eval: error: fifo.png: is a named pipe (FIFO), not a regular file: give a file",
        "fastcnn-eval: error: zero.png: is a character device, not a regular file: give a file",
        "fastcnn-eval: error: l1.png: is a symbolic-link loop (or a chain of too many links): point it at a real file",
    ], err
    assert out.startswith("good.png: digit ") and out.count("\n") == 1, out


def test_a_name_the_output_encoding_cannot_show_is_escaped_not_dropped(model_file, tmp_path):
    _digit_png(tmp_path / "ünï.png")
    _digit_png(tmp_path / "good.png")
    code, out, err, _ = _eval([model_file, "--predict", "ünï.png", "good.png"], tmp_path,
                              env={"PYTHONIOENCODING": "ascii"})
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("\\xfcn\\xef.png: digit ") and lines[1].startswith("good.png: ")


def test_a_newline_in_a_file_name_cannot_split_the_error(model_file, tmp_path):
    code, out, err, _ = _eval([model_file, "--predict", "bad\nname.png"], tmp_path)
    assert code == EXIT_ERROR and err == "fastcnn-eval: error: bad\\nname.png: no such file", err
    assert shown("a\nb\tc d") == "a\\nb\\tc d"


# --------------------------------------------------------------------------------------- checkpoints

def test_non_finite_parameters_are_refused_on_load(model_file, tmp_path):
    arrays = dict(np.load(model_file))
    header = arrays.pop(HEADER_KEY)
    arrays.pop(DIGEST_KEY)
    name = next(k for k in arrays if k.startswith("param/"))
    arrays[name] = np.full_like(arrays[name], np.nan)
    # The hash has no key: anyone can recompute it after editing the weights.
    arrays[DIGEST_KEY] = np.frombuffer(content_hash(header.tobytes(), arrays).encode("ascii"), np.uint8)
    arrays[HEADER_KEY] = header
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"array '{name}' holds NaN or infinite values"):
        load_checkpoint(tmp_path / "nan.npz")
    _digit_png(tmp_path / "good.png")
    code, out, err, _ = _eval(["nan.npz", "--predict", "good.png"], tmp_path)
    assert code == EXIT_ERROR and out == "" and err.count("\n") == 0
    assert err.startswith("fastcnn-eval: error: nan.npz: use a checkpoint of a run that trained normally"), err


def test_a_checkpoint_that_is_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="is a named pipe"):
        load_checkpoint(tmp_path / "m.npz")


# ------------------------------------------------------------------------------------------- outputs

def test_eval_outputs_never_replace_an_input_or_another_kind_of_file(model_file, tmp_path):
    good = _digit_png(tmp_path / "good.png")
    before = good.read_bytes()
    code, _, err, _ = _eval([model_file, "--predict", "good.png", "--predict-grid", "good.png"], tmp_path)
    assert code == EXIT_USAGE and "--predict-grid 'good.png' is 'good.png', an input of this command" in err, err
    assert good.read_bytes() == before
    (tmp_path / "notes.png").write_text("my notes")
    code, _, err, _ = _eval([model_file, "--predict", "good.png", "--predict-grid", "notes.png"], tmp_path)
    assert code == EXIT_USAGE and "'notes.png' exists and is not a PNG image" in err, err
    assert (tmp_path / "notes.png").read_text() == "my notes"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "confusion_matrix.png").write_text("not a picture")
    code, _, err, _ = _eval([model_file, "--out", "eval"], tmp_path)
    assert code == EXIT_USAGE and "'eval/confusion_matrix.png' exists and is not a PNG image" in err, err
    assert (tmp_path / "eval" / "confusion_matrix.png").read_text() == "not a picture"
    code, out, err, _ = _eval([model_file, "--predict", "good.png", "--predict-grid", "grid.png"], tmp_path)
    assert code == 0 and (tmp_path / "grid.png").read_bytes().startswith(PNG_SIGNATURE), err
    code, out, err, _ = _eval([model_file, "--predict", "good.png", "--predict-grid", "grid.png"], tmp_path)
    assert code == 0, err                                      # its own PNG from before is replaced


def test_confusion_matrix_writes_cell_counts_only_for_few_classes(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    texts = []
    real = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, *a, **k: texts.append(a) or real(self, *a, **k))
    plot_confusion_matrix(np.eye(10, dtype=np.int64), tmp_path / "ten.png")
    assert len(texts) == 100
    texts.clear()
    cm = np.random.default_rng(0).integers(0, 5, (256, 256))
    path = plot_confusion_matrix(cm, tmp_path / "many.png")
    assert texts == [] and path.read_bytes().startswith(PNG_SIGNATURE)


# -------------------------------------------------------------------------------------------- images

def test_pixel_count_is_bounded_before_decoding(tmp_path):
    Image.new("RGBA", (13000, 13000), (255, 255, 255, 255)).save(tmp_path / "big.png")   # 700 KB, 169 Mpx
    assert (tmp_path / "big.png").stat().st_size < 2 << 20
    code = ("import sys\nfrom fastcnn.images import InputError, read_image\n"
            "try:\n    read_image(sys.argv[1])\nexcept InputError as e:\n    print(e)\n"
            f"print({PEAK_MB})\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.png")], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)
    message, peak = proc.stdout.splitlines()
    assert message == (f"{tmp_path / 'big.png'}: 13000x13000 pixels is more than the {MAX_IMAGE_PIXELS:,} pixels "
                       "read from one image: scale it down (a digit needs far fewer)"), proc.stderr
    assert "DecompressionBomb" not in proc.stderr and int(peak) < 300, (peak, proc.stderr)


def test_a_very_wide_image_is_prepared_in_bounded_memory(model_file, tmp_path):
    line = np.full((1, 5_000_000), 255, np.uint8)
    line[0, 100:2000] = line[0, -2000:-100] = 0                            # ink at both ends: crop = whole width
    Image.fromarray(line).save(tmp_path / "wide.png")                     # 5 KB: 1 x 5,000,000 pixels
    code, out, err, peak = _eval([model_file, "--predict", "wide.png"], tmp_path)
    assert code == 0 and out.startswith("wide.png: digit "), err
    assert peak < 600, peak                                                # a resampling matrix took 6.5 GB


def _triangle_resize(image, shape):
    """The separable anti-aliased triangle filter, in float64 (rows of each matrix sum to 1)."""
    def matrix(n_in, n_out):
        scale = n_in / n_out
        support = max(scale, 1.0)
        centres = (np.arange(n_out) + 0.5) * scale
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(n_in) + 0.5)[None, :] - centres[:, None]) / support)
        return w / w.sum(axis=1, keepdims=True)
    return matrix(image.shape[0], shape[0]) @ image @ matrix(image.shape[1], shape[1]).T


@pytest.mark.parametrize("src, dst", [((300, 400), (20, 27)), ((28, 28), (112, 112)), ((50, 40), (120, 9)),
                                      ((7, 1000), (3, 80))])
def test_pillow_resize_is_the_triangle_filter(src, dst):
    img = np.random.default_rng(0).random(src)
    np.testing.assert_allclose(resize(img, dst), _triangle_resize(img, dst), **RESIZE)


# ---------------------------------------------------------------------------------------------- data

def test_an_idx_file_declaring_one_huge_image_is_refused_before_reading(tmp_path):
    side = 2048                                                       # 4 Mpx > MAX_IDX_ITEM_BYTES
    assert side * side > MAX_IDX_ITEM_BYTES
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1, side, side)) + bytes(side * side))
    with pytest.raises(DataError, match=f"one image of {side}x{side} = {side * side} pixels is more than the "):
        read_idx(tmp_path / "x.gz")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="fifo: cannot read: is a named pipe"):
        read_idx(tmp_path / "fifo")


def test_numba_num_threads_out_of_range_names_the_variable(monkeypatch):
    for bad in ("0", "abc", "-3", str(numba_threads_limit() + 1), "9999"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"set NUMBA_NUM_THREADS to a thread count from 1 to .*it is '{bad}'"):
            check_numba_threads()
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    check_numba_threads()


# ------------------------------------------------------------------------------------ sweep arguments

def _sweep_usage(args, tmp_path, capsys):
    code = sweep_main([*map(str, args), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1, (code, err)
    return err


def test_sweep_inputs_are_bounded_before_anything_runs(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "digits.json").write_text('{"runs": [{"seed": ' + "9" * 5000 + "}]}")
    (tmp_path / "epochs.toml").write_text("[[runs]]\nepochs = 100000000000000000000000\n")
    (tmp_path / "name.json").write_text(json.dumps({"runs": [{"name": "summary.csv"}]}))
    many = ",".join(str(i) for i in range(1, 1001))
    cases = [
        (["--runs", tmp_path / "fifo.json"], "is a named pipe (FIFO), not a regular file"),
        (["--runs", tmp_path / "zero.json"], "is a character device, not a regular file"),
        (["--runs", tmp_path / "deep.json"], "fix the JSON: it is nested too deeply"),
        (["--runs", tmp_path / "digits.json"], "fix the JSON: a number has thousands of digits"),
        (["--runs", tmp_path / "name.json"], "rename run 'summary.csv': summary.csv is a file the sweep writes"),
        (["--seed", many, "--batch-size", many], "the sweep would have 2,000,000 runs, more than the 10,000"),
        (["--workers", "100000"], "--workers 100000: this machine runs at most"),
        (["--threads-per-run", "99999"], "--threads-per-run 99999: "),
        (["--dashboard", "abc"], "--dashboard 'abc': give HOST:PORT"),
        (["--scheduler", "ws://127.0.0.1:1"], "give a tcp://HOST:PORT address"),
    ]
    if sys.version_info >= (3, 11):
        cases.append((["--runs", tmp_path / "epochs.toml"], "must be <= 100000, got 100000000000000000000000"))
    for args, needle in cases:
        assert needle in _sweep_usage(args, tmp_path, capsys), args
    assert not (tmp_path / "out").exists()


def test_a_scheduler_address_gets_a_bounded_handshake(tmp_path, capsys, monkeypatch):
    """A web server waits for a request and a foreign server sends other bytes: neither hangs the sweep."""
    import fastcnn.sweep.execute as execute
    monkeypatch.setattr(execute, "_HANDSHAKE_SECONDS", 2.0)
    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()

    def chatter():
        while True:
            try:
                conn, _ = other.accept()
            except OSError:
                return
            conn.sendall(b"\xff" * 64 + b"SSH-2.0-OpenSSH\r\n")
            conn.close()
    threading.Thread(target=chatter, daemon=True).start()
    try:
        for port, needle in ((web.server_port, "no Dask scheduler answered at tcp://127.0.0.1:%d within 2 s"),
                             (other.getsockname()[1], "tcp://127.0.0.1:%d is not a Dask scheduler")):
            code = sweep_main(["--scheduler", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / "out")])
            err = capsys.readouterr().err
            assert code == EXIT_ERROR and needle % port in err and err.count("\n") == 1, err
    finally:
        web.shutdown()
        web.server_close()
        other.close()


def test_epochs_are_bounded_for_every_run():
    from fastcnn.train import MAX_EPOCHS, TrainConfig
    with pytest.raises(ValueError, match=f"epochs must be at most {MAX_EPOCHS}, got {10 ** 23}"):
        TrainConfig(epochs=10 ** 23).resolved()
    TrainConfig(epochs=MAX_EPOCHS).resolved()


def test_a_sweep_replaces_only_its_own_summary_and_plots(mnist_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("my,own,table\n")
    code = sweep_main(["--epochs", "1", "--data-dir", str(mnist_dir), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "summary.csv' exists and is not a fastcnn-sweep summary" in err, err
    assert (out / "summary.csv").read_text() == "my,own,table\n"
