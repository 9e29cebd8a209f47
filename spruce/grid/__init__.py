"""``spruce grid``: many ``spruce prune`` runs from one YAML file, resumable, summarised.

* :mod:`spruce.grid.prune_cli` knows the ``spruce prune`` options and builds arguments;
* :mod:`spruce.grid.spec` reads and validates GRID.yaml and expands it into runs;
* :mod:`spruce.grid.runner` runs them as subprocesses, ``jobs`` at a time;
* :mod:`spruce.grid.summary` writes results.csv and report.md;
* :mod:`spruce.grid.plots` draws the metric against sparsity and labelled examples.
"""

from spruce.grid.prune_cli import PruneOption, check_runs
from spruce.grid.runner import GridOutcome, command_for, dry_run, run_grid
from spruce.grid.spec import GridSpec, Run, expand, load_grid
from spruce.grid.summary import summarize

__all__ = [
    "GridOutcome",
    "GridSpec",
    "PruneOption",
    "Run",
    "check_runs",
    "command_for",
    "dry_run",
    "expand",
    "load_grid",
    "run_grid",
    "summarize",
]
