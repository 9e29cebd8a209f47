"""`spruce adapt` and the transformer wiring of Structured Pruning Adapters, on tiny encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import spruce
from spruce.adapters import AdapterConfig, find_adapters
from spruce.cli.main import main
from spruce.compact import apply_masks, compact_model
from spruce.criteria import accumulate_gradients
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models import load_classifier
from spruce.spa import (
    AdaptConfig,
    head_parameters,
    inject_transformer_adapters,
    merged_plain_copy,
    scoring_view,
    set_unit_masks,
)
from spruce.spa.config import criterion_names
from tiny_models import SIZES, write_sentiment_files

ADAPT_KEYS = {
    "sparsity", "params", "flops", "latency_ms", "structure", "metrics", "task", "mode",
    "adapter", "criterion", "learned_params", "task_file_bytes", "base_model_bytes",
    "mask_bits", "fused_max_abs_diff",
}  # fmt: skip
TEXTS = ["good movie", "the plot was dull and boring", "a very lovely film", "awful"]
RANK = 3  # not 2: a (2, 32) factor would share the token-type table's shape


def adapt(model: Path, data: dict[str, Path], out: Path, *extra: str) -> dict:
    argv = [
        "adapt", "--model", str(model), "--train", str(data["train"]),
        "--validation", str(data["validation"]), "--test", str(data["test"]),
        "--learning-rate", "1e-2", "--batch-size", "16", "--rank", str(RANK),
        "--target-sparsity", "0.5", "--prune-rounds", "2", "--epochs-per-round", "1",
        "--final-epochs", "2", "--latency-repeats", "1", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_sentiment_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def taylor_run(tiny_models, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "taylor"
    return out, adapt(tiny_models["bert"], data, out)


def base_weight_shapes(model_dir: Path) -> set[tuple[int, ...]]:
    """Shapes of the dense base's weight matrices (embeddings and the six per layer)."""
    model, _, _ = load_classifier(str(model_dir), ["a", "b"])
    heads = set(head_parameters(model))
    return {tuple(p.shape) for n, p in model.named_parameters() if p.dim() == 2 and n not in heads}


def expected_learned_params(structure: dict, labels: int) -> int:
    """SPLoRA per wrapper r * (kept_in + kept_out) + kept_out, plus the head (pooler and
    classifier). A layer without heads (FFN units) reads nothing in Q/K/V (FFN input)."""
    r, hidden, d = RANK, SIZES["hidden"], SIZES["hidden"] // SIZES["heads"]

    def wrapper(kept_in: int, kept_out: int) -> int:
        return r * (kept_in + kept_out) + kept_out

    total = 0
    for layer in structure["layers"]:
        inner, ffn = layer["heads"] * d, layer["ffn"]
        reads = hidden if inner else 0
        total += 3 * wrapper(reads, inner) + wrapper(inner, hidden)
        total += wrapper(hidden if ffn else 0, ffn) + wrapper(ffn, hidden)
    return total + (hidden * hidden + hidden) + (hidden * labels + labels)


def test_adapt_taylor_end_to_end(tiny_models, data, taylor_run, capsys):
    out, report = taylor_run
    files = ("model/config.json", "model/model.safetensors", "model.onnx", "report.json",
             "structure.png", "learning_curve.png", "task.safetensors", "task.json")  # fmt: skip
    for name in files:
        assert (out / name).exists(), name
    assert set(report) >= ADAPT_KEYS
    assert report["mode"] == "adapt" and report["criterion"] == "taylor"
    assert report["adapter"]["kind"] == "splora" and report["adapter"]["rank"] == RANK
    # One head is 1,024 of the tiny encoder's 16,384 weights: land within half of it.
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 512 / 16384
    assert report["fused_max_abs_diff"] <= 1e-4
    assert report["onnx"]["max_abs_diff"] <= 1e-4
    assert report["learned_params"] == expected_learned_params(report["structure"], 2)
    # The file holds exactly the learned numbers (float tensors) besides the bit masks.
    tensors = load_file(str(out / "task.safetensors"))
    floats = sum(t.numel() for k, t in tensors.items() if t.is_floating_point())
    assert floats == report["learned_params"]
    assert all(t.dtype == torch.uint8 for t in tensors.values() if not t.is_floating_point())
    assert report["task_file_bytes"] == (out / "task.safetensors").stat().st_size
    assert report["task_file_bytes"] < report["base_model_bytes"] / 3
    shapes = base_weight_shapes(tiny_models["bert"])
    for key, tensor in tensors.items():
        if not key.startswith("head."):
            assert tuple(tensor.shape) not in shapes, key
    assert {k[5:] for k in tensors if k.startswith("head.")} == {
        "classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    }  # fmt: skip
    meta = json.loads((out / "task.json").read_text())
    assert meta["base"]["path"] == str(tiny_models["bert"].resolve())
    assert meta["label_names"] == ["0", "1"] and meta["structure"] == report["structure"]
    model, _ = spruce.load_pruned(out)
    assert model.config.layer_heads == [layer["heads"] for layer in report["structure"]["layers"]]
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(data["test"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == report["test_metrics"]


@pytest.mark.parametrize("criterion", ["weight", "l0", "lrp"])
def test_adapt_other_criteria(tiny_models, data, tmp_path, criterion):
    if criterion not in criterion_names():
        pytest.skip(f"criterion {criterion} is not registered in this build")
    report = adapt(tiny_models["bert"], data, tmp_path / "out", "--criterion", criterion,
                   "--no-onnx", "--no-latency", "--max-steps", "3")  # fmt: skip
    assert report["criterion"] == criterion
    phases = [*report["phases"]["prune"], report["phases"]["final"]]
    assert [phase["steps"] for phase in phases] == [3] * len(phases)  # --max-steps caps each
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 512 / 16384
    assert report["fused_max_abs_diff"] <= 1e-4
    assert report["structure"]["hidden"] == SIZES["hidden"]  # the shared base keeps it
    assert "latency_ms" not in report and not (tmp_path / "out" / "model.onnx").exists()
    tensors = load_file(str(tmp_path / "out" / "task.safetensors"))
    units = {k.split(".")[1] for k in tensors if k.startswith("units.")}
    assert units == ({"head", "mha_layer", "ffn_neuron", "ffn_layer"} if criterion == "l0"
                     else {"head", "ffn_neuron"})  # fmt: skip


def test_fine_prune_learns_far_more_than_adapters(tiny_models, data, taylor_run, tmp_path):
    _, adapted = taylor_run
    report = adapt(tiny_models["bert"], data, tmp_path / "out", "--fine-prune", "--no-onnx",
                   "--no-latency")  # fmt: skip
    assert report["mode"] == "fine-prune" and report["adapter"] is None
    assert not (tmp_path / "out" / "task.safetensors").exists()
    assert report["learned_params"] == report["params"]["total"]
    assert adapted["learned_params"] < report["learned_params"] / 2
    assert abs(report["sparsity"]["encoder"] - 0.5) <= 512 / 16384
    assert report["fused_max_abs_diff"] <= 1e-4


def adapted(model_dir: Path, config: AdapterConfig, seed: int = 0):
    """A tiny classifier with adapters whose factors and biases are made non-trivial."""
    torch.manual_seed(seed)
    model, tokenizer, _ = load_classifier(str(model_dir), ["a", "b", "c"])
    inject_transformer_adapters(model, config)
    with torch.no_grad():
        for layer in find_adapters(model).values():
            for parameter in layer.parameters(recurse=False):
                parameter.add_(0.1 * torch.randn_like(parameter))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return model.eval(), batch


def gate_like_masks(seed: int = 0) -> UnitMasks:
    """Values in (0, 1] for kept units, whole blocks and whole layers removed."""
    g = torch.Generator().manual_seed(seed)
    layers, heads, ffn = SIZES["layers"], SIZES["heads"], SIZES["ffn"]
    head = torch.rand(layers, heads, generator=g) * (torch.rand(layers, heads, generator=g) > 0.4)
    head[1] = 0  # layer 1 keeps no head; its attention bias still reaches the residual
    neuron = torch.rand(layers, ffn, generator=g) * (torch.rand(layers, ffn, generator=g) > 0.5)
    return UnitMasks(
        head=head,
        mha_layer=torch.tensor([0.9, 0.6]),
        ffn_neuron=neuron,
        ffn_layer=torch.tensor([0.0, 0.7]),  # layer 0's FFN block is removed
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_adapters_at_initialization_leave_the_base_unchanged(tiny_models, family):
    torch.manual_seed(0)
    model, tokenizer, _ = load_classifier(str(tiny_models[family]), ["a", "b"])
    model.eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
        layers = inject_transformer_adapters(model, AdapterConfig(rank=4))
        after = model(**batch).logits
    assert len(layers) == 6 * SIZES["layers"]
    assert torch.equal(before, after)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(head_parameters(model)) <= trainable
    assert not any("LayerNorm" in n or "layer_norm" in n or "embeddings" in n for n in trainable)


@pytest.mark.parametrize("kind", ["splora", "splopa"])
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_masked_adapted_model_equals_its_fused_compact_model(tiny_models, family, kind):
    config = AdapterConfig(kind=kind, rank=3, block_size=8, num_prototypes=2)
    model, batch = adapted(tiny_models[family], config)
    masks = gate_like_masks()
    set_unit_masks(model, masks)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad(), apply_masks(model, masks):
        masked = model(**batch).logits
    with torch.no_grad(), scoring_view(model), apply_masks(model, masks):
        viewed = model(**batch).logits
    compact = compact_model(merged_plain_copy(model), masks)
    with torch.no_grad():
        fused = compact(**batch).logits
    assert (masked - fused).abs().max() <= 1e-4
    assert (masked - viewed).abs().max() <= 1e-5
    assert compact.config.layer_heads[1] == 0 and compact.config.layer_ffn[0] == 0
    # The view and the copy leave the wrappers and the shared base exactly as they were.
    assert len(find_adapters(model)) == 6 * SIZES["layers"]
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, base[name]), name


def test_gradient_criteria_see_the_adapted_weight(tiny_models):
    """dL/d(W + BA) read in the scoring view, chained through A, is dL/dB of the adapter."""
    model, batch = adapted(tiny_models["bert"], AdapterConfig(rank=3, scaling=0.5))
    batch = {**batch, "labels": torch.tensor([0, 1, 2, 0])}
    accumulate_gradients(model, [batch])
    wrappers = find_adapters(model)
    expected = {name: layer.lora_B.grad[0].clone() for name, layer in wrappers.items()}
    model.zero_grad(set_to_none=True)
    with scoring_view(model):
        accumulate_gradients(model, [batch])
        plain = {name: model.get_submodule(name) for name in wrappers}
        for name, layer in plain.items():
            assert layer.weight.requires_grad and layer.weight.grad is not None
            chained = 0.5 * layer.weight.grad @ wrappers[name].lora_A[0].T
            torch.testing.assert_close(chained, expected[name], atol=1e-6, rtol=1e-4)
        model.zero_grad(set_to_none=True)
    assert all(model.get_submodule(name) is layer for name, layer in wrappers.items())
    assert not any(layer.base_layer.weight.requires_grad for layer in wrappers.values())


def test_sppara_and_hidden_pruning_are_refused(tiny_models):
    model, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    with pytest.raises(SpruceError, match="splora"):
        inject_transformer_adapters(model, AdapterConfig(kind="sppara"))
    inject_transformer_adapters(model, AdapterConfig(rank=2))
    with pytest.raises(SpruceError, match="hidden"):
        set_unit_masks(model, UnitMasks(hidden=torch.tensor([0.0] + [1.0] * 31)))


def test_adapt_config_round_trips_and_checks_values():
    config = AdaptConfig(adapter="splopa", rank=0.25, criterion="l0", block_size=16).validate()
    assert AdaptConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ({"rank": 1.5}, {"criterion": "random"}, {"prune_rounds": 0},
                {"target_sparsity": 1.0}, {"adapter": "sppara"}):  # fmt: skip
        with pytest.raises(SpruceError):
            AdaptConfig(**bad).validate()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--adapter", "sppara"), "splora"),
        (("--rank", "0"), "--rank"),
        (("--rank", "1.5"), "--rank"),
        (("--rank", "abc"), "--rank"),
        (("--criterion", "random"), "--criterion"),
    ],
)
def test_bad_adapt_options_are_rejected(tiny_models, data, tmp_path, capsys, extra, needle):
    argv = ["adapt", "--model", str(tiny_models["bert"]), "--train", str(data["train"]),
            "--out", str(tmp_path / "out"), "--quiet", *extra]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own checks
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
