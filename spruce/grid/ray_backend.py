"""``spruce grid --backend ray``: each unfinished run is one Ray task on a cluster.

A task (:func:`spruce.grid.process.execute`) runs the same command line as the local
backend (:func:`runner.command_for`) as a subprocess of a Ray worker, with the same log
file, and hands back its exit code; the driver records the outcome with the same
:func:`runner.record`. So a run folder, its log and its ``*.failed.json`` look the same
whichever backend made them, a grid can be continued with the other backend, and
results.csv / report.md do not change.

What the cluster must provide, because the driver decides and the workers act on files:

* every node sees the grid's folder and the data at the same paths (a shared
  filesystem). The driver decides which runs are finished and whether a run resumes from
  a checkpoint by looking at files that the workers write; the grid folder is made
  absolute and each run starts in the driver's working directory, so relative data paths
  mean what they mean on the driver;
* every node has spruce installed; a run uses the Python of the Ray worker that runs it.

``import ray`` happens only here, and only when the Ray backend is asked for, so that
spruce does not need Ray installed.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from spruce.errors import SpruceError
from spruce.grid.process import POLL_S, STOP_S, Result, execute
from spruce.grid.runner import Command, GridOutcome, pending, progress, record
from spruce.grid.spec import GridSpec, Run

INSTALL = "pip install 'spruce[ray]'"


def import_ray(source: str = "--backend ray") -> ModuleType:
    """The ``ray`` module, or a :class:`SpruceError` that says how to install it;
    ``source`` names what asked for Ray (the option or the grid file key)."""
    try:
        import ray
    except ImportError as error:
        if error.name == "ray":
            raise SpruceError(f"{source} needs the ray package", INSTALL) from None
        # Ray is there but one of its own dependencies is not.
        raise SpruceError(
            f"{source}: the ray package cannot be imported ({error})", f"reinstall it: {INSTALL}"
        ) from None
    return ray


def run_grid_ray(
    spec: GridSpec,
    runs: Sequence[Run],
    out: Path,
    jobs: int | None,
    build: Command,
    address: str | None,
) -> GridOutcome:
    """Run every unfinished run as a Ray task needing ``spec.threads`` CPUs and
    ``spec.gpus_per_run`` GPUs, at most ``jobs`` in flight (``None``: as many as the
    cluster's resources allow; Ray queues the rest).

    ``address``: ``None`` joins the Ray that ``RAY_ADDRESS`` names or that ``ray start``
    runs on this machine, else starts one for the grid; ``"auto"`` joins the cluster this
    machine belongs to, ``HOST:PORT`` or ``ray://HOST:PORT`` a given one. A Ray already
    initialised in this process is used as it is. Ctrl-C cancels the tasks still queued
    or running (the running ones stop as in the local backend) and leaves finished runs
    recorded."""
    ray = import_ray()
    # Workers do not start in the driver's working directory: the grid folder they get is
    # absolute, and each run starts in the driver's (relative data paths then hold).
    out = Path(out).resolve()
    outcome = GridOutcome()
    queue = deque(pending(runs, out, outcome))
    if not queue:
        return outcome  # no need to start or join Ray
    own = _connect(ray, address)
    try:
        _check_capacity(ray, spec, own)
        (out / "runs").mkdir(parents=True, exist_ok=True)
        task = ray.remote(execute).options(
            num_cpus=spec.threads,
            num_gpus=spec.gpus_per_run,
            # A retry would reuse a command line built before the first attempt wrote
            # its folder; the grid's own rerun (resume) is the retry.
            max_retries=0,
        )
        cwd = str(Path.cwd())
        in_flight: dict[Any, tuple[Run, float]] = {}
        bar = progress(len(runs), len(outcome.skipped))
        try:
            while queue or in_flight:
                while queue and (jobs is None or len(in_flight) < jobs):
                    run = queue.popleft()
                    run.failure(out).unlink(missing_ok=True)
                    run.stop_request(out).unlink(missing_ok=True)
                    argv = build(spec, run, run.directory(out))
                    log = str(run.log(out))
                    gpus = spec.gpus_per_run
                    stop_file = str(run.stop_request(out))
                    ref = task.remote(argv, log, cwd, spec.threads, gpus, sys.executable, stop_file)
                    in_flight[ref] = (run, time.perf_counter())
                # A timeout, so that Ctrl-C is noticed while every run is still going.
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S * 5)
                for ref in ready:
                    run, submitted = in_flight.pop(ref)
                    code, wall, node, error = _result(ray, ref, submitted)
                    record(spec, run, code, wall, out, outcome, bar, where=node, error=error)
        except BaseException:
            _cancel(ray, {ref: run for ref, (run, _) in in_flight.items()}, out)
            raise
        finally:
            bar.close()
    finally:
        if own:
            ray.shutdown()
    return outcome


def _connect(ray: ModuleType, address: str | None) -> bool:
    """Initialise Ray unless this process already has; True if it must be shut down."""
    if ray.is_initialized():
        return False
    import logging

    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        options["include_dashboard"] = False  # if one is started, it serves this grid only
    # ray.init replaces the SIGTERM handler with one that aborts the process; spruce's
    # (stop as on Ctrl-C: cancel the runs, keep the finished ones, summarise) goes back.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, **options)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if address is None:
            raise SpruceError(
                f"could not start Ray on this machine: {first}",
                "see 'ray start --head' for the details, or use --backend local",
            ) from None
        raise SpruceError(
            f"could not connect to the Ray cluster at {address}: {first}",
            "start it with 'ray start --head' on its head node, or check --ray-address",
        ) from None
    finally:
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    return True


def _check_capacity(ray: ModuleType, spec: GridSpec, own: bool) -> None:
    """A run that no node can hold would wait for ever: say so before submitting it."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus, gpus = spec.threads, spec.gpus_per_run
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPUs/{r.get('GPU', 0):g} GPUs" for r in nodes)
    problem = (
        f"no Ray node has the {cpus} CPUs and {gpus:g} GPUs that one run needs "
        f"(threads, gpus_per_run); nodes: {have or 'none'}"
    )
    if own:  # the instance started here will not grow
        raise SpruceError(problem, "lower threads or gpus_per_run in the grid file")
    # A cluster may be autoscaling: the runs wait in Ray's queue until such a node joins.
    print(f"spruce: warning: {problem}; runs wait until such a node joins", file=sys.stderr)


def _result(ray: ModuleType, ref: Any, submitted: float) -> Result:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        # The task itself failed (its worker or node died, or the run could not be
        # started): the run is recorded as failed, with no exit code.
        cause = getattr(error, "cause", None)
        text = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        line = (text.strip().splitlines() or [type(error).__name__])[0][:300]
        return None, time.perf_counter() - submitted, "", f"the Ray task failed: {line}"


def _cancel(ray: ModuleType, in_flight: dict[Any, Run], out: Path) -> None:
    """Stop the runs still queued or running, and wait until the running ones have ended
    (SIGTERM, which saves a checkpoint) before Ray may be shut down.

    Each run's stop-request file is the channel that always arrives: ``ray.cancel`` of a
    running task sometimes never raises in it (so the driver would wait for nothing and
    shut Ray down under a run that is still computing). The cancel still goes out, so
    that queued tasks are dropped without waiting for a free CPU."""
    if not in_flight:
        return
    for run in in_flight.values():
        run.stop_request(out).touch()
    for ref in in_flight:
        ray.cancel(ref)
    ended, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_S + 10)
    # A task that has not ended keeps its request, in case it starts after all; the next
    # submission of the run removes it.
    for ref in ended:
        in_flight[ref].stop_request(out).unlink(missing_ok=True)
