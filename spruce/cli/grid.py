"""``spruce grid``: the cross product of ``spruce prune`` settings x seeds, resumable."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from spruce.cli.parsing import positive_int
from spruce.errors import SpruceError

HELP = "run a grid of spruce prune settings x seeds from a YAML file, then summarise it"
DESCRIPTION = (
    f"{HELP}. Each run is a separate 'spruce prune' process writing OUT/runs/RUN-ID "
    "(log: OUT/runs/RUN-ID.log); runs whose report.json exists are skipped, so an "
    "interrupted grid continues where it stopped. Relative paths in the YAML are taken "
    "relative to the YAML's folder if they exist there, else to the current directory. "
    "Writes OUT/results.csv, OUT/report.md and its plots. Exit code 1 if a run failed."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grid", help=HELP, description=DESCRIPTION)
    parser.add_argument("grid_file", type=Path, metavar="GRID.yaml", help="the grid to run")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="results folder (overrides 'out:' of the YAML)"
    )
    parser.add_argument(
        "--jobs", type=positive_int, metavar="N", help="runs at once (overrides 'jobs:')"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="print the run ids and commands, run nothing"
    )
    mode.add_argument(
        "--summary-only",
        action="store_true",
        help="only rewrite results.csv, report.md and the plots from finished runs",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    # Imported here: the grid machinery (YAML, plotting) is not needed by other commands.
    from spruce.grid import check_runs, dry_run, expand, load_grid, run_grid, summarize
    from spruce.grid.runner import read_failure

    spec = load_grid(args.grid_file)
    out = args.out or spec.out
    if out is None:
        raise SpruceError(
            f"{args.grid_file} has no 'out:' folder", "add 'out: DIR' to it or pass --out DIR"
        )
    runs = expand(spec)
    if not args.summary_only:
        check_runs(spec, runs)
    if args.dry_run:
        dry_run(spec, runs, out)
        return 0
    if not args.summary_only:
        jobs = spec.job_count(args.jobs)
        print(f"{spec.name}: {len(runs)} runs, {jobs} at a time, into {out}", flush=True)
        try:
            run_grid(spec, runs, out, jobs)
        except KeyboardInterrupt:
            summarize(spec, runs, out, _command(args))
            print(
                f"spruce: interrupted; finished runs are kept in {out}, "
                "run the same command again to continue",
                file=sys.stderr,
            )
            return 130
    report = summarize(spec, runs, out, _command(args))
    failed = [run.id for run in runs if read_failure(run, out) is not None]
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
    print(f"wrote {report}")
    return 1 if failed else 0


def _command(args: argparse.Namespace) -> str:
    words = ["spruce", "grid", str(args.grid_file)]
    if args.out is not None:
        words += ["--out", str(args.out)]
    if args.jobs is not None:
        words += ["--jobs", str(args.jobs)]
    if args.summary_only:
        words.append("--summary-only")
    return shlex.join(words)
