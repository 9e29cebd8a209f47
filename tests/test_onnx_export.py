"""ONNX export of compacted models: runs in onnxruntime and matches PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from spruce.compact import check_onnx, compact_model, export_onnx
from spruce.masks import UnitMasks

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

FAMILIES = ("bert", "roberta", "distilbert")
TEXTS = [
    "good",
    "the film was awful and the plot was very dull",
    "this is a lovely story with superb music, fine actors and not a boring scene at all",
]


def pruned_model(directory: Path) -> torch.nn.Module:
    """A 3-layer classifier pruned with every unit type, including whole removed blocks."""
    config = AutoConfig.from_pretrained(directory, num_labels=2)
    config.num_hidden_layers = 3
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    head = torch.rand(3, 4) * (torch.rand(3, 4) > 0.3)
    head[0] = 0.0
    neuron = torch.rand(3, 64) * (torch.rand(3, 64) > 0.4)
    neuron[2] = 0.0
    hidden = torch.rand(32) * (torch.rand(32) > 0.25)
    masks = UnitMasks(
        head=head,
        mha_layer=torch.tensor([1.0, 0.0, 0.8]),
        ffn_neuron=neuron,
        ffn_layer=torch.tensor([0.5, 1.0, 0.0]),
        hidden=hidden,
    )
    return compact_model(model.eval(), masks)


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_matches_pytorch(tiny_models: dict, family: str, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    model = pruned_model(tiny_models[family])
    path = export_onnx(model, tokenizer, tmp_path / "onnx" / "model.onnx")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    onnx.checker.check_model(str(path))

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    uses_types = family == "bert"
    assert names == ["input_ids", "attention_mask", *(["token_type_ids"] if uses_types else [])]
    assert [item.name for item in session.get_outputs()] == ["logits"]

    # Batch sizes 1 and 3 and sequence lengths other than the traced example's.
    for texts in (TEXTS[:1], TEXTS[1:2], TEXTS, [TEXTS[2]] * 3, [*TEXTS[:2], "bad"]):
        assert check_onnx(path, model, tokenizer, texts) <= 1e-4


def test_export_replaces_an_existing_file(tiny_models: dict, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["distilbert"])
    target = tmp_path / "model.onnx"
    target.write_text("stale")
    model = pruned_model(tiny_models["distilbert"])
    model.train()
    export_onnx(model, tokenizer, target)
    assert model.training, "export restores the training flag"
    assert check_onnx(target, model, tokenizer, TEXTS) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_check_truncates_texts_longer_than_the_position_table(tiny_models, family, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    model = pruned_model(tiny_models[family])
    path = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    long_text = " ".join(["good movie"] * 200)  # far past the tiny models' 64 positions
    assert check_onnx(path, model, tokenizer, [long_text, "bad"]) <= 1e-4
    assert check_onnx(path, model, tokenizer, [long_text], max_length=16) <= 1e-4
