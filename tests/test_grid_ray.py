"""``spruce grid --backend ray``: errors without Ray, the pieces that need no cluster, and a
real local Ray instance running a grid of the fake ``spruce prune`` of ``test_grid.py``.

The real tests need the ``ray`` package (``pip install 'spruce[ray]'``); where it is
missing they are skipped with that reason. They share one Ray instance (2 CPUs, started
once per module: about 6 s).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_grid import fake, grid_file, read_csv, run_cli  # noqa: F401 - fake: see below
from tqdm import tqdm

from spruce.errors import SpruceError
from spruce.grid import expand, load_grid, ray_backend, run_grid, summarize
from spruce.grid import runner as grid_runner
from spruce.grid.process import execute, stop
from spruce.grid.ray_backend import _check_capacity, _result
from spruce.grid.runner import GridOutcome, record

GRID = "  coupling: [none, joint]\n"  # x seeds [0, 1]: 4 runs


@pytest.fixture
def fake_prune(request: pytest.FixtureRequest):
    """The fake ``spruce prune`` command builder of test_grid.py (its fixture ``fake``)."""
    return request.getfixturevalue("fake")


# --- without a cluster ------------------------------------------------------------------


@pytest.mark.parametrize("yaml_backend", [False, True])
def test_missing_ray_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, yaml_backend) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = grid_file(tmp_path, GRID, extra="backend: ray\n" if yaml_backend else "")
    args = ["grid", path] if yaml_backend else ["grid", path, "--backend", "ray"]
    code, out, err = run_cli(capsys, args)
    source = f"'backend: ray' in {path}" if yaml_backend else "--backend ray"
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == f"spruce: error: {source} needs the ray package; pip install 'spruce[ray]'\n"
    assert not (tmp_path / "out").exists()
    # Listing the runs needs no Ray.
    code, out, _ = run_cli(capsys, [*args, "--dry-run"])
    assert code == 0 and "4 runs, 4 to run" in out


def test_ray_address_needs_the_ray_backend(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, ["grid", grid_file(tmp_path, GRID), "--ray-address", "auto"])
    assert code == 2 and err.count("\n") == 1 and "add --backend ray" in err


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("backend: slurm\n", "backend must be one of local, ray, got 'slurm'"),
        ("gpus_per_run: -1\n", "gpus_per_run must be a number of GPUs >= 0"),
        ("gpus_per_run: true\n", "gpus_per_run must be a number"),
        ("gpus_per_runs: 1\n", "did you mean 'gpus_per_run'?"),
    ],
)
def test_invalid_backend_settings(tmp_path: Path, extra: str, fragment: str) -> None:
    with pytest.raises(SpruceError) as caught:
        load_grid(grid_file(tmp_path, GRID, extra=extra))
    assert fragment in caught.value.one_line()


def test_backend_settings_are_read(tmp_path: Path) -> None:
    spec = load_grid(grid_file(tmp_path, GRID, extra="backend: ray\ngpus_per_run: 0.5\n"))
    assert (spec.backend, spec.gpus_per_run) == ("ray", 0.5)
    spec = load_grid(grid_file(tmp_path, GRID))
    assert (spec.backend, spec.gpus_per_run) == ("local", 0)


def fake_ray(*resources: dict[str, float]) -> SimpleNamespace:
    return SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": r} for r in resources])


def test_a_run_no_node_can_hold_is_refused_or_warned(tmp_path: Path, capsys) -> None:
    spec = load_grid(grid_file(tmp_path, GRID, extra="gpus_per_run: 1\n"))
    _check_capacity(fake_ray({"CPU": 8, "GPU": 1}), spec, own=True)  # fits
    nodes = fake_ray({"CPU": 8}, {"CPU": 2, "GPU": 0})
    with pytest.raises(SpruceError, match="no Ray node has the 1 CPUs and 1 GPUs") as caught:
        _check_capacity(nodes, spec, own=True)  # the instance spruce started: it will not grow
    assert "nodes: 8 CPUs/0 GPUs, 2 CPUs/0 GPUs" in str(caught.value)
    _check_capacity(nodes, spec, own=False)  # a cluster may still add a node
    assert "runs wait until such a node joins" in capsys.readouterr().err


def test_execute_needs_the_shared_folders(tmp_path: Path) -> None:
    log = tmp_path / "runs" / "a.log"
    code, _, node, error = execute(["python"], str(log), str(tmp_path / "gone"), 1, 0, "python")
    assert code is None and f"{tmp_path / 'gone'}, does not exist on {node}" in error
    code, _, _, error = execute(["python"], str(log), str(tmp_path), 1, 0, "python")
    assert code is None and "the grid's runs folder" in error and not log.exists()


@pytest.mark.parametrize(("gpus", "visible"), [(0, "''"), (1, "'0'")])
def test_execute_runs_in_the_driver_folder_with_this_python(
    tmp_path: Path, monkeypatch, gpus: float, visible: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # as Ray sets it for a task with a GPU
    log = tmp_path / "a.log"
    show = (
        "import os, sys; e = os.environ; print(os.getcwd(), sys.executable, e['OMP_NUM_THREADS'], "
    )
    argv = ["/driver/python", "-c", show + "repr(e['CUDA_VISIBLE_DEVICES']))"]
    code, wall, _, error = execute(argv, str(log), str(tmp_path), 3, gpus, "/driver/python")
    assert (code, error) == (0, "") and wall > 0
    header, line = log.read_text().splitlines()
    assert header.startswith(f"$ {sys.executable} -c ")  # the command as it ran here
    # A run that reserved no GPU sees none.
    assert line == f"{tmp_path} {sys.executable} 3 {visible}"


SAVES_ON_SIGTERM = textwrap.dedent("""
    import pathlib, signal, sys, time
    state = pathlib.Path(sys.argv[1])
    def stopped(*_):
        time.sleep(0.5)  # a checkpoint being written
        (state / "saved").write_text("")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stopped)
    (state / "started").write_text("")
    time.sleep(120)
""")


def test_a_stop_request_stops_the_running_run_after_its_save(tmp_path: Path) -> None:
    """The driver's stop-request file ends the run as Ctrl-C does, and execute returns
    only once the run has saved and exited (not on ray.cancel reaching the task)."""
    import threading

    request = tmp_path / "a.stop"
    argv = [sys.executable, "-c", SAVES_ON_SIGTERM, str(tmp_path)]

    def request_once_started() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        request.touch()

    asker = threading.Thread(target=request_once_started)
    asker.start()
    code, wall, _, error = execute(
        argv, str(tmp_path / "a.log"), str(tmp_path), 1, 0, "python", str(request)
    )
    asker.join()
    assert (code, error) == (143, "") and wall < 60
    assert (tmp_path / "saved").exists()


def test_a_stop_request_made_before_the_task_starts_runs_nothing(tmp_path: Path) -> None:
    request = tmp_path / "a.stop"
    request.touch()
    argv = [sys.executable, "-c", SAVES_ON_SIGTERM, str(tmp_path)]
    code, _, _, error = execute(
        argv, str(tmp_path / "a.log"), str(tmp_path), 1, 0, "python", str(request)
    )
    assert code is None and "before it started" in error
    assert not (tmp_path / "started").exists() and not (tmp_path / "a.log").exists()


def test_stop_waits_for_the_save_through_a_second_interrupt() -> None:
    """Ray repeats a cancellation (a KeyboardInterrupt each time) and users press Ctrl-C
    twice: neither may leave the run saving after its caller has gone."""

    class Run:
        def __init__(self) -> None:
            self.signals: list[str] = []
            self.waits = 0

        def poll(self):
            return None if not self.waits > 1 else 143

        def terminate(self) -> None:
            self.signals.append("TERM")

        def kill(self) -> None:
            self.signals.append("KILL")

        def wait(self, timeout=None):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return 143

    runs = [Run(), Run()]
    with pytest.raises(KeyboardInterrupt):
        stop(runs)  # type: ignore[arg-type]
    # Each was signalled once (a second SIGTERM cuts a save short) and waited for to the end.
    assert [r.signals for r in runs] == [["TERM"], ["TERM"]]
    assert [r.waits for r in runs] == [2, 2]


def test_a_task_that_dies_is_a_failed_run_without_exit_code(tmp_path: Path) -> None:
    class RayError(Exception):
        pass

    class WorkerCrashedError(RayError):
        pass

    class RayTaskError(RayError):
        cause = FileNotFoundError("No such file or directory: 'python'")

    def fake_ray(error: RayError) -> SimpleNamespace:
        def get(ref):
            raise error

        return SimpleNamespace(get=get, exceptions=SimpleNamespace(RayError=RayError))

    crashed = fake_ray(WorkerCrashedError("The worker died unexpectedly.\nmore"))
    code, wall, node, error = _result(crashed, object(), time.perf_counter() - 2)
    assert (code, node, error) == (None, "", "the Ray task failed: The worker died unexpectedly.")
    assert wall >= 2  # counted from submission: the task reported nothing
    raised = fake_ray(RayTaskError("ray::execute() (pid=7)\n  Traceback ..."))
    error = _result(raised, object(), time.perf_counter())[3]
    assert error == "the Ray task failed: FileNotFoundError: No such file or directory: 'python'"

    spec = load_grid(grid_file(tmp_path, GRID))
    run, out, outcome = expand(spec)[0], tmp_path / "out", GridOutcome()
    (out / "runs").mkdir(parents=True)
    record(spec, run, None, 2.0, out, outcome, tqdm(disable=True), error=error)
    assert outcome.failed == [run.id]
    assert json.loads(run.failure(out).read_text()) == {
        "exit_code": None, "error": error, "wall_time_s": 2.0
    }  # fmt: skip


# --- a real Ray instance ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip(
        "ray", reason="ray is not installed: pip install 'spruce[ray]' to run the Ray tests"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_runs_resume_failures_and_report(
    ray_instance, tmp_path, fake_prune, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_grid(grid_file(tmp_path, GRID))
    runs, out = expand(spec), Path("out")  # relative: the tasks must get absolute paths
    (fake_prune.state / "fail-joint-s1").write_text("")
    outcome = run_grid(spec, runs, out, None, command=fake_prune, backend="ray")
    assert sorted(outcome.done) == ["joint-s0", "none-s0", "none-s1"]
    assert outcome.failed == ["joint-s1"] and sorted(fake_prune.launches()) == sorted(
        r.id for r in runs
    )
    log = (tmp_path / "out" / "runs" / "joint-s1.log").read_text()
    assert f"--out {tmp_path / 'out' / 'runs' / 'joint-s1'} " in log.splitlines()[0]
    assert log.rstrip().endswith("boom")

    summarize(spec, runs, out, "spruce grid grid.yaml --backend ray")
    rows = {row["run"]: row for row in read_csv(out / "results.csv")}
    assert rows["joint-s1"]["status"] == "failed" and rows["joint-s1"]["exit_code"] == "1"
    assert rows["joint-s1"]["error"] == "spruce: error: boom"
    assert float(rows["none-s0"]["accuracy"]) == pytest.approx(0.71)

    # Again: the finished runs are skipped, the failed one is retried (and fails again).
    outcome = run_grid(spec, runs, out, None, command=fake_prune, backend="ray")
    assert len(outcome.skipped) == 3 and outcome.failed == ["joint-s1"]
    assert len(fake_prune.launches()) == 5


def test_cli_with_the_ray_backend(ray_instance, capsys, tmp_path, fake_prune, monkeypatch) -> None:
    monkeypatch.setattr(grid_runner, "command_for", fake_prune)
    path = grid_file(tmp_path, GRID, extra="backend: ray\n")
    (fake_prune.state / "fail-none-s0").write_text("")
    code, stdout, _ = run_cli(capsys, ["grid", path, "--jobs", "1"])
    assert code == 1 and "4 runs, at most 1 at a time on Ray (1 CPUs, 0 GPUs per run)" in stdout
    assert "1 of 4 runs failed: none-s0" in stdout
    (fake_prune.state / "fail-none-s0").unlink()
    code, stdout, _ = run_cli(capsys, ["grid", path])
    assert code == 0 and "skip joint-s1: done" in stdout and len(fake_prune.launches()) == 5
    assert {row["status"] for row in read_csv(tmp_path / "out" / "results.csv")} == {"done"}
    # The local backend continues the same folder: nothing is left to run.
    code, stdout, _ = run_cli(capsys, ["grid", path, "--backend", "local"])
    assert code == 0 and len(fake_prune.launches()) == 5


SLOW = textwrap.dedent("""
    import pathlib, signal, sys, time
    state, name = pathlib.Path(sys.argv[1]), sys.argv[2]
    def stopped(*_):
        (state / ("stopped-" + name)).write_text("")  # where spruce saves its checkpoint
        sys.exit(143)
    signal.signal(signal.SIGTERM, stopped)
    (state / ("started-" + name)).write_text("")
    time.sleep(120)
""")


def test_ctrl_c_cancels_the_outstanding_runs(
    ray_instance, tmp_path, fake_prune, monkeypatch
) -> None:
    spec = load_grid(grid_file(tmp_path, "  coupling: [none, joint, tied, sequential]\n"))
    runs, out = expand(spec)[:4], tmp_path / "out"  # seed 0 of each

    def command(spec, run, directory):
        if run.id == "none-s0":
            return fake_prune(spec, run, directory)
        return [sys.executable, "-c", SLOW, str(fake_prune.state), run.id]

    def started() -> set[str]:
        return {p.name.removeprefix("started-") for p in fake_prune.state.glob("started-*")}

    def record_then_interrupt(*args, **kwargs):
        recorded(*args, **kwargs)
        # Ctrl-C once the quick run is recorded and two slow ones fill the 2 CPUs, so
        # that the third waits in Ray's queue.
        deadline = time.monotonic() + 60
        while len(started()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        raise KeyboardInterrupt

    recorded = ray_backend.record
    monkeypatch.setattr(ray_backend, "record", record_then_interrupt)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, runs, out, None, command=command, backend="ray")
    assert time.perf_counter() - start < 90  # not the slow runs' 120 s
    assert (out / "runs" / "none-s0" / "report.json").is_file()
    stopped = {p.name.removeprefix("stopped-") for p in fake_prune.state.glob("stopped-*")}
    assert len(started()) == 2 and stopped == started()  # the running ones got SIGTERM
    time.sleep(1)
    assert len(started()) == 2  # the queued one was cancelled, not started
    # The next invocation skips the finished run and runs the others.
    monkeypatch.setattr(ray_backend, "record", recorded)
    outcome = run_grid(spec, runs, out, None, command=fake_prune, backend="ray")
    assert outcome.skipped == ["none-s0"] and len(outcome.done) == 3


DRIVER = textwrap.dedent("""
    import sys
    from spruce.cli.main import main
    from spruce.grid import runner
    SLOW, STATE = sys.argv[1], sys.argv[2]
    runner.command_for = lambda spec, run, directory: [
        sys.executable, "-c", SLOW, STATE, run.id, "--out", str(directory)
    ]
    sys.exit(main(["grid", sys.argv[3], "--backend", "ray"]))
""")


def test_sigterm_to_spruce_grid_stops_it_like_ctrl_c(ray_instance, tmp_path, fake_prune) -> None:
    """The real command in its own process, with the Ray instance it starts itself: a
    SIGTERM (a batch scheduler's stop) ends it as Ctrl-C does, not in Ray's abort."""
    import signal
    import subprocess

    path = grid_file(tmp_path, "  coupling: [none, joint]\n", extra="")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, SLOW, str(fake_prune.state), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(fake_prune.state.glob("started-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr[-2000:]
    assert "spruce: interrupted; finished runs are kept in" in stderr
    started = {p.name.removeprefix("started-") for p in fake_prune.state.glob("started-*")}
    stopped = {p.name.removeprefix("stopped-") for p in fake_prune.state.glob("stopped-*")}
    assert len(started) == 2 and stopped == started  # both running runs saved and stopped
    assert (tmp_path / "out" / "report.md").is_file()
