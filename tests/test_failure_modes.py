"""Failure modes during a run that docs/reliability.md lists: a diverging loss, Ctrl-C while
the output is written, and non-finite metrics in report.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spruce.cli.main import main
from spruce.data import TaskDataConfig, load_task
from spruce.errors import SpruceError
from spruce.models import load_classifier
from spruce.pipelines import finetune as finetune_pipeline
from spruce.pipelines.common import build_loaders
from spruce.report import write_report
from spruce.train import TrainConfig, Trainer, classification_loss
from spruce.train.checkpoint import Checkpointer
from tiny_models import write_sentiment_files


def test_diverging_loss_is_a_user_error(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    files = write_sentiment_files(tmp_path / "data", n_train=16)
    task = load_task(TaskDataConfig(train=str(files["train"])))
    model, tokenizer, _ = load_classifier(str(tiny_models["bert"]), task.label_names)
    config = TrainConfig(max_steps=3, batch_size=8)
    loaders = build_loaders(task, tokenizer, config, max_length=16)

    def diverging(model, batch):
        loss, stats = classification_loss(model, batch)
        return loss * torch.tensor(float("inf")), stats

    trainer = Trainer(model, loaders["train"], config, loss_fn=diverging, progress=False)
    with pytest.raises(SpruceError, match="training loss became inf at step 1") as caught:
        trainer.fit()
    assert "lower --learning-rate" in caught.value.one_line()


def test_diverging_loss_keeps_the_last_good_checkpoint(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    files = write_sentiment_files(tmp_path / "data", n_train=32)
    task = load_task(TaskDataConfig(train=str(files["train"])))
    model, tokenizer, _ = load_classifier(str(tiny_models["bert"]), task.label_names)
    config = TrainConfig(max_steps=8, batch_size=4)
    loaders = build_loaders(task, tokenizer, config, max_length=16)
    steps = {"n": 0}

    def diverging_at_step_6(model, batch):
        steps["n"] += 1
        loss, stats = classification_loss(model, batch)
        return (loss * float("nan") if steps["n"] == 6 else loss), stats

    directory = tmp_path / "run.checkpoint"
    checkpoint = Checkpointer(directory, "x", 2).phase("p")
    trainer = Trainer(
        model, loaders["train"], config, loss_fn=diverging_at_step_6, progress=False,
        checkpoint=checkpoint,
    )  # fmt: skip
    with pytest.raises(SpruceError, match="became nan at step 6") as caught:
        trainer.fit()
    assert str(directory) in caught.value.one_line()
    saved = Checkpointer(directory, "x", 2).phase("p").load()
    assert saved is not None and not saved["finished"]
    assert saved["step"] == 4  # the last save before the divergence
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_ctrl_c_while_writing_keeps_the_previous_output(
    capsys: pytest.CaptureFixture[str],
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = write_sentiment_files(tmp_path / "data", n_train=8)
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("previous")

    def interrupted(report: dict, path: Path) -> None:
        path.write_text("{")
        raise KeyboardInterrupt

    real_write_report = finetune_pipeline.write_report
    monkeypatch.setattr(finetune_pipeline, "write_report", interrupted)
    args = ["finetune", "--model", tiny_models["bert"], "--train", files["train"], "--out", out]
    argv = [str(a) for a in args] + ["--overwrite", "--quiet", "--max-steps", "1"]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 130
    # Training had finished: its checkpoint stays, so --resume only writes the output.
    assert err == (
        "spruce: interrupted; nothing was written to --out; rerun the same command with "
        f"--resume to continue from the checkpoint in {out}.checkpoint\n"
    )
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert (out / "report.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run", "run.checkpoint"]
    monkeypatch.setattr(finetune_pipeline, "write_report", real_write_report)
    assert main([*argv, "--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_non_finite_metrics_are_written_as_null(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_report({"metrics": {"accuracy": float("nan"), "loss": [1.0, float("inf")]}}, path)
    assert json.loads(path.read_text()) == {"metrics": {"accuracy": None, "loss": [1.0, None]}}
