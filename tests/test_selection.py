"""Score-based unit selection lands on the sparsity target and keeps the best units."""

from __future__ import annotations

import pytest
import torch

from spruce.errors import SpruceError
from spruce.models.structure import EncoderShape
from spruce.units.encoder import encoder_weight_count, select_units, unit_costs

SHAPE = EncoderShape(num_layers=3, hidden_size=16, head_size=4, heads=(4, 4, 4), ffn=(32,) * 3)


def remaining_fraction(masks) -> float:
    costs = unit_costs(SHAPE)
    kept = (
        float(masks.head.sum()) * costs["head"]
        + float(masks.ffn_neuron.sum()) * costs["ffn_neuron"]
    )
    return kept / encoder_weight_count(SHAPE)


@pytest.mark.parametrize("target", [0.0, 0.3, 0.5, 0.9])
def test_lands_within_half_the_largest_unit_of_the_target(target):
    torch.manual_seed(0)
    scores = {"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}
    masks = select_units(scores, SHAPE, target)
    # Granularity: one head is 256 of 6,144 weights here (0.5% of MiniLM's encoder).
    tolerance = max(unit_costs(SHAPE).values()) / 2 / encoder_weight_count(SHAPE)
    assert abs((1 - remaining_fraction(masks)) - target) <= tolerance


def test_removes_the_least_important_units_per_parameter():
    scores = {"head": torch.full((3, 4), 100.0), "ffn_neuron": torch.ones(3, 32)}
    scores["ffn_neuron"][1, 5] = 0.0
    scores["head"][2, 1] = 0.0
    masks = select_units(scores, SHAPE, 0.05)
    assert masks.head[2, 1] == 0 and masks.ffn_neuron[1, 5] == 0
    assert masks.head.sum() == 11


def test_iterative_selection_never_restores_units():
    torch.manual_seed(1)
    first = select_units({"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}, SHAPE, 0.3)
    second = select_units(
        {"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}, SHAPE, 0.6, first
    )
    assert ((first.head == 0) <= (second.head == 0)).all()
    assert ((first.ffn_neuron == 0) <= (second.ffn_neuron == 0)).all()
    assert 1 - remaining_fraction(second) > 1 - remaining_fraction(first)


def test_target_out_of_range_is_a_user_error():
    with pytest.raises(SpruceError, match="target-sparsity"):
        select_units({"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}, SHAPE, 1.0)


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_size_multiple_rounds_every_ffn_width_and_stays_near_the_target(target):
    torch.manual_seed(2)
    scores = {"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}
    masks = select_units(scores, SHAPE, target, size_multiple=8)
    assert all(int(width) % 8 == 0 for width in masks.ffn_neuron.sum(dim=1)), masks.ffn_neuron
    # At most half a multiple of neurons per layer away from the unrounded selection.
    drift = 3 * 4 * unit_costs(SHAPE)["ffn_neuron"] / encoder_weight_count(SHAPE)
    tolerance = max(unit_costs(SHAPE).values()) / 2 / encoder_weight_count(SHAPE)
    assert abs((1 - remaining_fraction(masks)) - target) <= tolerance + drift


def test_size_multiple_never_restores_units_removed_in_an_earlier_round():
    torch.manual_seed(5)
    first = select_units(
        {"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)}, SHAPE, 0.4, size_multiple=8
    )
    second = select_units(
        {"head": torch.rand(3, 4), "ffn_neuron": torch.rand(3, 32)},
        SHAPE,
        0.5,
        first,
        size_multiple=8,
    )
    assert ((first.ffn_neuron == 0) <= (second.ffn_neuron == 0)).all()
    assert all(int(width) % 8 == 0 for width in second.ffn_neuron.sum(dim=1))
