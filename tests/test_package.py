"""The package as a dependency: what ``import fastcnn`` exports and what it leaves alone, the
commands on a platform without ``fcntl``, and ``fastcnn-sweep`` without its Dask extra."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fastcnn
import fastcnn._process
import fastcnn.checkpoint
import fastcnn.cli
import fastcnn.evaluate
import fastcnn.layers
import fastcnn.train

from helpers import REPO, subprocess_env, write_custom_dataset


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300, check=False)


def _assert_untouched(code: str, cwd) -> None:
    """``code``, run in a fresh interpreter, passes its own asserts and prints ``untouched``."""
    proc = _python(code, cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "untouched"


# ------------------------------------------------------------------------------------- public API

def test_the_package_exports_what_a_user_needs():
    assert fastcnn.Trainer is fastcnn.train.Trainer and fastcnn.TrainConfig is fastcnn.train.TrainConfig
    assert fastcnn.save_checkpoint is fastcnn.checkpoint.save_checkpoint
    assert fastcnn.load_checkpoint is fastcnn.checkpoint.load_checkpoint
    assert fastcnn.CheckpointError is fastcnn.checkpoint.CheckpointError
    for name in ("DataError", "CheckpointError", "InputError", "ConfigError"):
        assert issubclass(getattr(fastcnn, name), ValueError), name
    needed = {"Trainer", "TrainConfig", "save_checkpoint", "load_checkpoint", "mnist_cnn", "AdamW"}
    assert needed <= set(fastcnn.__all__)


@pytest.mark.parametrize("name", ["FusedLayer", "Identity"])
def test_fusion_internals_stay_in_the_layers_module(name):
    assert name not in fastcnn.__all__
    with pytest.raises(AttributeError):
        getattr(fastcnn, name)
    assert getattr(fastcnn.layers, name).__module__ == "fastcnn.layers"


# ------------------------------------------------------------------------------- no side effects

def test_import_leaves_numbas_target_alone(tmp_path):
    """Importing fastcnn, fastcnn.kernels and the commands' modules builds no Numba target (so no
    CPU features are chosen) and sets no Numba setting: that waits for a command's tune_process."""
    code = ("import fastcnn, fastcnn.kernels, fastcnn.cli, fastcnn.evaluate, fastcnn.train\n"
            "from numba.core import config\n"
            "from numba.core.registry import cpu_target\n"
            "assert '_toplevel_target_context' not in vars(cpu_target), 'target built on import'\n"
            "assert not config.CPU_FEATURES, config.CPU_FEATURES\n"
            "print('untouched')\n")
    _assert_untouched(code, tmp_path)


def test_import_fastcnn_leaves_malloc_alone(tmp_path):
    """Importing the package, and every public name of it, calls no mallopt: only the commands do."""
    code = ("import fastcnn, fastcnn._memory as m\n"
            "assert not m._done, 'tuned on import'\n"
            "for name in fastcnn.__all__:\n"
            "    if name != 'tune_malloc':\n"
            "        getattr(fastcnn, name)\n"
            "assert not m._done, 'tuned by importing the public names'\n"
            "print('untouched')\n")
    _assert_untouched(code, tmp_path)


@pytest.mark.parametrize("entry, argv", [
    ("fastcnn.kernels.__main__:main", ["--dtype", "float32"]),   # FASTCNN_NUMBA_CACHE=0: stops before compiling
    ("fastcnn.cli:train_main", ["--data-dir", ".", "--no-download"]),            # no MNIST in the empty folder
    ("fastcnn.evaluate:eval_main", ["missing.npz"]),
])
def test_a_command_sets_up_its_process_before_numba_builds_its_target(tmp_path, entry, argv):
    """tune_process chooses the CPU features of Numba's target (part of every cache key): it must
    run before any kernel module is imported, or the command compiles for other features than the
    cache filler and the other commands, and a filled cache misses."""
    module, func = entry.split(":")
    code = ("import fastcnn._process as p\n"
            "from numba.core.registry import cpu_target\n"
            "seen = []\n"
            "tune = p.tune_process\n"
            "p.tune_process = lambda: (seen.append('_toplevel_target_context' in vars(cpu_target)), tune())\n"
            f"from {module} import {func}\n"
            f"{func}({argv!r})\n"
            "print(seen)\n")
    env = {**subprocess_env(), "FASTCNN_NUMBA_CACHE": "0"}
    env.pop("FASTCNN_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.stdout.strip().splitlines()[-1] == "[False]", proc.stdout + proc.stderr[-2000:]


def test_the_commands_tune_their_own_process(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(fastcnn._process, "tune_process", lambda: calls.append("train"))
    monkeypatch.setattr(fastcnn.evaluate, "tune_process", lambda: calls.append("eval"))
    monkeypatch.delenv("FASTCNN_DATA_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    assert fastcnn.cli.train_main(["--data-dir", str(tmp_path / "empty"), "--no-download"]) == 1
    assert fastcnn.evaluate.eval_main([str(tmp_path / "missing.npz")]) == 1
    assert calls == ["train", "eval"]
    capsys.readouterr()


# ------------------------------------------------------------------------------- without fcntl

def test_fastcnn_train_imports_and_helps_without_fcntl(tmp_path):
    code = ("import sys\n"
            "sys.modules['fcntl'] = None          # as on Windows: import fcntl raises ImportError\n"
            "from fastcnn.cli import train_main\n"
            "sys.exit(train_main(['--help']))\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--checkpoint" in proc.stdout


def test_without_fcntl_a_run_warns_once_and_writes_unlocked(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    data = write_custom_dataset(tmp_path / "data")
    ckpt = tmp_path / "c.npz"
    code = fastcnn.cli.train_main(["--dataset", "custom", "--data-dir", str(data), "--epochs", "1",
                                   "--batch-size", "32", "--backend", "numpy", "--plots-dir", str(tmp_path / "p"),
                                   "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("warning:") == 1 and "no fcntl" in err and "not locked" in err, err
    assert fastcnn.checkpoint.load_checkpoint(ckpt).epoch == 1
    assert not list(tmp_path.glob(".*.lock"))


# ------------------------------------------------------------------------------- the sweep extra

def test_dask_is_an_extra_not_a_dependency():
    tomllib = pytest.importorskip("tomllib")                # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("dask", "distributed"))]
    assert any(d.startswith("dask[distributed]") for d in project["optional-dependencies"]["sweep"])
    assert any(d.startswith("dask[distributed]") for d in project["optional-dependencies"]["test"])


@pytest.mark.parametrize("hidden", ["distributed", "dask"])
def test_fastcnn_sweep_without_dask_names_the_extra(hidden, tmp_path, monkeypatch, capsys):
    from fastcnn.sweep.cli import sweep_main

    monkeypatch.setitem(sys.modules, hidden, None)
    assert sweep_main(["--help"]) == 0                     # the help needs no Dask
    capsys.readouterr()
    assert sweep_main(["--out", str(tmp_path / "sweep"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fastcnn-sweep: error: install the sweep extra: pip install 'fastcnn[sweep]'"), err
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------- the fast test loop

def test_every_test_the_slow_rules_name_exists():
    """A renamed test would silently join the one-minute loop: the rules must name real tests."""
    import ast

    import conftest

    for file, names in conftest.SLOW_TESTS.items():
        tree = ast.parse((REPO / "tests" / file).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert names <= defined, f"tests/conftest.py names tests that {file} lacks: {sorted(names - defined)}"
    for file in conftest.SLOW_FILES:
        assert (REPO / "tests" / file).is_file(), file


def test_every_package_folder_is_installed():
    """pyproject.toml lists the packages by name: a new subpackage missing there would work in an
    editable install and vanish from a plain one."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    folders = {".".join(("fastcnn", *p.parent.relative_to(root / "fastcnn").parts))
               for p in (root / "fastcnn").rglob("__init__.py")}
    folders |= {"fastcnn.kernels"} if (root / "kernels" / "__init__.py").exists() else set()
    assert folders == listed, f"pyproject.toml's packages differ from the folders: {sorted(folders ^ listed)}"
