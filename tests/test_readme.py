"""The README's Python examples run as written: the two ```python blocks under "## Python API" (the
whole loop, then your own model) are executed in a fresh interpreter (the real MNIST files via
$FASTCNN_DATA_DIR, as the README says) and must train and give real results."""
from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO, subprocess_env


def python_examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\n## Python API\n" in text, "README.md has no '## Python API' section"
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 2, f"expected two python blocks under '## Python API', found {len(blocks)}"
    return blocks


def run_example(code, mnist_dir, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = subprocess_env()
    env["FASTCNN_DATA_DIR"] = str(mnist_dir)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_readme_python_example_runs_as_written(mnist_dir, tmp_path):
    proc = run_example(python_examples()[0], mnist_dir, tmp_path)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["step 0", "step 100", "step 200"], proc.stdout
    m = re.fullmatch(r"test accuracy (\d+\.\d\d)%", lines[-1])
    assert m and float(m.group(1)) >= 95.0, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.py"]        # it writes nothing


def test_readme_own_model_example_saves_a_model_that_loads(mnist_dir, tmp_path):
    import numpy as np

    import fastcnn

    proc = run_example(python_examples()[1], mnist_dir, tmp_path)
    assert "Linear" in proc.stdout and "Conv2D" in proc.stdout, proc.stdout            # the summary table
    predicted, labels = (np.array(re.findall(r"\d+", part), int) for part in proc.stdout.splitlines()[-1].split("] ["))
    assert len(predicted) == len(labels) == 5 and (predicted == labels).sum() >= 3, proc.stdout
    model = fastcnn.load(tmp_path / "tiny.npz", backend="numpy")
    assert [e["type"] for e in model.config()] == ["Conv2D", "ReLU", "MaxPool2D", "Flatten", "Linear"]
