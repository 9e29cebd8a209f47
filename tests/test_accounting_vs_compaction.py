"""The sparsity the report claims is the sparsity the compact model has: the accounting
from masks equals a brute-force count of the compact model's attention and FFN weights."""

from __future__ import annotations

import pytest
import torch

from spruce.compact import compact_model
from spruce.masks import UnitMasks
from spruce.masks.accounting import encoder_params_from_masks, structure_from_masks
from spruce.models import encoder_shape, layer_modules, load_classifier


def brute_force_encoder_weights(model) -> int:
    return sum(
        module.weight.numel()
        for layer in layer_modules(model)
        for module in (
            layer.query,
            layer.key,
            layer.value,
            layer.attention_output,
            layer.ffn_input,
            layer.ffn_output,
        )
    )


@pytest.mark.parametrize("seed", range(4))
def test_accounting_matches_the_compact_model(tiny_models, seed):
    torch.manual_seed(seed)
    model, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    shape = encoder_shape(model.config)
    L, H, F, D = shape.num_layers, shape.heads[0], shape.ffn[0], shape.hidden_size
    masks = UnitMasks(
        head=(torch.rand(L, H) > 0.4).float(),
        mha_layer=torch.tensor([1.0, float(seed % 2)]),
        ffn_neuron=(torch.rand(L, F) > 0.5).float() * torch.rand(L, F),
        ffn_layer=torch.tensor([float(seed != 2), 1.0]),
        hidden=(torch.rand(D) > 0.3).float(),
    )
    compact = compact_model(model, masks)
    assert brute_force_encoder_weights(compact) == encoder_params_from_masks(masks, shape)
    structure = structure_from_masks(masks, shape)
    assert structure["layers"] == [
        {"heads": h, "ffn": f}
        for h, f in zip(compact.config.layer_heads, compact.config.layer_ffn, strict=True)
    ]
    assert structure["hidden"] == compact.config.hidden_size


def test_gates_never_give_a_model_that_ignores_its_input(tiny_models):
    """Why the head floor exists: with every head removed the [CLS] token reads no other
    token, so the classifier sees the same vector for every input."""
    from spruce.masks import EncoderGates

    torch.manual_seed(0)
    model, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    shape = encoder_shape(model.config)
    gates = EncoderGates(shape)
    with torch.no_grad():
        gates.gates["head"].log_alpha.fill_(-9.0)
    masks = gates.deterministic_masks(0.5)
    headless = UnitMasks(**{**dict(masks.items()), "head": torch.zeros_like(masks.head)})
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    ids[:, 0] = 2  # the same first token in both rows
    attention = torch.ones_like(ids)
    with torch.no_grad():
        blind = compact_model(model, headless).compact(ids, attention).last_hidden_state[:, 0]
        kept = compact_model(model, masks).compact(ids, attention).last_hidden_state[:, 0]
    assert torch.equal(blind[0], blind[1])  # what the classifier reads: the same for both
    assert (kept[0] - kept[1]).abs().max() > 1e-5  # ~100x float32 noise at this scale
