"""LRP importance of heads and FFN neurons on the tiny encoders (seconds)."""

from __future__ import annotations

import pytest
import torch

from spruce.criteria import CRITERIA, LRPImportance
from spruce.models import encoder_shape, layer_modules, load_classifier
from tiny_models import SIZES


def _model_and_batch(path):
    torch.manual_seed(0)
    model, tokenizer, _ = load_classifier(str(path), ["a", "b"])
    batch = dict(
        tokenizer(["good movie", "bad plot is dull", "the film"], padding=True, return_tensors="pt")
    )
    batch["labels"] = torch.tensor([1, 0, 1])
    return model, batch


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_lrp_scores_have_unit_shapes_and_are_non_negative(tiny_models, family):
    model, batch = _model_and_batch(tiny_models[family])
    criterion = CRITERIA["lrp"]()
    assert criterion.accumulate(model, [batch, batch]) == 2
    scores = criterion(model)
    assert scores["head"].shape == (SIZES["layers"], SIZES["heads"])
    assert scores["ffn_neuron"].shape == (SIZES["layers"], SIZES["ffn"])
    for value in scores.values():
        assert torch.isfinite(value).all() and (value >= 0).all() and value.sum() > 0
    assert all(p.grad is None for p in model.parameters())  # the pass leaves no gradients


def test_units_with_zeroed_output_projection_get_zero_relevance(tiny_models):
    model, batch = _model_and_batch(tiny_models["bert"])
    d = encoder_shape(model.config).head_size
    layer = layer_modules(model)[1]
    with torch.no_grad():
        layer.attention_output.weight[:, 2 * d : 3 * d] = 0
        layer.ffn_output.weight[:, 7] = 0
    criterion = LRPImportance()
    criterion.accumulate(model, [batch])
    scores = criterion(model)
    assert scores["head"][1, 2] == 0 and scores["ffn_neuron"][1, 7] == 0
    assert (scores["head"][1, [0, 1, 3]] > 0).all()
    assert (scores["ffn_neuron"][1] > 0).sum() > SIZES["ffn"] // 2


def test_relevance_is_the_first_order_effect_of_scaling_a_unit(tiny_models):
    # Gradient x input: scaling neuron j's output by (1 + eps) moves the summed true-class
    # logit by eps * sum(a * df/da), whose magnitude is the neuron's relevance.
    model, batch = _model_and_batch(tiny_models["bert"])
    model = model.double().eval()
    criterion = LRPImportance()
    criterion.accumulate(model, [batch])
    relevance = criterion(model)["ffn_neuron"][0]
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    column = layer_modules(model)[0].ffn_output.weight[:, :]
    eps = 1e-5

    def target(scale: float, j: int) -> float:
        saved = column[:, j].clone()
        with torch.no_grad():
            column[:, j] *= scale
            logits = model(**inputs).logits
            column[:, j] = saved
        return float(logits.gather(1, labels[:, None]).sum())

    for j in (int(relevance.argmax()), 5):
        effect = abs(target(1 + eps, j) - target(1 - eps, j)) / (2 * eps)
        assert effect == pytest.approx(float(relevance[j]), rel=1e-4, abs=1e-9)


def test_lrp_without_a_pass_is_an_error(tiny_models):
    model, _ = _model_and_batch(tiny_models["bert"])
    criterion = CRITERIA["lrp"]()
    assert criterion.needs_relevance and not criterion.needs_gradients
    with pytest.raises(ValueError, match="accumulate"):
        criterion(model)
