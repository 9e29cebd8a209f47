"""Importance criteria against hand computations on a tiny BERT."""

from __future__ import annotations

import pytest
import torch

from spruce.criteria import CRITERIA, TaylorImportance, WeightImportance, accumulate_gradients
from spruce.models import layer_modules, load_classifier
from tiny_models import SIZES


@pytest.fixture
def model_and_batch(tiny_models):
    torch.manual_seed(0)
    model, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    batch = dict(tokenizer(["good movie", "bad plot", "the film"], padding=True,
                           return_tensors="pt"))  # fmt: skip
    batch["labels"] = torch.tensor([1, 0, 1])
    return model, batch


def test_weight_importance_matches_hand_computation(model_and_batch):
    model, _ = model_and_batch
    scores = WeightImportance()(model)
    d = SIZES["hidden"] // SIZES["heads"]
    assert scores["head"].shape == (SIZES["layers"], SIZES["heads"])
    assert scores["ffn_neuron"].shape == (SIZES["layers"], SIZES["ffn"])
    layer = layer_modules(model)[1]
    h = 2
    rows = slice(h * d, (h + 1) * d)
    expected = (
        sum(
            m.weight[rows].abs().sum() + m.bias[rows].abs().sum()
            for m in (layer.query, layer.key, layer.value)
        )
        + layer.attention_output.weight[:, rows].abs().sum()
    )
    assert torch.isclose(scores["head"][1, h], expected.detach(), rtol=1e-5)
    j = 7
    neuron = (layer.ffn_input.weight[j].abs().sum() + layer.ffn_input.bias[j].abs()
              + layer.ffn_output.weight[:, j].abs().sum())  # fmt: skip
    assert torch.isclose(scores["ffn_neuron"][1, j], neuron.detach(), rtol=1e-5)


def test_taylor_importance_is_abs_of_summed_weight_times_gradient(model_and_batch):
    model, batch = model_and_batch
    assert accumulate_gradients(model, [batch, batch]) == 2
    scores = TaylorImportance()(model)
    layer = layer_modules(model)[0]
    j = 3
    w1, w2 = layer.ffn_input, layer.ffn_output
    summed = ((w1.weight[j] * w1.weight.grad[j]).sum() + w1.bias[j] * w1.bias.grad[j]
              + (w2.weight[:, j] * w2.weight.grad[:, j]).sum())  # fmt: skip
    assert torch.isclose(scores["ffn_neuron"][0, j], summed.abs(), rtol=1e-4)
    assert (scores["head"] >= 0).all()


def test_taylor_predicts_the_loss_change_of_removing_a_neuron(model_and_batch):
    # First-order Taylor is |dL| to first order: removing the top-scored neuron should
    # change the loss more than removing the lowest-scored one.
    model, batch = model_and_batch
    accumulate_gradients(model, [batch])
    scores = TaylorImportance()(model)["ffn_neuron"][0]
    model.eval()
    with torch.no_grad():
        base = model(**batch).loss.item()
        changes = {}
        for name, j in (("high", int(scores.argmax())), ("low", int(scores.argmin()))):
            layer = layer_modules(model)[0]
            saved = layer.ffn_output.weight[:, j].clone()
            layer.ffn_output.weight[:, j] = 0
            changes[name] = abs(model(**batch).loss.item() - base)
            layer.ffn_output.weight[:, j] = saved
    assert changes["high"] > changes["low"]


def test_gradient_criteria_require_gradients(model_and_batch):
    model, _ = model_and_batch
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="needs accumulated gradients"):
        CRITERIA["gradient"]()(model)
    assert set(CRITERIA) == {"weight", "gradient", "taylor", "lrp"}
