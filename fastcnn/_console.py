"""What ``fastcnn-train`` prints: a console whose stdout and stderr survive a closed pipe (the
run goes on), the one-line error, the run's first lines, and the note on other programs' load.
"""
from __future__ import annotations

import shutil
import sys
import textwrap

from fastcnn._cli import TRAIN_PROG as PROG
from fastcnn._cli import print_error, write_line

__all__ = ["contention_hint"]


class _Console:
    """stdout and stderr that survive a closed pipe (:func:`fastcnn._cli.write_line`): the run goes on."""

    def __init__(self, quiet=False):
        self.quiet = quiet

    def say(self, text=""):
        if not self.quiet:
            write_line(text)

    def out(self, text):
        """What an option asked for (e.g. --profile's table): printed even with --quiet."""
        write_line(text)

    def err(self, text, lead=False):
        if lead and sys.stderr.isatty():
            text = "\n" + text
        write_line(text, sys.stderr)


def _error(message):
    print_error(PROG, message)


def _header(data, config, n_train, n_test) -> str:
    """The run's first lines, wrapped at word boundaries to the terminal's width."""
    sched = "cosine to 0" if config.lr_schedule == "cosine" else "constant"
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    first = f"{PROG}: {data.name} from {data.source_dir} ({n_train} train / {n_test} test images)"
    second = (f"model {config.model}, backend {config.backend}, {config.dtype}, {config.optimizer} lr "
              f"{config.lr:g} ({sched}), batch {config.batch_size}, {epochs}")
    width = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
    lines = textwrap.wrap(first, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    lines += textwrap.wrap(second, width, initial_indent="  ", subsequent_indent="  ", break_long_words=False)
    return "\n".join(lines)


def contention_hint(load: dict) -> str | None:
    """A note when other programs held the cores the run needed (``load``: a
    :meth:`CpuMeter.summary <fastcnn.cpumeter.CpuMeter.summary>` of the training), so the epoch
    times overstate the run's cost; None otherwise."""
    if not load["contended"]:
        return None
    threads = load["threads"]
    seen = (f"they used {load['other_load']:.1f} cores on average" if load["other_load"] is not None else
            f"CPU/wall {load['cpu_seconds_per_second']:.2f} with {threads} thread{'s' if threads != 1 else ''}")
    return f"note: other programs used the cores; epoch times are inflated ({seen})"
