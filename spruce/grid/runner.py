"""Execution of a grid: one ``spruce prune`` subprocess per run, ``jobs`` at a time, resumable.

Each run is its own process so that a crash, an out-of-memory kill or a user error in
one configuration costs that run only; the grid records it and goes on. ``spruce prune``
writes its ``--out`` atomically, so a run whose report.json exists is complete and is
skipped when the grid is started again.
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

from spruce.grid.prune_cli import option_arguments, resolve_path
from spruce.grid.spec import GridSpec, Run
from spruce.train.checkpoint import checkpoint_dir
from spruce.utils.atomic import write_text_atomic

# (spec, run, run directory) -> the command line of that run.
Command = Callable[[GridSpec, Run, Path], list[str]]
POLL_S = 0.2


def command_for(spec: GridSpec, run: Run, directory: Path) -> list[str]:
    """``python -m spruce prune OPTIONS --seed S --threads T --out DIR --quiet``, with
    ``--resume`` where an earlier attempt left a checkpoint."""
    cwd = Path.cwd()
    options = option_arguments(
        run.options, spec.options, lambda text: resolve_path(text, spec.root, cwd)
    )
    command = [sys.executable, "-m", "spruce", spec.command, *options]
    command += ["--seed", str(run.seed), "--threads", str(spec.threads)]
    command += ["--out", str(directory), "--quiet"]
    if directory.exists():
        # Only unfinished runs are launched: a folder without report.json is a leftover.
        command.append("--overwrite")
    if checkpoint_dir(directory).exists():
        # A run the grid was stopped in continues where its checkpoint left off.
        command.append("--resume")
    return command


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


def dry_run(spec: GridSpec, runs: Sequence[Run], out: Path, command: Command | None = None) -> None:
    """Print each run's id and command line; nothing is started or written."""
    build = command or command_for
    for run in runs:
        state = "done, skipped" if is_done(run, out) else "to run"
        print(f"{run.id} ({state}):\n  {shlex.join(build(spec, run, run.directory(out)))}")
    print(f"{len(runs)} runs, {sum(not is_done(r, out) for r in runs)} to run")


def run_grid(
    spec: GridSpec,
    runs: Sequence[Run],
    out: Path,
    jobs: int,
    command: Command | None = None,
) -> GridOutcome:
    """Run every unfinished run, at most ``jobs`` at once; ``command`` replaces the real
    ``spruce prune`` command line (tests launch a small fake instead)."""
    build = command or command_for
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    outcome = GridOutcome()
    queue: deque[Run] = deque()
    for run in runs:
        if is_done(run, out):
            outcome.skipped.append(run.id)
            print(f"skip {run.id}: done", flush=True)
        else:
            queue.append(run)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads)}
    active: list[_Active] = []
    bar = tqdm(total=len(runs), initial=len(outcome.skipped), unit="run", dynamic_ncols=True)
    try:
        while queue or active:
            while queue and len(active) < jobs:
                active.append(_start(spec, queue.popleft(), out, build, env))
            finished = [a for a in active if a.process.poll() is not None]
            for item in finished:
                active.remove(item)
                _finish(spec, item, out, outcome, bar)
            if not finished:
                time.sleep(POLL_S)
    except BaseException:
        # Ctrl-C or a crash of the grid itself: stop the children too, so none keeps
        # running unseen. SIGTERM makes each save a checkpoint first; the next
        # invocation continues them from there (command_for adds --resume).
        for item in active:
            item.process.terminate()
        for item in active:
            try:
                item.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                item.process.kill()
            item.log.close()
        raise
    finally:
        bar.close()
    return outcome


def _start(spec: GridSpec, run: Run, out: Path, build: Command, env: dict[str, str]) -> _Active:
    run.failure(out).unlink(missing_ok=True)
    argv = build(spec, run, run.directory(out))
    log = run.log(out).open("wb")
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    try:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    except BaseException:
        log.close()
        raise
    return _Active(run, process, log, time.perf_counter())


def _finish(spec: GridSpec, item: _Active, out: Path, outcome: GridOutcome, bar: tqdm) -> None:
    item.log.close()
    run, code = item.run, item.process.returncode
    wall = time.perf_counter() - item.start
    bar.update(1)
    if code == 0 and is_done(run, out):
        report = json.loads((run.directory(out) / "report.json").read_text(encoding="utf-8"))
        value = report.get("metrics", {}).get(spec.metric)
        shown = f"{spec.metric} {value:.4f}" if isinstance(value, int | float) else "no metric"
        outcome.done.append(run.id)
        bar.write(f"done {run.id}: {shown} ({wall:.0f} s)")
        return
    error = last_line(run.log(out))
    if code == 0:
        error = f"exited 0 without writing report.json; {error}"
    record = {"exit_code": code, "error": error, "wall_time_s": round(wall, 2)}
    write_text_atomic(run.failure(out), json.dumps(record, indent=2) + "\n")
    outcome.failed.append(run.id)
    bar.write(f"FAILED {run.id} (exit {code}, {wall:.0f} s): {error}; log {run.log(out)}")


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
