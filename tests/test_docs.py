"""Every ```python block of docs/*.md runs as written: a page's blocks run in order in one fresh
namespace, as a reader would paste them. A block right after a ``<!-- no-run -->`` line is shown
but not run (it needs a machine, a file or minutes the test does not have); a page holding a
``<!-- slow -->`` line trains, and its test is marked slow."""
from __future__ import annotations

import importlib
import importlib.util
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


def _help_blocks() -> dict[str, str]:
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- help: ([\w-]+) -->\n```text\n(.*?)^```$", text, re.DOTALL | re.MULTILINE))


@pytest.mark.parametrize("command", ["fastcnn-train", "fastcnn-eval", "fastcnn-bench", "fastcnn-sweep"])
def test_command_reference_shows_each_commands_current_options(command):
    """The --help block of docs/commands.md names every option the parser has, and its usage line
    none it lacks (python dev/gen_command_help.py rewrites the blocks)."""
    spec = importlib.util.spec_from_file_location("gen_command_help", REPO / "dev" / "gen_command_help.py")
    gen_command_help = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_command_help)
    block = _help_blocks().get(command)
    assert block, f"docs/commands.md has no --help block for {command}"
    parser = importlib.import_module(gen_command_help.PARSERS[command]).build_parser()
    options = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", block))
    usage = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", block.split("\n\n", 1)[0]))
    fix = "; run: python dev/gen_command_help.py"
    assert options <= shown, f"{command} options missing from docs/commands.md: {sorted(options - shown)}{fix}"
    assert usage <= options, f"docs/commands.md shows {command} options it lacks: {sorted(usage - options)}{fix}"
