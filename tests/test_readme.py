"""The README's Python example runs as written: its one ```python block under "## Python API" is
executed in a fresh interpreter (the real MNIST files via $FASTCNN_DATA_DIR, as the README says)
and must load the data, train, and reach a real test accuracy."""
from __future__ import annotations

import re
import subprocess
import sys

from helpers import REPO, subprocess_env


def python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\n## Python API\n" in text, "README.md has no '## Python API' section"
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"expected one python block under '## Python API', found {len(blocks)}"
    return blocks[0]


def test_readme_python_example_runs_as_written(mnist_dir, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(python_example(), encoding="utf-8")
    env = subprocess_env()
    env["FASTCNN_DATA_DIR"] = str(mnist_dir)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["step 0", "step 100", "step 200"], proc.stdout
    m = re.fullmatch(r"test accuracy (\d+\.\d\d)%", lines[-1])
    assert m and float(m.group(1)) >= 95.0, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.py"]        # it writes nothing
