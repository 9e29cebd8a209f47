"""``spruce grid``: the cross product of ``spruce prune`` settings x seeds, resumable."""

from __future__ import annotations

import argparse
import dataclasses
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
    "Writes OUT/results.csv, OUT/report.md and its plots. Exit code 1 if a run failed. "
    "With --backend ray the runs are Ray tasks on a cluster (pip install 'spruce[ray]'); "
    "OUT and the data must then be on a filesystem that every node shares."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grid", help=HELP, description=DESCRIPTION)
    parser.add_argument("grid_file", type=Path, metavar="GRID.yaml", help="the grid to run")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="results folder (overrides 'out:' of the YAML)"
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="runs at once (overrides 'jobs:'); with --backend ray, at most N at once on the "
        "cluster, whose resources alone decide without it",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads of each run (overrides 'threads:'; e.g. --jobs 2 --threads 1 runs "
        "two at once on two cores without oversubscribing them)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="N",
        help="run and summarise these seeds instead of the YAML's 'seeds:' (to split a grid "
        "across machines, or add seeds to a finished one)",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="where runs are launched: 'local' processes (the default) or one Ray task per "
        "run, each with 'threads' CPUs and 'gpus_per_run' GPUs (overrides 'backend:')",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to use with --backend ray: 'auto' (the cluster this machine "
        "belongs to), HOST:PORT or ray://HOST:PORT; default: the one 'ray start' runs on "
        "this machine, else a Ray instance started for this grid",
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
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            raise SpruceError(f"--seeds lists a seed twice: {args.seeds}", "give each seed once")
        spec = dataclasses.replace(spec, seeds=list(args.seeds))
    if args.threads is not None:
        spec = dataclasses.replace(spec, threads=args.threads)
    out = args.out or spec.out
    if out is None:
        raise SpruceError(
            f"{args.grid_file} has no 'out:' folder", "add 'out: DIR' to it or pass --out DIR"
        )
    backend = args.backend or spec.backend
    if args.ray_address is not None and backend != "ray":
        raise SpruceError("--ray-address is only used by the Ray backend", "add --backend ray")
    if backend == "ray" and not (args.dry_run or args.summary_only):
        from spruce.grid.ray_backend import import_ray

        # Before the runs are checked (seconds): a missing package is the first thing to say.
        import_ray("--backend ray" if args.backend else f"'backend: ray' in {args.grid_file}")
    runs = expand(spec)
    if not args.summary_only:
        check_runs(spec, runs)
    if args.dry_run:
        dry_run(spec, runs, out)
        return 0
    if not args.summary_only:
        if backend == "ray":
            # The YAML's 'jobs:' sizes the local machine; on a cluster Ray's resources
            # decide how many run at once, and only --jobs caps that.
            jobs = args.jobs
            at_once = f"at most {jobs}" if jobs else "as many as the cluster fits"
            at_once += (
                f" at a time on Ray ({spec.threads} CPUs, {spec.gpus_per_run:g} GPUs per run)"
            )
        else:
            jobs = spec.job_count(args.jobs)
            at_once = f"{jobs} at a time"
        print(f"{spec.name}: {len(runs)} runs, {at_once}, into {out}", flush=True)
        try:
            run_grid(spec, runs, out, jobs, backend=backend, ray_address=args.ray_address)
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
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    if args.seeds is not None:
        words += ["--seeds", *map(str, args.seeds)]
    if args.backend is not None:
        words += ["--backend", args.backend]
    if args.ray_address is not None:
        words += ["--ray-address", args.ray_address]
    if args.summary_only:
        words.append("--summary-only")
    return shlex.join(words)
