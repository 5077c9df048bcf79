"""Every ```python block of docs/*.md runs as written: a page's blocks run in order in one fresh
namespace, as a reader would paste them. A block right after a ``<!-- no-run -->`` line is shown
but not run (it needs a machine, a file or minutes the test does not have); a page holding a
``<!-- slow -->`` line trains, and its test is marked slow."""
from __future__ import annotations

import re

import pytest

from helpers import REPO

DOCS = REPO / "docs"
BLOCK = re.compile(r"^(<!-- no-run -->\n)?```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The blocks of a page that run, in order."""
    return [code for skip, code in BLOCK.findall(text) if not skip]


def _pages():
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        if "```python" in text:
            marks = [pytest.mark.slow] if "\n<!-- slow -->\n" in text else []
            yield pytest.param(page.name, marks=marks, id=page.name)


def test_the_block_finder_skips_marked_blocks():
    text = "a\n```python\nx = 1\n```\n<!-- no-run -->\n```python\nboom()\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("name", list(_pages()))
def test_docs_python_blocks_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # whatever a block writes lands here
    namespace = {"__name__": f"docs.{name}"}
    for i, code in enumerate(python_blocks((DOCS / name).read_text(encoding="utf-8")), 1):
        exec(compile(code, f"docs/{name} (python block {i})", "exec"), namespace)  # noqa: S102
