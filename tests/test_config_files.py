"""``--config FILE``: a report's config block reruns its run; options beside it override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden import digest
from spruce.cli.main import main
from spruce.config import from_config, read_config, to_config
from spruce.errors import SpruceError
from spruce.pipelines.prune import PruneRun
from tiny_models import write_sentiment_files

QUICK = ["--learning-rate", "5e-3", "--batch-size", "16", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sentiment_files(tmp_path_factory.mktemp("config-data"))


def _prune_argv(model: Path, data: dict[str, Path], out: Path) -> list[str]:
    return [
        "prune", "--model", str(model), "--train", str(data["train"]), "--validation",
        str(data["validation"]), "--test", str(data["test"]), "--max-train-samples", "64",
        "--recipe", "plain", "--aux", "mlm", "--target-sparsity", "0.5", "--prune-epochs",
        "1", "--final-epochs", "1", "--no-latency", "--no-onnx", *QUICK, "--out", str(out),
    ]  # fmt: skip


def _without_paths(found: dict, *outs: Path) -> dict:
    """A digest with each run's own folder spelled alike (the report names its --out)."""
    text = json.dumps(found)
    for out in outs:
        text = text.replace(str(out), "<out>").replace(f"<root>/{out.name}", "<out>")
    return json.loads(text)


def test_a_report_reruns_its_prune_run_bit_for_bit(tiny_models, data, tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_prune_argv(tiny_models["bert"], data, first)) == 0
    argv = ["prune", "--config", str(first / "report.json"), "--out", str(second), *QUICK]
    assert main(argv) == 0
    expected = _without_paths(digest(first, tmp_path), first)
    assert _without_paths(digest(second, tmp_path), second) == expected
    config = json.loads((second / "report.json").read_text())["config"]
    assert config["transfer"]["aux"][0]["kind"] == "mlm"  # the file's auxiliary task came along


def test_options_beside_a_config_file_win(tiny_models, data, tmp_path) -> None:
    first = tmp_path / "first"
    assert main(_prune_argv(tiny_models["bert"], data, first)) == 0
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(json.loads((first / "report.json").read_text())["config"]))
    second = tmp_path / "second"
    argv = ["prune", "--config", str(run_json), "--target-sparsity", "0.3", "--seed", "1"]
    assert main([*argv, "--prune-max-steps", "1", "--final-max-steps", "1", *QUICK,
                 "--out", str(second)]) == 0  # fmt: skip
    config = json.loads((second / "report.json").read_text())["config"]
    assert config["prune"]["target_sparsity"] == 0.3
    assert config["train"]["seed"] == config["data"]["seed"] == 1
    assert config["prune"]["method"] == "l0" and config["data"]["max_train_samples"] == 64


def test_the_config_block_round_trips_through_the_configs(tmp_path) -> None:
    values = {"data": {"train": "t.tsv"}, "prune": {"target_sparsity": 0.9}, "model": "m"}
    run = from_config(PruneRun, values)
    assert run.prune.target_sparsity == 0.9 and run.model == "m"
    again = from_config(PruneRun, json.loads(json.dumps(to_config(run))))
    assert to_config(again) == to_config(run)
    assert "out" not in to_config(run) and "threads" not in to_config(run)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"command": "finetune", "config": {}}', "is the report of a spruce finetune run"),
        ("[1, 2]", "must hold a JSON object"),
        ("{not json", "is not readable JSON"),
    ],
)
def test_a_config_file_that_cannot_configure_the_command_is_named(
    tmp_path, content, message
) -> None:
    path = tmp_path / "run.json"
    path.write_text(content)
    with pytest.raises(SpruceError, match=message):
        read_config(path, "prune")


def test_bad_config_files_are_one_line_and_exit_2(tmp_path, capsys) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"data": {"train": "t.tsv"}, "prune": {"target_sparsty": 0.9}}')
    assert main(["prune", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown prune setting 'target_sparsty'" in error
    assert "did you mean 'target_sparsity'" in error
    path.write_text('{"prune": {"target_sparsity": 1.5}}')
    assert main(["prune", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--target-sparsity must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["prune", "--out", str(tmp_path / "o")]) == 2
    assert "--train is required" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_image_task_report_reruns_its_adapt_run_bit_for_bit(tmp_path) -> None:
    from golden import make_inputs

    make_inputs(tmp_path)
    images, first, second = tmp_path / "images", tmp_path / "first", tmp_path / "second"
    argv = [
        "adapt", "--train", str(images / "train.npz"), "--test", str(images / "test.npz"),
        "--criterion", "weight", "--target-sparsity", "0.3", "--prune-rounds", "1",
        "--max-steps", "1", "--batch-size", "8", "--no-latency", "--no-onnx", "--threads",
        "1", "--quiet", "--out", str(first),
    ]  # fmt: skip
    assert main(argv) == 0
    rerun = ["adapt", "--config", str(first / "report.json"), "--out", str(second)]
    assert main([*rerun, "--threads", "1", "--quiet"]) == 0
    expected = _without_paths(digest(first, tmp_path), first)
    assert _without_paths(digest(second, tmp_path), second) == expected
    report = json.loads((second / "report.json").read_text())
    assert report["command"] == "adapt" and report["cnn_config"]["model"] == "efficientnet-lite0"
