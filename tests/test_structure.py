"""Structure descriptions resolve the right modules for every supported family."""

from __future__ import annotations

import pytest
from transformers import GPT2Config

from spruce.errors import SpruceError
from spruce.models import describe, encoder_parameters, encoder_shape, layer_modules
from spruce.models.loading import load_classifier
from tiny_models import SIZES


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_layer_modules_have_the_described_shapes(tiny_models, family):
    model, _, _ = load_classifier(str(tiny_models[family]), ["a", "b", "c"])
    shape = encoder_shape(model.config)
    hidden, ffn = SIZES["hidden"], SIZES["ffn"]
    assert shape.heads == (SIZES["heads"],) * SIZES["layers"]
    assert shape.head_size * shape.heads[0] == hidden
    layers = layer_modules(model)
    assert len(layers) == SIZES["layers"]
    for layer in layers:
        for projection in (layer.query, layer.key, layer.value):
            assert tuple(projection.weight.shape) == (hidden, hidden)
        assert tuple(layer.attention_output.weight.shape) == (hidden, hidden)
        assert tuple(layer.ffn_input.weight.shape) == (ffn, hidden)
        assert tuple(layer.ffn_output.weight.shape) == (hidden, ffn)
        assert tuple(layer.attention_norm.weight.shape) == (hidden,)
        assert tuple(layer.ffn_norm.weight.shape) == (hidden,)
    assert model.config.num_labels == 3


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_encoder_parameters_are_exactly_the_layer_modules(tiny_models, family):
    model, _, _ = load_classifier(str(tiny_models[family]), ["a", "b"])
    per_layer = sum(
        p.numel()
        for layer in layer_modules(model)
        for module in (layer.query, layer.key, layer.value, layer.attention_output,
                       layer.attention_norm, layer.ffn_input, layer.ffn_output, layer.ffn_norm)
        for p in module.parameters()
    )  # fmt: skip
    assert sum(p.numel() for p in encoder_parameters(model)) == per_layer


def test_pruned_configs_with_per_layer_sizes_are_read(tiny_models):
    model, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    model.config.layer_heads = [3, 0]
    model.config.layer_ffn = [10, 64]
    shape = encoder_shape(model.config)
    assert shape.heads == (3, 0) and shape.ffn == (10, 64)
    assert shape.to_dict()["layers"][1] == {"heads": 0, "ffn": 64}


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(SpruceError, match=r"model type .gpt2.*bert.*roberta"):
        describe(GPT2Config())
