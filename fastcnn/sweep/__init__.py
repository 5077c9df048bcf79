"""``fastcnn-sweep``: train a grid of configurations side by side on Dask distributed and compare them.

    fastcnn-sweep --optimizer sgd,adamw --seed 0,1 --epochs 3 --out sweep

Pieces: :mod:`fastcnn.sweep.grid` (option lists and runs files -> :class:`~fastcnn.sweep.grid.RunSpec`),
:mod:`fastcnn.sweep.worker` (one run on a worker, :func:`~fastcnn.sweep.worker.run_one`),
:mod:`fastcnn.sweep.execute` (the Dask cluster, retries, stopping), :mod:`fastcnn.sweep.report`
(summary files and comparison plots) and :mod:`fastcnn.sweep.cli` (the command).
"""
from __future__ import annotations

from fastcnn.sweep.cli import sweep_main
from fastcnn.sweep.grid import RunSpec, build_runs

__all__ = ["RunSpec", "build_runs", "sweep_main"]
