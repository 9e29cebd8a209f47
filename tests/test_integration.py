"""The real MiniLM on small slices of real data (a few minutes in all)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import shared_data
from spruce.cli.main import main
from spruce.data.spam_assassin import JSONL_NAME, default_cache_dir
from spruce.models import encoder_shape, load_classifier, resolve_model_source

pytestmark = pytest.mark.integration

MINILM_PARAMS_WITH_BINARY_HEAD = 22_713_986


def test_default_model_is_the_embedded_minilm_with_its_pretrained_weights():
    model, tokenizer, _source = load_classifier(None, ["neg", "pos"])
    shape = encoder_shape(model.config)
    assert (shape.num_layers, shape.hidden_size, shape.heads[0], shape.ffn[0]) == (6, 384, 12, 1536)
    assert sum(p.numel() for p in model.parameters()) == MINILM_PARAMS_WITH_BINARY_HEAD
    with safe_open(f"{resolve_model_source(None)}/model.safetensors", "pt") as weights:
        expected = weights.get_tensor("encoder.layer.3.attention.self.query.weight")
    loaded = model.bert.encoder.layer[3].attention.self.query.weight
    assert torch.equal(loaded, expected)
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_sst2_slice_learns_sentiment(tmp_path):
    train = shared_data("sst2", "train.tsv")
    out = tmp_path / "sst2"
    argv = [
        "finetune", "--train", str(train), "--validation", str(train.parent / "validation.tsv"),
        "--test", str(train.parent / "test.tsv"), "--max-train-samples", "400",
        "--max-eval-samples", "200", "--max-test-samples", "300", "--epochs", "3",
        "--learning-rate", "2e-4", "--seed", "0", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sst2"
    assert report["train_examples"] == 400
    assert report["unlabelled_examples"] == 60614 - 400
    assert report["params"]["total"] == MINILM_PARAMS_WITH_BINARY_HEAD
    # A random head scores ~0.5; 400 examples of real fine-tuning reach well above 0.7.
    assert report["metrics"]["accuracy"] > 0.7, report["history"]["evaluations"]


def test_rte_sentence_pairs_run_end_to_end(tmp_path):
    train = shared_data("rte", "train.tsv")
    out = tmp_path / "rte"
    argv = [
        "finetune", "--train", str(train), "--validation", str(train.parent / "validation.tsv"),
        "--max-train-samples", "128", "--max-eval-samples", "64", "--max-steps", "8",
        "--metric", "mcc", "--seed", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["text_columns"] == ["sentence1", "sentence2"]
    assert report["metric"] == "mcc" and report["metrics_split"] == "validation"
    assert report["steps"] == 8
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["spruce_task"]["text_columns"] == ["sentence1", "sentence2"]


def test_demo_runs_end_to_end_on_the_spam_assassin_corpus(tmp_path, capsys):
    if not (default_cache_dir() / JSONL_NAME).exists():
        pytest.skip("demo corpus not prepared: run scripts/setup.sh (spruce data spam-assassin)")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--labelled", "64", "--max-steps", "6", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "hard-ham acc" in printed and "dense MiniLM-L6" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled"] == 64
    assert len(summary["rows"]) == 3  # dense, pruned by the plain and the default recipe
    default = json.loads((out / "default" / "report.json").read_text())
    assert default["recipe"]["name"] == "distill" and default["recipe"]["teacher"] == "given"
    transfer = default["transfer"]
    assert transfer["coupling"] == "joint" and transfer["aux"][0]["kind"] == "distill"
    unlabelled = default["recipe"]["unlabelled"]["from_train"]
    assert unlabelled > 3000  # the unlabelled rest of the pool
    # of which it reads the longest rows, as many as its few steps read once
    assert transfer["select"] == "longest"
    assert 0 < transfer["tasks"][0]["examples"] < unlabelled
    plain = json.loads((out / "plain" / "report.json").read_text())
    assert plain["recipe"]["name"] == "plain" and plain["transfer"]["coupling"] == "none"
    assert summary["splits"]["test_hard_ham"] > 100
    train_texts = {json.loads(x)["text"] for x in (out / "data" / "train.jsonl").open()}
    test_texts = {json.loads(x)["text"] for x in (out / "data" / "test.jsonl").open()}
    assert not train_texts & test_texts


def test_prune_minilm_on_an_sst2_slice_lands_on_target_and_exports(tmp_path):
    train = shared_data("sst2", "train.tsv")
    out = tmp_path / "pruned"
    argv = [
        "prune", "--train", str(train), "--validation", str(train.parent / "validation.tsv"),
        "--test", str(train.parent / "test.tsv"), "--max-train-samples", "200",
        "--max-eval-samples", "100", "--max-test-samples", "100", "--max-length", "64",
        "--target-sparsity", "0.8", "--prune-max-steps", "12", "--final-max-steps", "6",
        "--max-steps", "6", "--latency-repeats", "1", "--seed", "0", "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    # The default recipe: its own teacher (6 steps here), distilled on the unlabelled rest.
    assert report["recipe"]["teacher"] == "fine-tuned" and report["phases"]["teacher"]
    assert report["recipe"]["unlabelled"]["from_train"] > 60000
    assert abs(report["sparsity"]["encoder"] - 0.8) <= 0.01
    trajectory = report["phases"]["prune_trajectory"]
    assert trajectory["sparsity"][-1] == pytest.approx(0.8, abs=1e-3)
    assert (out / "prune_phase.png").exists()
    assert report["params"]["dense_total"] == MINILM_PARAMS_WITH_BINARY_HEAD
    assert report["params"]["total"] < report["params"]["dense_total"]
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    assert report["latency_ms"]["seq_len"] == 128
    assert report["bytes_on_disk"]["pruned"] < report["bytes_on_disk"]["dense"]
    assert (out / "structure.png").exists() and (out / "model.onnx").exists()
