"""``spruce grid``: many ``spruce prune`` runs from one YAML file, resumable, summarised.

* :mod:`spruce.grid.settings` says what a grid key means (a path into the run settings)
  and builds each run's config;
* :mod:`spruce.grid.spec` reads and validates GRID.yaml and expands it into runs;
* :mod:`spruce.grid.runner` runs them as subprocesses, ``jobs`` at a time
  (:mod:`spruce.grid.process` launches one), or :mod:`spruce.grid.ray_backend` as Ray
  tasks on a cluster;
* :mod:`spruce.grid.summary` writes results.csv and report.md;
* :mod:`spruce.grid.plots` draws the metric against sparsity and labelled examples.

The names below are imported on first use: a Ray worker imports
:mod:`spruce.grid.process` alone, without the torch and scikit-learn that the rest needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spruce.grid.runner import GridOutcome, check_runs, command_for, dry_run, run_grid
    from spruce.grid.spec import GridSpec, Run, expand, load_grid
    from spruce.grid.summary import summarize

_MODULES = {
    "check_runs": "runner",
    "GridOutcome": "runner",
    "command_for": "runner",
    "dry_run": "runner",
    "run_grid": "runner",
    "GridSpec": "spec",
    "Run": "spec",
    "expand": "spec",
    "load_grid": "spec",
    "summarize": "summary",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        # AttributeError also lets `from spruce.grid import runner` fall back to the module.
        raise AttributeError(f"module 'spruce.grid' has no attribute '{name}'")
    return getattr(importlib.import_module(f"spruce.grid.{_MODULES[name]}"), name)


__all__ = [
    "GridOutcome",
    "GridSpec",
    "Run",
    "check_runs",
    "command_for",
    "dry_run",
    "expand",
    "load_grid",
    "run_grid",
    "summarize",
]
