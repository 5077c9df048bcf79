"""Tests for fastcnn-serve's JSON API against a real server process (an untrained model: the answers
are checked against the library's, not against digits): answers, 413 before the body is read,
400 for unusable images with the server going on, concurrent requests each answered correctly,
Ctrl-C, and the command's one-line errors."""
from __future__ import annotations

import io
import json
import socket
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fastcnn.checkpoint import save_checkpoint
from fastcnn.model import mnist_cnn
from fastcnn.serve.predict import load_model, predict_bytes, sample_digit
from fastcnn.testing import agreement_tolerance

from serve_helpers import Server

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

MAX_BODY = 300_000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    save_checkpoint(path, mnist_cnn(seed=1), None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "dtype": "float32"})
    return path


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--max-body", MAX_BODY)
    yield s
    s.stop()


def post(server, data, detail=False, timeout=60):
    req = urllib.request.Request(server.url + "/api/predict" + ("?detail=1" if detail else ""), data=data,
                                 method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def png(image: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def scribble(seed: int) -> bytes:
    """A seeded random stroke figure, dark on white: images that differ in every answer."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (120, 120), 255)
    pts = [tuple(int(v) for v in rng.integers(15, 105, 2)) for _ in range(4)]
    ImageDraw.Draw(im).line(pts, fill=0, width=10)
    return png(im)


def assert_same_answer(got, want):
    rtol, atol = agreement_tolerance(np.float32)
    assert got["input"] == want["input"]
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=rtol * 10, atol=atol * 10)


def test_answer_is_the_librarys(server, model_path):
    status, answer = post(server, sample_digit(), detail=True)
    assert status == 200, answer
    model, info = load_model(model_path, backend="numpy")
    want = predict_bytes(model, info, sample_digit(), detail=True)
    assert answer["classes"] == [str(k) for k in range(10)] and answer["inverted"] is True
    assert np.array(answer["input"]).shape == (28, 28)
    assert_same_answer(answer, want)
    assert [m["shape"] for m in answer["maps"]] == [[32, 28, 28], [64, 14, 14]]
    assert answer["maps"][0]["layer"].startswith("layer 1 ReLU")
    assert answer["saliency"]["shape"] == [28, 28] and answer["saliency"]["max"] > 0
    assert "maps" not in post(server, sample_digit())[1]


def _truncated_jpeg():
    data = png(Image.new("RGB", (64, 64), "white"), "JPEG")
    return data[:len(data) // 2]


def _zero_width_png():
    """A PNG whose header declares a 0 x 10 image (valid CRC: only the size is wrong)."""
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + b"\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.mark.parametrize("data, needle", [
    (b"", "empty body"),
    (b"hello, not an image", "not a PNG or JPEG"),
    (sample_digit()[:60], "cannot decode the PNG"),
    (_truncated_jpeg(), "cannot decode the JPEG"),
    (_zero_width_png(), "PNG"),
    (png(Image.new("1", (6000, 5000))), "more than the 25,000,000 pixels"),        # 30 Mpx in ~4 kB
    (png(Image.new("1", (20000, 20000))), "more than the 25,000,000 pixels"),      # past Pillow's own limit
    (png(Image.new("L", (50, 50), 255)), "no digit found"),
], ids=["empty", "text", "truncated-png", "truncated-jpeg", "zero-width", "bomb-30mpx", "bomb-400mpx", "blank"])
def test_unusable_images_get_400_and_the_server_goes_on(server, data, needle):
    status, answer = post(server, data)
    assert status == 400 and list(answer) == ["error"], answer
    assert needle in answer["error"] and "\n" not in answer["error"]
    assert post(server, sample_digit())[0] == 200


def _raw_request(server, head: bytes, body_parts, timeout=20) -> bytes:
    """Send ``head`` then each of ``body_parts``, stopping early if the server has answered; returns
    everything the server sent."""
    u = urlsplit(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:            # the server answered and closed: it read no further
                break
        out = b""
        while b"\r\n\r\n" not in out or not out.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_body_over_the_limit_is_413_before_it_is_read(server):
    # Content-Length says 10 GB; only 10 bytes follow. The answer comes at once, from the header.
    head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 10000000000\r\n\r\n")
    out = _raw_request(server, head, [b"0123456789"])
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    assert b"larger than the 300,000 bytes allowed" in out
    # Chunked, no length: refused once it grows past the limit, not after the last chunk.
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 100_000 + b"\0" * 100_000 + b"\r\n"
    out = _raw_request(server, head, [chunk] * 4)            # 400 kB, never terminated by a 0-chunk
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    assert post(server, sample_digit())[0] == 200


def test_concurrent_requests_each_get_their_own_answer(server):
    images = [scribble(seed) for seed in range(16)]
    want = [post(server, data, detail=True)[1] for data in images]
    assert len({json.dumps(w["probabilities"]) for w in want}) == len(images)      # all differ

    def ask(i):
        return post(server, images[i % len(images)], detail=True)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(64)))
    for i, (status, answer) in enumerate(results):
        assert status == 200, answer
        assert_same_answer(answer, want[i % len(images)])
        assert answer["saliency"] == want[i % len(images)]["saliency"]


def test_page_and_assets_are_served_from_the_package(server):
    for path, kind in [("/", "text/html"), ("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        with urllib.request.urlopen(server.url + path, timeout=30) as res:
            body = res.read().decode()
            assert res.status == 200 and kind in res.headers["Content-Type"]
            assert "http://" not in body and "https://" not in body          # nothing from elsewhere
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(server.url + "/static/../cli.py", timeout=30)
    assert exc.value.code == 404


def test_port_in_use_is_a_one_line_error(server, model_path, capsys):
    from fastcnn.serve.cli import serve_main
    port = urlsplit(server.url).port
    code = serve_main([str(model_path), "--port", str(port), "--backend", "numpy"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("fastcnn-serve: error: choose another with --port") and f":{port}" in err[0]


def test_usage_errors_exit_2(capsys):
    from fastcnn.serve.cli import serve_main
    assert serve_main(["m.npz", "--port", "70000"]) == 2
    assert serve_main(["m.npz", "--max-body", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("fastcnn-serve: error: ") for line in err)


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    from fastcnn.serve.cli import serve_main
    assert serve_main([str(tmp_path / "none.npz")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fastcnn-serve: error: ") and "none.npz" in err[0]


def test_ctrl_c_stops_cleanly(model_path):
    s = Server(model_path, "--backend", "numpy")
    assert post(s, sample_digit())[0] == 200
    assert s.interrupt() == 0
    assert s.lines[-1] == "fastcnn-serve: stopped" and not any("Traceback" in line for line in s.lines), s.lines


def test_load_tool_reports_throughput_and_cpu(model_path, capsys):
    from fastcnn.serve.load import main
    assert main([str(model_path), "--clients", "2", "--requests", "6", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("6 requests from 2 clients, 1 Numba thread per request, in "), out
    assert "requests/s; latency p50 " in out[0] and " p99 " in out[0]
    assert out[1].startswith("cores used on average (of "), out
