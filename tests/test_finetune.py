"""Dense fine-tuning end to end on tiny random encoders (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from spruce.cli.main import main
from spruce.models import load_saved_classifier
from tiny_models import write_jsonl, write_sentiment_files

REPORT_KEYS = {"task", "metrics", "params", "train_examples", "seed", "wall_time_s"}


def finetune(model: Path, data: dict[str, Path], out: Path, *extra: str) -> dict:
    argv = [
        "finetune", "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--test", str(data["test"]),
        "--learning-rate", "5e-3", "--batch-size", "16", "--epochs", "8", "--patience", "8",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_tiny_model_learns_toy_task_and_writes_outputs(tiny_models, tmp_path, family):
    data = write_sentiment_files(tmp_path / "data")
    report = finetune(tiny_models[family], data, tmp_path / "out")
    assert set(report) >= REPORT_KEYS
    assert report["metrics"]["accuracy"] >= 0.9, report["history"]["evaluations"]
    assert set(report["metrics"]) == {"accuracy", "macro_f1", "mcc"}
    assert report["metrics_split"] == "test"
    assert report["train_examples"] == 96
    assert 0 < report["params"]["encoder"] < report["params"]["total"]
    model_dir = tmp_path / "out" / "model"
    assert (model_dir / "model.safetensors").exists()
    assert not list(model_dir.glob("*.bin"))
    assert (tmp_path / "out" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_saved_model_reloads_and_eval_reproduces_test_metrics(tiny_models, tmp_path, capsys):
    data = write_sentiment_files(tmp_path / "data")
    report = finetune(tiny_models["bert"], data, tmp_path / "out")
    capsys.readouterr()
    code = main(["eval", "--model", str(tmp_path / "out"), "--data", str(data["test"]), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"] == report["test_metrics"]
    model, _ = load_saved_classifier(tmp_path / "out")
    assert model.config.spruce_task["text_columns"] == ["sentence"]


def test_same_seed_gives_identical_weights_and_other_seed_differs(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    args = ("--max-train-samples", "64", "--epochs", "2")
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        report = finetune(tiny_models["bert"], data, tmp_path / name, *args, "--seed", seed)
        runs[name] = (report, load_file(tmp_path / name / "model" / "model.safetensors"))
    (ra, wa), (rb, wb), (rc, _wc) = runs["a"], runs["b"], runs["c"]
    assert ra["history"]["loss"] == rb["history"]["loss"]
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert ra["history"]["loss"] != rc["history"]["loss"]


def test_string_labels_and_label_names_are_saved(tiny_models, tmp_path):
    rows = [{"text": f"{w} movie", "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(["good", "bad"] * 20)]  # fmt: skip
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_models["bert"]), "--train", str(train),
            "--epochs", "1", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == {} and report["metrics_split"] is None


def test_sentence_pairs_use_both_columns(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data", pair=True)
    report = finetune(tiny_models["bert"], data, tmp_path / "out", "--epochs", "1")
    assert report["text_columns"] == ["sentence1", "sentence2"]


def test_early_stopping_and_max_steps(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    stopped = finetune(tiny_models["bert"], data, tmp_path / "a", "--learning-rate", "1e-9",
                       "--eval-steps", "1", "--patience", "2")  # fmt: skip
    assert stopped["stopped_early"] and stopped["steps"] == 3
    capped = finetune(tiny_models["bert"], data, tmp_path / "b", "--max-steps", "4")
    assert capped["steps"] == 4 and not capped["stopped_early"]


def test_limited_data_counts(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    report = finetune(tiny_models["bert"], data, tmp_path / "out", "--shots-per-class", "8",
                      "--epochs", "1")  # fmt: skip
    assert report["train_examples"] == 16
    assert report["unlabelled_examples"] == 96 - 16
