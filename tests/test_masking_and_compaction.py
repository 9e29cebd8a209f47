"""Masked forward (hooks), physical compaction, and save/load of compact models.

The central check: for every family and every unit type, the compacted model computes the
same logits as the masked model (docs/pruning-semantics.md), with fewer parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from spruce.compact import (
    CompactModelForSequenceClassification,
    apply_masks,
    compact_model,
    load_pruned,
    save_pruned,
)
from spruce.errors import SpruceError
from spruce.masks import UnitMasks
from spruce.models import encoder_parameters, encoder_shape, layer_modules
from spruce.models.compact import register_auto_classes
from tiny_models import SIZES

FAMILIES = ("bert", "roberta", "distilbert")
UNITS = ("head", "mha_layer", "ffn_neuron", "ffn_layer", "hidden", "all")
LAYERS, HEADS, FFN, HIDDEN = 3, SIZES["heads"], SIZES["ffn"], SIZES["hidden"]
HEAD_SIZE = HIDDEN // HEADS
NUM_LABELS = 3
TEXTS = [
    "the movie was very good",
    "awful",
    "this film is not boring, the ending and the music are superb",
    "a dull plot",
]


def build_classifier(directory: Path, seed: int = 0) -> torch.nn.Module:
    """A 3-layer classifier with every weight (biases, LayerNorms included) randomised."""
    config = AutoConfig.from_pretrained(directory, num_labels=NUM_LABELS)
    config.num_hidden_layers = LAYERS  # maps to n_layers for DistilBERT
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model.eval()


def random_masks(unit: str, seed: int = 1) -> UnitMasks:
    """Fractional values with some zeros; fixed removals so every edge case is covered."""
    g = torch.Generator().manual_seed(seed)

    def values(*shape: int, keep: float = 0.6) -> torch.Tensor:
        kept = (torch.rand(shape, generator=g) < keep).float()
        return kept * (0.3 + 0.7 * torch.rand(shape, generator=g))

    head = values(LAYERS, HEADS)
    head[0] = 0.0  # every head of layer 0 removed
    head[1, 0] = 0.8  # layer 1 keeps heads so that mha_layer=0 is what removes them
    neuron = values(LAYERS, FFN)
    neuron[2] = 0.0  # FFN of layer 2 removed neuron by neuron
    hidden = values(HIDDEN, keep=0.75)
    hidden[:2] = torch.tensor([0.0, 0.9])
    all_units = {
        "head": head,
        "mha_layer": torch.tensor([0.9, 0.0, 0.6]),
        "ffn_neuron": neuron,
        "ffn_layer": torch.tensor([0.7, 0.0, 1.0]),
        "hidden": hidden,
    }
    return UnitMasks(**all_units) if unit == "all" else UnitMasks(**{unit: all_units[unit]})


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, tuple]:
    built = {}
    for family in FAMILIES:
        tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
        batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
        built[family] = (build_classifier(tiny_models[family]), tokenizer, batch)
    return built


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def all_ones() -> UnitMasks:
    return UnitMasks(
        head=torch.ones(LAYERS, HEADS),
        mha_layer=torch.ones(LAYERS),
        ffn_neuron=torch.ones(LAYERS, FFN),
        ffn_layer=torch.ones(LAYERS),
        hidden=torch.ones(HIDDEN),
    )


def expected_sizes(masks: UnitMasks) -> tuple[int, list[int], list[int]]:
    """Kept hidden size and per-layer head / neuron counts, straight from the mask values."""
    m = dict(all_ones().items()) | dict(masks.items())
    heads = ((m["head"] > 0) & (m["mha_layer"][:, None] > 0)).sum(1).tolist()
    ffn = ((m["ffn_neuron"] > 0) & (m["ffn_layer"][:, None] > 0)).sum(1).tolist()
    return int((m["hidden"] > 0).sum()), heads, ffn


def hand_count(model: torch.nn.Module, kept: int, heads: list[int], ffn: list[int]) -> int:
    """Parameters of the compact model, from its sizes alone."""
    config = model.config
    rows = config.vocab_size + config.max_position_embeddings + config.type_vocab_size
    total = rows * kept + 2 * kept  # embedding tables and their LayerNorm
    for h, f in zip(heads, ffn, strict=True):
        inner = h * HEAD_SIZE
        total += 3 * (kept * inner + inner) + inner * kept + kept  # Q, K, V, O
        total += kept * f + f + f * kept + kept  # FFN in and out
        total += 4 * kept  # two LayerNorms, always kept
    pooler = HIDDEN  # the head's dense layer keeps its output width
    return total + kept * pooler + pooler + pooler * NUM_LABELS + NUM_LABELS


@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_masks_leave_the_model_unchanged(models: dict, family: str) -> None:
    model, _, batch = models[family]
    reference = logits(model, batch)
    ones = all_ones()
    with apply_masks(model, ones):
        torch.testing.assert_close(logits(model, batch), reference, atol=1e-6, rtol=0)
    handle = apply_masks(model, lambda: ones)
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-6, rtol=0)
    handle.remove()
    with apply_masks(model, random_masks("all")):
        assert (logits(model, batch) - reference).abs().max() > 1e-3
        with pytest.raises(SpruceError, match="already applied"):
            apply_masks(model, ones)
    assert torch.equal(logits(model, batch), reference), "hooks must come off"


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("family", FAMILIES)
def test_compact_model_equals_masked_model(models: dict, family: str, unit: str) -> None:
    model, _, batch = models[family]
    masks = random_masks(unit)
    with apply_masks(model, masks):
        masked = logits(model, batch)
    compact = compact_model(model, masks)
    assert isinstance(compact, CompactModelForSequenceClassification)
    assert not compact.training
    assert (compact(**batch).logits - masked).abs().max().item() <= 1e-4

    kept, heads, ffn = expected_sizes(masks)
    assert (compact.config.hidden_size, compact.config.layer_heads) == (kept, heads)
    assert compact.config.layer_ffn == ffn
    for layer, h, f in zip(layer_modules(compact), heads, ffn, strict=True):
        assert layer.query.weight.shape == (h * HEAD_SIZE, kept)
        assert layer.attention_output.weight.shape == (kept, h * HEAD_SIZE)
        assert layer.ffn_input.weight.shape == (f, kept)
        assert layer.ffn_output.weight.shape == (kept, f)
        assert layer.attention_norm.weight.shape == layer.ffn_norm.weight.shape == (kept,)
    assert parameter_count(compact) == hand_count(compact, kept, heads, ffn)
    assert parameter_count(compact) < parameter_count(model)
    assert sum(p.numel() for p in encoder_parameters(compact)) < sum(
        p.numel() for p in encoder_parameters(model)
    )


def test_removed_blocks_leave_their_folded_bias(models: dict) -> None:
    model, _, _ = models["bert"]
    masks = random_masks("all")
    compact = compact_model(model, masks)
    layers, source = layer_modules(compact), layer_modules(model)
    hidden = masks.hidden
    kept = hidden > 0
    # Layer 0 lost all its heads: a constant b_O * mha_layer * hidden remains.
    expected = (source[0].attention_output.bias * masks.mha_layer[0] * hidden)[kept]
    torch.testing.assert_close(layers[0].attention_output.bias, expected)
    # mha_layer[1] == 0 and ffn_layer[1] == 0: the blocks add nothing, LayerNorms remain.
    assert torch.count_nonzero(layers[1].attention_output.bias) == 0
    assert torch.count_nonzero(layers[1].ffn_output.bias) == 0
    assert layers[1].attention_norm.weight.shape == (int(kept.sum()),)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_model_compacts_to_an_equal_model(models: dict, family: str) -> None:
    model, _, batch = models[family]
    compact = compact_model(model)
    assert parameter_count(compact) == parameter_count(model)
    assert compact.config.layer_heads == [HEADS] * LAYERS
    assert compact.config.layer_ffn == [FFN] * LAYERS
    torch.testing.assert_close(compact(**batch).logits, logits(model, batch), atol=1e-5, rtol=0)
    shape = encoder_shape(compact.config)
    assert shape.heads == (HEADS,) * LAYERS and shape.head_size == HEAD_SIZE


def test_callable_source_is_called_once_per_forward(models: dict) -> None:
    model, _, batch = models["roberta"]
    calls = []

    def sample() -> UnitMasks:
        calls.append(1)
        return random_masks("all", seed=len(calls))

    with apply_masks(model, sample) as handle:
        first = logits(model, batch)
        second = logits(model, batch)
        assert handle.current is not None
    assert len(calls) == 2
    assert not torch.allclose(first, second), "each forward uses freshly drawn masks"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_mask_tensor(models: dict, family: str) -> None:
    model, _, batch = models[family]
    masks = random_masks("all")
    tensors = {name: value.clone().requires_grad_(True) for name, value in masks.items()}
    with apply_masks(model, lambda: UnitMasks(**tensors)):
        loss = model(**batch, labels=torch.tensor([0, 1, 2, 1])).loss
        loss.backward()
    model.zero_grad()
    for name, tensor in tensors.items():
        assert tensor.grad is not None, name
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0, name


def test_wrong_mask_shapes_are_reported(models: dict) -> None:
    model, _, batch = models["bert"]
    with pytest.raises(SpruceError, match="head"):
        compact_model(model, UnitMasks(head=torch.ones(LAYERS, HEADS + 1)))
    with apply_masks(model, UnitMasks(hidden=torch.ones(HIDDEN + 1))), pytest.raises(SpruceError):
        logits(model, batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(models: dict, family: str, tmp_path: Path) -> None:
    model, tokenizer, batch = models[family]
    model.config.spruce_task = {"text_columns": ["sentence"], "max_length": 64}
    try:
        compact = compact_model(model, random_masks("all"))
    finally:
        del model.config.spruce_task
    compact.train()
    outputs = compact(**batch, labels=torch.tensor([0, 1, 2, 1]), output_hidden_states=True)
    assert outputs.loss is not None and torch.isfinite(outputs.loss)
    assert len(outputs.hidden_states) == LAYERS + 1
    assert outputs.hidden_states[-1].shape[-1] == compact.config.hidden_size
    compact.eval()

    save_pruned(compact, tokenizer, tmp_path / "run" / "model")
    files = {p.name for p in (tmp_path / "run" / "model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    loaded, loaded_tokenizer = load_pruned(tmp_path / "run")
    assert torch.equal(loaded(**batch).logits, compact(**batch).logits)
    assert loaded.config.layer_heads == compact.config.layer_heads
    assert loaded.config.layer_ffn == compact.config.layer_ffn
    assert loaded.config.hidden_size == compact.config.hidden_size
    assert loaded.config.spruce_task == {"text_columns": ["sentence"], "max_length": 64}
    assert loaded.config.id2label == compact.config.id2label
    assert loaded_tokenizer(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    shape = encoder_shape(loaded.config)
    assert list(shape.heads) == compact.config.layer_heads
    assert list(shape.ffn) == compact.config.layer_ffn
    # The Auto classes know the compact type once it is registered (load_pruned did, too).
    register_auto_classes()
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert torch.equal(auto(**batch).logits, compact(**batch).logits)


def test_load_pruned_explains_what_is_wrong(tiny_models: dict, tmp_path: Path) -> None:
    with pytest.raises(SpruceError, match="not a compacted"):
        load_pruned(tiny_models["bert"])
    with pytest.raises(SpruceError, match=r"config\.json missing"):
        load_pruned(tmp_path)


def test_compact_models_are_not_masked_again(models: dict) -> None:
    compact = compact_model(models["bert"][0])
    with pytest.raises(SpruceError, match="compacted"):
        apply_masks(compact, UnitMasks())
