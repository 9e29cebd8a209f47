"""Execution of a grid: one ``spruce prune`` subprocess per run, ``jobs`` at a time, resumable.

Each run is its own process so that a crash, an out-of-memory kill or a user error in
one configuration costs that run only; the grid records it and goes on. ``spruce prune``
writes its ``--out`` atomically, so a run whose report.json exists is complete and is
skipped when the grid is started again.

Two backends launch the processes: ``local`` (here, on this machine) and ``ray``
(:mod:`spruce.grid.ray_backend`, one Ray task per run on a cluster). Both use the same
code for which runs are left (:func:`pending`), how a run is launched
(:mod:`spruce.grid.process`: log file, environment, stop) and what is recorded when it
ends (:func:`record`), so the run folders, logs, ``*.failed.json`` and therefore
results.csv and report.md do not depend on the backend.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from spruce.errors import SpruceError
from spruce.grid.process import POLL_S, open_log, run_environment, stop
from spruce.grid.settings import run_config
from spruce.grid.spec import BACKENDS, GridSpec, Run, resolve_path
from spruce.train.checkpoint import checkpoint_dir
from spruce.utils.atomic import write_text_atomic

# (spec, run, run directory) -> the command line of that run.
Command = Callable[[GridSpec, Run, Path], list[str]]


def command_for(spec: GridSpec, run: Run, directory: Path) -> list[str]:
    """``python -m spruce prune --config RUN.config.json --threads T --out DIR --quiet``,
    with ``--resume`` where an earlier attempt left a checkpoint. The config file (its
    settings, the seed included) is written when the grid starts (:func:`write_configs`)."""
    config = directory.parent / f"{run.id}.config.json"
    command = [sys.executable, "-m", "spruce", spec.command, "--config", str(config)]
    command += ["--threads", str(spec.threads), "--out", str(directory), "--quiet"]
    if directory.exists():
        # Only unfinished runs are launched: a folder without report.json is a leftover.
        command.append("--overwrite")
    if checkpoint_dir(directory).exists():
        # A run the grid was stopped in continues where its checkpoint left off.
        command.append("--resume")
    return command


def config_for(spec: GridSpec, run: Run) -> dict[str, Any]:
    """The config block ``run`` launches with: its options with data paths resolved
    against the YAML's folder, checked by the config classes."""
    cwd = Path.cwd()

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            return resolve_path(value, spec.root, cwd)
        if isinstance(value, list):
            return [resolve(item) for item in value]
        if isinstance(value, dict):
            return {key: resolve(item) for key, item in value.items()}
        return value

    options = {path: resolve(value) for path, value in run.options.items()}
    return run_config(spec.command, options, run.seed)


def check_runs(spec: GridSpec, runs: Sequence[Run]) -> None:
    """Build each distinct configuration's settings once, before any run starts: a wrong
    value (a sparsity of 1.5, an unknown method) fails here, naming the run."""
    checked = set()
    for run in runs:
        if run.config in checked:
            continue
        checked.add(run.config)
        try:
            config_for(spec, run)
        except SpruceError as error:
            raise SpruceError(
                f"{spec.path}: run {run.id}: {error.problem}", "fix its settings in the grid file"
            ) from None


def write_configs(spec: GridSpec, runs: Sequence[Run], out: Path) -> None:
    """``runs/RUN.config.json`` of every run still to launch (what its --config reads)."""
    for run in runs:
        if not is_done(run, out):
            text = json.dumps(config_for(spec, run), indent=2) + "\n"
            write_text_atomic(Path(out) / "runs" / f"{run.id}.config.json", text)


def is_done(run: Run, out: Path) -> bool:
    return (run.directory(out) / "report.json").is_file()


def read_failure(run: Run, out: Path) -> dict[str, Any] | None:
    """The record of ``run``'s last failed attempt, if it has not succeeded since."""
    path = run.failure(out)
    if is_done(run, out) or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class GridOutcome:
    """What one invocation did: run ids skipped (already done), done and failed."""

    skipped: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class _Active:
    run: Run
    process: subprocess.Popen
    log: IO[bytes]
    start: float


def pending(runs: Sequence[Run], out: Path, outcome: GridOutcome) -> list[Run]:
    """The runs still to launch; finished ones are recorded in ``outcome`` as skipped."""
    left = []
    for run in runs:
        if is_done(run, out):
            outcome.skipped.append(run.id)
            print(f"skip {run.id}: done", flush=True)
        else:
            left.append(run)
    return left


def progress(total: int, skipped: int) -> tqdm:
    return tqdm(total=total, initial=skipped, unit="run", dynamic_ncols=True)


def dry_run(spec: GridSpec, runs: Sequence[Run], out: Path, command: Command | None = None) -> None:
    """Print each run's id, settings and command line; nothing is started or written."""
    build = command or command_for
    for run in runs:
        state = "done, skipped" if is_done(run, out) else "to run"
        settings = ", ".join(f"{k}={v}" for k, v in run.options.items()) or "defaults"
        print(f"{run.id} ({state}): {settings}, seed {run.seed}")
        print(f"  {shlex.join(build(spec, run, run.directory(out)))}")
    print(f"{len(runs)} runs, {sum(not is_done(r, out) for r in runs)} to run")


def run_grid(
    spec: GridSpec,
    runs: Sequence[Run],
    out: Path,
    jobs: int | None = None,
    command: Command | None = None,
    *,
    backend: str = "local",
    ray_address: str | None = None,
) -> GridOutcome:
    """Run every unfinished run; ``command`` replaces the real ``spruce prune`` command
    line (tests launch a small fake instead).

    ``backend="local"``: subprocesses of this process, at most ``jobs`` at once (default:
    :meth:`GridSpec.job_count`). ``backend="ray"``: one task per run on the Ray cluster
    at ``ray_address`` (see :func:`spruce.grid.ray_backend.run_grid_ray`; ``jobs`` caps
    the runs in flight, ``None`` leaves it to the cluster's resources)."""
    build = command or command_for
    (Path(out) / "runs").mkdir(parents=True, exist_ok=True)
    write_configs(spec, runs, out)
    if backend == "ray":
        from spruce.grid.ray_backend import run_grid_ray

        return run_grid_ray(spec, runs, out, jobs, build, ray_address)
    if backend != "local":
        raise ValueError(f"unknown grid backend {backend!r}; expected one of {BACKENDS}")
    jobs = spec.job_count(jobs)
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    outcome = GridOutcome()
    queue = deque(pending(runs, out, outcome))
    env = run_environment(spec.threads)
    active: list[_Active] = []
    bar = progress(len(runs), len(outcome.skipped))
    try:
        while queue or active:
            while queue and len(active) < jobs:
                active.append(_start(spec, queue.popleft(), out, build, env))
            finished = [a for a in active if a.process.poll() is not None]
            for item in finished:
                active.remove(item)
                item.log.close()
                wall = time.perf_counter() - item.start
                record(spec, item.run, item.process.returncode, wall, out, outcome, bar)
            if not finished:
                time.sleep(POLL_S)
    except BaseException:
        # Ctrl-C or a crash of the grid itself: stop the children too, so none keeps
        # running unseen.
        stop([item.process for item in active])
        for item in active:
            item.log.close()
        raise
    finally:
        bar.close()
    return outcome


def _start(spec: GridSpec, run: Run, out: Path, build: Command, env: dict[str, str]) -> _Active:
    run.failure(out).unlink(missing_ok=True)
    argv = build(spec, run, run.directory(out))
    log = open_log(run.log(out), argv)
    try:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    except BaseException:
        log.close()
        raise
    return _Active(run, process, log, time.perf_counter())


def record(
    spec: GridSpec,
    run: Run,
    code: int | None,
    wall: float,
    out: Path,
    outcome: GridOutcome,
    bar: tqdm,
    *,
    where: str = "",
    error: str = "",
) -> None:
    """Record a run that ended with exit code ``code`` (``None``: it could not be run,
    ``error`` says why): ``done`` if it wrote its report, else a ``*.failed.json``.
    ``where`` names the machine it ran on, for the progress line."""
    bar.update(1)
    on = f" on {where}" if where else ""
    if code == 0 and is_done(run, out):
        report = json.loads((run.directory(out) / "report.json").read_text(encoding="utf-8"))
        value = report.get("metrics", {}).get(spec.metric)
        shown = f"{spec.metric} {value:.4f}" if isinstance(value, int | float) else "no metric"
        outcome.done.append(run.id)
        bar.write(f"done {run.id}: {shown} ({wall:.0f} s{on})")
        return
    if code is not None:
        error = last_line(run.log(out))
    if code == 0:
        error = f"exited 0 without writing report.json; {error}"
    failure = {"exit_code": code, "error": error, "wall_time_s": round(wall, 2)}
    write_text_atomic(run.failure(out), json.dumps(failure, indent=2) + "\n")
    outcome.failed.append(run.id)
    bar.write(f"FAILED {run.id} (exit {code}, {wall:.0f} s{on}): {error}; log {run.log(out)}")


def last_line(log: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (the ``spruce: error:`` line of a user error)."""
    try:
        with log.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # Progress bars end their updates with carriage returns, not newlines.
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""
