"""Helpers shared by the tests: small synthetic datasets (in memory and as IDX files), running
``python -m fastcnn`` in a subprocess, and the command line's one-line error contract.

pytest puts this folder on ``sys.path`` (``pythonpath`` in pyproject.toml), so tests import it as
``from helpers import ...``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fastcnn.data import Dataset

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def synthetic(n_train=128, n_test=32, seed=0):
    """A Dataset of random 28x28 uint8 images with labels 0..9 (not learnable; for determinism,
    resume and error checks)."""
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 256, (n_train, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train),
                   rng.integers(0, 256, (n_test, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test),
                   "synthetic")


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_custom_dataset(folder, n_train=64, n_test=32, truncate=None):
    """Four raw IDX files with MNIST's names; ``truncate``: cut that many bytes off the test images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(folder / name, array)
    if truncate:
        path = folder / IDX_NAMES[2]
        path.write_bytes(path.read_bytes()[:-truncate])
    return folder


def subprocess_env():
    """The current environment with the repository root first on PYTHONPATH, so the tests work
    whether or not fastcnn is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("FASTCNN_DATA_DIR", None)
    return env


def cli_command(args):
    """The argv of ``fastcnn-train args`` run with this interpreter."""
    return [sys.executable, "-m", "fastcnn", *map(str, args)]


def run_eval(capsys, *argv):
    """fastcnn-eval in this process: (exit status, stdout lines, stderr lines), never a traceback."""
    from fastcnn.evaluate import eval_main
    code = eval_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines(), err.splitlines()


def run_cli(args, cwd, timeout=300):
    return subprocess.run(cli_command(args), cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(stderr):
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastcnn-train: error: ") and len(lines[0]) > len("fastcnn-train: error: "), stderr


def as_version_2(src, dst, model_kwargs, layer_reprs=None):
    """Rewrite the checkpoint ``src`` into ``dst`` exactly as the previous format (version 2) stored
    it: ``architecture`` holds each layer's ``repr`` (``layer_reprs``, default: the layers of the
    saved config) and the :func:`~fastcnn.model.mnist_cnn` arguments ``model_kwargs``, no ``data``;
    hashed as that version was."""
    import json

    from fastcnn.architecture import layers_from_config
    from fastcnn.checkpoint import content_hash

    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    arrays.pop("__sha256__")
    arch = header["architecture"]
    reprs = layer_reprs or [repr(layer) for layer in layers_from_config(arch["config"])]
    header["architecture"] = {"layers": reprs, "params": arch["params"], "model_kwargs": dict(model_kwargs)}
    header["version"] = 2
    header.pop("data", None)
    text = json.dumps(header, sort_keys=True).encode()
    arrays["__sha256__"] = np.frombuffer(content_hash(text, arrays).encode(), np.uint8)
    arrays["__header__"] = np.frombuffer(text, np.uint8)
    np.savez(dst, **arrays)
    return dst
