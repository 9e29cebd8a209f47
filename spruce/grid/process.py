"""Launching one grid run's process: its log, its environment, stopping it, and running it
to the end on a worker machine (the body of a Ray task).

Standard library only, and ``spruce.grid`` imports its modules lazily, so that a Ray
worker that runs :func:`execute` does not load torch, transformers and scikit-learn (a
few seconds and some hundred MB per worker) only to wait for a subprocess that loads
them itself.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

STOP_S = 30  # how long a stopped run may take to save its checkpoint before it is killed
POLL_S = 0.2
# (exit code or None when it could not be started, wall time in s, machine, why not started)
Result = tuple[int | None, float, str, str]


def run_environment(threads: int) -> dict[str, str]:
    """The environment of a run: this process's, with the grid's thread count."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def open_log(path: Path, argv: Sequence[str]) -> IO[bytes]:
    """The run's log, headed by its command line so that a failure can be reproduced."""
    log = Path(path).open("wb")  # noqa: SIM115 - the caller closes it when the run ends
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    return log


def stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM, which makes ``spruce prune`` save a checkpoint first (the next invocation
    continues from it: the grid adds --resume); SIGKILL if that takes longer than
    ``STOP_S``. All are signalled before any is waited for, so that they save together;
    each is signalled once, as a second SIGTERM would cut its save short.

    A KeyboardInterrupt while waiting (a second Ctrl-C, or Ray repeating a cancellation)
    does not cut the wait short: the run would be left saving, or running, after its
    caller has gone; it is raised once every process has ended."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_S
    interrupted = False
    for process in processes:
        while True:
            try:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    process.wait(timeout=remaining)
                else:
                    process.kill()
                    process.wait()
                break
            except subprocess.TimeoutExpired:
                continue  # past the deadline: the next pass kills it
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def execute(
    argv: list[str],
    log: str,
    cwd: str,
    threads: int,
    gpus: float,
    driver_python: str,
    stop_request: str | None = None,
) -> Result:
    """Run one grid run on this machine to its end, in ``cwd``, output to ``log``.

    The body of a Ray task (:mod:`spruce.grid.ray_backend`) that reserved ``threads``
    CPUs and ``gpus`` GPUs: ``argv`` was built on the driver, whose Python is
    ``driver_python``. Once the file ``stop_request`` exists the run is stopped as on
    Ctrl-C (or not started): the driver's way to stop it that does not depend on
    ``ray.cancel`` reaching a running task, which it does not always do."""
    node = socket.gethostname()
    if argv and argv[0] == driver_python:
        # The driver's interpreter path need not exist here; this Python has spruce (it
        # imported this module).
        argv = [sys.executable, *argv[1:]]
    folders = {
        "the folder spruce grid runs in": Path(cwd),
        "the grid's runs folder": Path(log).parent,
    }
    for what, folder in folders.items():
        if not folder.is_dir():
            fix = "run spruce grid in, and keep --out on, a filesystem every Ray node shares"
            return None, 0.0, node, f"{what}, {folder}, does not exist on {node}; {fix}"
    requested = Path(stop_request) if stop_request else None
    if requested is not None and requested.exists():
        return None, 0.0, node, "stopped by spruce grid before it started"
    env = run_environment(threads)  # with the CUDA_VISIBLE_DEVICES Ray set for `gpus`
    if not gpus:
        # Ray no longer hides the GPUs from a task that reserved none (ray-project/ray
        # issue 54868); a run that reserved none must not take one Ray gave another run.
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    handle = open_log(Path(log), argv)
    try:
        process = subprocess.Popen(
            argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        try:
            # Not one blocking wait(): ray.cancel raises its exception asynchronously, in
            # between Python bytecodes, which a single waitpid() never returns to.
            while (code := process.poll()) is None:
                if requested is not None and requested.exists():
                    stop([process])
                    code = process.returncode
                    break
                time.sleep(POLL_S)
        except BaseException:
            # ray.cancel raises KeyboardInterrupt here: stop the run as the local
            # backend does (it saves a checkpoint) before the task ends.
            stop([process])
            raise
    finally:
        handle.close()
    return code, time.perf_counter() - start, node, ""
