"""Every golden run (tests/golden.py) gives the weights and report recorded before the redesign:
the tiny-model runs always, the real-MiniLM runs (marked integration) where the shared
SST-2 and RTE data is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import shared_data
from golden import INTEGRATION_RUNS, RUNS, machine, make_inputs, recordings, run


def differences(expected: object, actual: object, path: str = "") -> list[str]:
    """The key paths where two JSON values differ, for a message one can act on. A
    setting a report's ``config`` block gained since the recording is no difference: the
    block echoes the run's input (it gained ``model`` so that it reruns the run), and every
    result beside it is still compared."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{path}/{k}: only in the recording" for k in expected.keys() - actual.keys()]
        if "/config" not in path:
            found += [f"{path}/{k}: not in the recording" for k in actual.keys() - expected.keys()]
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{path}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in differences(e, a, f"{path}[{i}]")
        ]
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


@pytest.fixture(scope="module")
def recorded() -> dict:
    """The recorded digests, where this machine can reproduce them bit for bit."""
    here = machine()
    kinds = [r["machine"] for r in recordings()]
    for recording in recordings():
        if recording["machine"] == here:
            return recording["runs"]
    pytest.skip(
        f"golden outputs were recorded on {kinds}, this is {here}: record them at the "
        "commit before the redesign (python tests/golden.py --record) to compare a change"
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    make_inputs(folder)
    return folder


def test_differences_names_the_changed_value() -> None:
    assert differences({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == ["/a[1]/b: 2 != 3"]
    assert differences({"a": 1}, {"a": 1}) == []
    assert differences({"config": {}}, {"config": {"model": "m"}}) == []
    assert differences({"config": {"a": 1}}, {"config": {}}) == ["/config/a: only in the recording"]
    assert differences({}, {"b": 1}) == ["/b: not in the recording"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_results_match_the_recorded_ones(name: str, recorded: dict, root: Path) -> None:
    changed = differences(recorded[name], run(name, root))
    assert not changed, f"{name} moved ({len(changed)} values): " + "; ".join(changed[:8])


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(INTEGRATION_RUNS))
def test_minilm_results_match_the_recorded_ones(name: str, recorded: dict, tmp_path: Path) -> None:
    shared_data("sst2", "train.tsv")
    shared_data("rte", "train.tsv")
    if name not in recorded:
        pytest.skip(
            f"{name} is not in this machine kind's recording: record it at the commit "
            "before the redesign (python tests/golden.py --record --only integration)"
        )
    changed = differences(recorded[name], run(name, tmp_path))
    assert not changed, f"{name} moved ({len(changed)} values): " + "; ".join(changed[:8])
