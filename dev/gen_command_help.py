"""Rewrite the ``--help`` blocks of docs/commands.md from the commands' parsers.

Each block follows a ``<!-- help: COMMAND -->`` line. Run after changing a command's options:

    python dev/gen_command_help.py

``tests/test_docs.py`` fails while a block misses an option the parser has, or names one it lacks.
"""
from __future__ import annotations

import os
import re
import sys
from importlib import import_module
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
PARSERS = {
    "fastcnn-train": "fastcnn.cli",
    "fastcnn-eval": "fastcnn.evaluate",
    "fastcnn-bench": "fastcnn.benchmarks.cli",
    "fastcnn-sweep": "fastcnn.sweep.cli",
}
BLOCK = re.compile(r"(<!-- help: (?P<command>[\w-]+) -->\n```text\n)(?P<text>.*?)(^```$)", re.DOTALL | re.MULTILINE)
WIDTH = 100


def help_text(command: str) -> str:
    """``COMMAND --help`` as printed in a terminal WIDTH columns wide."""
    os.environ["COLUMNS"] = str(WIDTH)
    return import_module(PARSERS[command]).build_parser().format_help().rstrip() + "\n"


def main() -> int:
    text = PAGE.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: m.group(1) + help_text(m.group("command")) + m.group(4), text)
    if new != text:
        PAGE.write_text(new, encoding="utf-8")
        print(f"rewrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
