"""`spruce prune` end to end on tiny random encoders: outputs, report keys, sparsity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spruce
from spruce.cli.main import main
from tiny_models import write_sentiment_files

PRUNE_KEYS = {"sparsity", "params", "flops", "latency_ms", "structure", "metrics", "task"}


def prune(model: Path, data: dict[str, Path], out: Path, *extra: str) -> dict:
    argv = [
        "prune", "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--test", str(data["test"]),
        "--learning-rate", "5e-3", "--batch-size", "16", "--prune-epochs", "4",
        "--final-epochs", "2", "--latency-repeats", "1", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_l0_pruning_writes_every_output_and_lands_on_the_target(tiny_models, tmp_path, capsys):
    data = write_sentiment_files(tmp_path / "data")
    out = tmp_path / "out"
    report = prune(tiny_models["bert"], data, out, "--target-sparsity", "0.5")
    for name in ("model/config.json", "model/model.safetensors", "model.onnx", "report.json",
                 "structure.png", "learning_curve.png"):  # fmt: skip
        assert (out / name).exists(), name
    assert set(report) >= PRUNE_KEYS
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 0.01
    assert set(report["params"]) >= {"total", "encoder", "dense_total", "dense_encoder"}
    assert report["params"]["total"] < report["params"]["dense_total"]
    assert report["flops"]["pruned"] < report["flops"]["dense"]
    assert set(report["latency_ms"]) >= {"batch_1", "batch_32", "seq_len"}
    assert set(report["latency_ms"]["batch_1"]) == {"dense", "pruned"}
    assert len(report["structure"]["layers"]) == 2
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    model, _ = spruce.load_pruned(out)
    assert model.config.layer_heads == [layer["heads"] for layer in report["structure"]["layers"]]
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(data["test"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == report["test_metrics"]


@pytest.mark.parametrize(("method", "rounds"), [("magnitude", "2"), ("taylor", "1")])
def test_score_based_baselines(tiny_models, tmp_path, method, rounds):
    data = write_sentiment_files(tmp_path / "data")
    report = prune(tiny_models["bert"], data, tmp_path / "out", "--method", method,
                   "--prune-rounds", rounds, "--target-sparsity", "0.5", "--no-onnx")  # fmt: skip
    # One head is 1,024 of the tiny encoder's 16,384 weights: land within half of it.
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 512 / 16384
    assert report["method"] == method
    assert report["structure"]["hidden"] == 32  # baselines prune heads and neurons only
    assert len(report["phases"]["prune"]) == int(rounds) - 1


def test_distillation_with_distilbert_and_vocabulary_trimming(tiny_models, tmp_path):
    data = write_sentiment_files(tmp_path / "data")
    report = prune(tiny_models["distilbert"], data, tmp_path / "out", "--distill", "--epochs",
                   "2", "--target-sparsity", "0.4", "--trim-vocab", "--no-latency")  # fmt: skip
    assert "teacher" in report["phases"] and report["dense_metrics"] is not None
    assert report["vocab"]["vocab_after"] < report["vocab"]["vocab_before"]
    model, tokenizer = spruce.load_pruned(tmp_path / "out")
    assert model.config.vocab_size == report["vocab"]["vocab_after"] == len(tokenizer)
    batch = tokenizer(["good movie", "the plot was dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


@pytest.mark.parametrize("value", ["-0.1", "1", "1.5", "abc"])
def test_bad_target_sparsity_is_rejected(tiny_models, tmp_path, capsys, value):
    data = write_sentiment_files(tmp_path / "data")
    argv = ["prune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            "--target-sparsity", value, "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "--target-sparsity" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--latency-runtime", "compiled", "--no-latency"], "contradict"),
        (["--latency-runtime", "compiled"], "C++ compiler"),
        (["--latency-runtime", "best"], "C++ compiler"),
    ],
)
def test_latency_runtime_is_checked_before_training(
    tiny_models, tmp_path, capsys, monkeypatch, extra, fragment
):
    monkeypatch.setattr("spruce.pruning.config.compiler_available", lambda: False)
    data = write_sentiment_files(tmp_path / "data")
    argv = ["prune", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            *extra, "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("runtime", ["compiled", "best"])
def test_latency_runtime_reaches_the_measurement(tiny_models, tmp_path, monkeypatch, runtime):
    monkeypatch.setattr("spruce.pruning.config.compiler_available", lambda: True)
    seen = {}

    def fake_table(models, **options):
        seen.update(options)
        row = {name: 1.0 for name in models}
        table = {"batch_1": row, "batch_32": row, "seq_len": 128, "runtime": options["runtime"]}
        chosen = {"batch_32": {"dense": "eager", "pruned": "compiled"}}
        return {**table, "chosen": chosen} if options["runtime"] == "best" else table

    # The timing itself is tested in test_flops_latency; here only that the choice arrives.
    monkeypatch.setattr("spruce.pipelines.prune.measure_latency_table", fake_table)
    data = write_sentiment_files(tmp_path / "data")
    report = prune(tiny_models["bert"], data, tmp_path / "out", "--target-sparsity", "0.5",
                   "--max-steps", "2", "--no-onnx", "--latency-runtime", runtime)  # fmt: skip
    assert seen["runtime"] == runtime and report["latency_ms"]["runtime"] == runtime
    assert report["config"]["prune"]["latency_runtime"] == runtime
