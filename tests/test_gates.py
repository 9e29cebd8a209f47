"""Hard-concrete gates and the encoder gate set: sampling, probabilities, fixed structures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spruce.errors import SpruceError
from spruce.masks import (
    UNIT_TYPES,
    EncoderGates,
    HardConcreteGate,
    sparsity_from_masks,
    structure_from_masks,
)
from spruce.masks.hard_concrete import BETA, GAMMA, KEPT_VALUE_FLOOR, ZETA
from spruce.models.structure import EncoderShape

SHAPE = EncoderShape(num_layers=3, hidden_size=16, head_size=4, heads=(4,) * 3, ffn=(10,) * 3)


def gate_with(values: list[float] | torch.Tensor) -> HardConcreteGate:
    values = torch.as_tensor(values, dtype=torch.float32)
    gate = HardConcreteGate(tuple(values.shape))
    with torch.no_grad():
        gate.log_alpha.copy_(values)
    return gate


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5])
def test_samples_lie_in_unit_interval_with_exact_ends_and_match_prob_nonzero(log_alpha):
    torch.manual_seed(0)
    gate = gate_with(torch.full((200_000,), log_alpha))
    z = gate.sample()
    assert z.min() >= 0.0 and z.max() <= 1.0
    assert (z == 0).any() and (z == 1).any()  # the stretch + clamp gives exact 0s and 1s
    expected = gate.prob_nonzero()[0].item()
    assert (z > 0).float().mean().item() == pytest.approx(expected, abs=0.005)


def test_prob_nonzero_is_the_closed_form():
    values = torch.linspace(-6, 6, 13)
    gate = gate_with(values)
    by_hand = [1 / (1 + math.exp(-(a - BETA * math.log(-GAMMA / ZETA)))) for a in values.tolist()]
    assert gate.prob_nonzero().tolist() == pytest.approx(by_hand, rel=1e-5)
    # log_alpha = beta * log(-gamma / zeta) is exactly where half the samples are zero.
    assert gate_with([BETA * math.log(-GAMMA / ZETA)]).prob_nonzero().item() == pytest.approx(0.5)


def test_initial_gates_keep_almost_everything():
    torch.manual_seed(0)
    gate = HardConcreteGate((1000,))
    assert gate.prob_nonzero().min() > 0.98
    assert torch.equal(gate.deterministic_value(), torch.ones(1000))
    assert (gate.sample() == 1).float().mean() > 0.7


def test_sample_is_differentiable_in_log_alpha():
    gate = gate_with(torch.zeros(50))
    gate.sample().sum().backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0


def test_deterministic_keeps_the_largest_log_alpha_globally():
    gate = gate_with([0.5, 3.0, -1.0, 2.0, 10.0])
    values = gate.deterministic(3)
    assert (values > 0).tolist() == [False, True, False, True, True]
    kept_value = gate.deterministic_value()
    assert values[4].item() == 1.0  # confident gate: value 1
    assert values[1].item() == pytest.approx(kept_value[1].item())
    assert gate.deterministic(0).sum() == 0
    assert (gate.deterministic(5) > 0).all()
    with pytest.raises(ValueError):
        gate.deterministic(6)


def test_deterministic_per_row_with_one_or_many_counts():
    gate = gate_with([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0], [5.0, -5.0, 5.0, -5.0]])
    same = gate.keep_mask(2, per_row=True)
    assert same.tolist() == [
        [False, False, True, True],
        [True, True, False, False],
        [True, False, True, False],
    ]
    mixed = gate.keep_mask([1, 0, 4], per_row=True)
    assert mixed.sum(dim=1).tolist() == [1, 0, 4]
    assert mixed[0].tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        gate.keep_mask([1, 2], per_row=True)


def test_kept_units_never_have_value_zero():
    # log_alpha -3 has a clamped test-time value of 0, but a unit counted as kept must
    # contribute, so it is floored.
    gate = gate_with([-3.0, -4.0])
    assert gate.deterministic_value().tolist() == [0.0, 0.0]
    assert gate.deterministic(1).tolist() == pytest.approx([KEPT_VALUE_FLOOR, 0.0])


def test_encoder_gates_shapes_modes_and_subsets():
    gates = EncoderGates(SHAPE)
    assert gates.units == UNIT_TYPES
    sampled = gates()
    expected_shapes = {
        "head": (3, 4),
        "mha_layer": (3,),
        "ffn_neuron": (3, 10),
        "ffn_layer": (3,),
        "hidden": (16,),
    }
    assert {name: tuple(v.shape) for name, v in sampled.items()} == expected_shapes
    assert sampled.head.requires_grad
    gates.eval()
    fixed = gates.masks()
    assert not fixed.head.requires_grad
    assert torch.equal(fixed.hidden, gates.deterministic_masks().hidden)

    heads_only = EncoderGates(SHAPE, ["ffn_neuron", "head"])
    assert heads_only.units == ("head", "ffn_neuron")  # canonical order
    masks = heads_only()
    assert masks.hidden is None and masks.mha_layer is None and masks.head is not None


def test_bad_units_and_uneven_layers_are_rejected():
    with pytest.raises(SpruceError):
        EncoderGates(SHAPE, ["head", "neurons"])
    with pytest.raises(SpruceError):
        EncoderGates(SHAPE, [])
    uneven = EncoderShape(2, 16, 4, (4, 3), (10, 10))
    with pytest.raises(SpruceError):
        EncoderGates(uneven)


def test_state_dict_and_config_round_trip():
    torch.manual_seed(0)
    gates = EncoderGates(SHAPE, ["head", "hidden", "ffn_layer"], init_mean={"hidden": 1.0})
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_()
    gates.set_shift(-0.7)  # the exact control's shift is part of the learned structure
    config = json.loads(json.dumps(gates.config))
    rebuilt = EncoderGates.from_config(config)
    rebuilt.load_state_dict(gates.state_dict())
    assert rebuilt.shift == pytest.approx(-0.7)
    assert rebuilt.units == gates.units and rebuilt.shape == gates.shape
    for (name, a), (_, b) in zip(
        gates.deterministic_masks().items(), rebuilt.deterministic_masks().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert set(gates.state_dict()) == {
        f"gates.{unit}.{name}"
        for unit in ("head", "ffn_layer", "hidden")
        for name in ("log_alpha", "shift")
    }


def set_log_alpha(gates: EncoderGates, **values: torch.Tensor | float) -> None:
    with torch.no_grad():
        for name, value in values.items():
            log_alpha = gates.gates[name].log_alpha
            log_alpha.copy_(torch.as_tensor(value).expand_as(log_alpha))


def test_uncorrected_masks_are_cofi_per_group_rounding():
    gates = EncoderGates(SHAPE)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_(0.0, 2.0)
    counts = gates.rounded_counts()
    masks = gates.deterministic_masks(correct=False)
    probs = gates.probs()
    assert counts["hidden"] == math.floor(probs["hidden"].sum().item() + 0.5)
    assert counts["mha_layer"] == math.floor(probs["mha_layer"].sum().item() + 0.5)
    assert int((masks.hidden > 0).sum()) == counts["hidden"]
    assert int((masks.mha_layer > 0).sum()) == counts["mha_layer"]
    alive = masks.ffn_layer > 0
    neuron_rows = (masks.ffn_neuron > 0).sum(dim=1)
    for layer in range(3):
        expected = counts["ffn_neuron"][layer] if alive[layer] else 0
        assert neuron_rows[layer].item() == expected  # removed block: its units zeroed too


def test_removed_blocks_zero_their_units():
    gates = EncoderGates(SHAPE)
    set_log_alpha(gates, mha_layer=torch.tensor([5.0, -9.0, 5.0]))
    masks = gates.deterministic_masks(correct=False)
    assert masks.mha_layer.tolist()[1] == 0.0
    assert masks.head[1].sum() == 0 and (masks.head[0] > 0).all()
    assert structure_from_masks(masks, SHAPE)["layers"][1]["heads"] == 0


@pytest.mark.parametrize("target", [0.3, 0.62, 0.9])
def test_explicit_target_lands_even_for_untrained_gates(target):
    torch.manual_seed(3)
    shape = EncoderShape(4, 64, 16, (4,) * 4, (128,) * 4)
    gates = EncoderGates(shape)
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_(1.0, 1.5)
    sparsity = sparsity_from_masks(gates.deterministic_masks(target), shape)
    assert sparsity == pytest.approx(target, abs=0.005)


def test_deterministic_masks_follow_parameter_updates():
    gates = EncoderGates(SHAPE)
    before = gates.deterministic_masks()
    assert int((before.hidden > 0).sum()) == 16
    set_log_alpha(gates, hidden=-9.0)  # in-place update: the cache must notice
    after = gates.deterministic_masks()
    assert int((after.hidden > 0).sum()) < 16
    gates.gates["hidden"].log_alpha.data.fill_(9.0)  # bypasses the version counter
    assert int((gates.deterministic_masks().hidden > 0).sum()) == 16
    cached = gates.deterministic_masks()
    cached.hidden.zero_()  # callers get copies; the cache stays intact
    assert int((gates.deterministic_masks().hidden > 0).sum()) == 16


@pytest.mark.parametrize("target", [0.3, 0.62, 0.9])
def test_size_multiple_gives_round_widths_and_still_lands_on_the_target(target):
    torch.manual_seed(4)
    shape = EncoderShape(4, 96, 16, (6,) * 4, (200,) * 4)  # 200 is not a multiple of 16
    gates = EncoderGates(shape, size_multiple=16)
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_(1.0, 1.5)
    masks = gates.deterministic_masks(target)
    structure = structure_from_masks(masks, shape)
    widths = [layer["ffn"] for layer in structure["layers"]] + [structure["hidden"]]
    assert all(w % 16 == 0 or w == 200 for w in widths), widths
    assert sparsity_from_masks(masks, shape) == pytest.approx(target, abs=0.01)
    unrounded = EncoderGates(shape)
    unrounded.load_state_dict(gates.state_dict())
    plain = structure_from_masks(unrounded.deterministic_masks(target), shape)
    assert any(layer["ffn"] % 16 for layer in plain["layers"]) or plain["hidden"] % 16


def test_size_multiple_round_trips_and_rejects_zero():
    shape = EncoderShape(2, 32, 8, (4, 4), (64, 64))
    gates = EncoderGates(shape, size_multiple=8)
    assert EncoderGates.from_config(json.loads(json.dumps(gates.config))).size_multiple == 8
    with pytest.raises(SpruceError, match="size_multiple"):
        EncoderGates(shape, size_multiple=0)


@pytest.mark.parametrize("correct", [True, False])
def test_a_structure_without_attention_keeps_its_most_trusted_head(correct):
    shape = EncoderShape(4, 64, 16, (4,) * 4, (128,) * 4)
    gates = EncoderGates(shape)
    set_log_alpha(gates, head=-9.0)
    with torch.no_grad():
        gates.gates["head"].log_alpha[2, 3] = -6.0  # the least hopeless head
    masks = gates.deterministic_masks(0.8, correct=correct)
    kept = (masks.head > 0).nonzero().tolist()
    assert kept == [[2, 3]]
    assert masks.mha_layer[2] > 0
    if correct:  # the head is paid for by other units: the target still holds
        assert sparsity_from_masks(masks, shape) == pytest.approx(0.8, abs=0.005)


def test_the_kept_head_sits_in_a_kept_attention_block():
    gates = EncoderGates(SHAPE)
    # Layer 0 holds the best head but its block is the least trusted; layer 1 has the
    # best block with a slightly worse head: the product of the two picks layer 1.
    set_log_alpha(gates, head=-9.0, mha_layer=torch.tensor([-9.0, 3.0, -9.0]))
    with torch.no_grad():
        gates.gates["head"].log_alpha[0, 0] = -4.0
        gates.gates["head"].log_alpha[1, 2] = -5.0
    masks = gates.deterministic_masks(0.7)
    alive = (masks.head > 0) & (masks.mha_layer > 0).unsqueeze(1)
    assert alive.nonzero().tolist() == [[1, 2]]


def test_structures_that_keep_attention_get_no_extra_head():
    gates = EncoderGates(SHAPE)
    set_log_alpha(gates, head=torch.tensor([[-9.0] * 4, [4.0, -9.0, -9.0, -9.0], [-9.0] * 4]))
    with torch.no_grad():
        gates.gates["head"].log_alpha[2, 0] = -5.0  # would be the floor's pick if needed
    masks = gates.deterministic_masks(correct=False)
    assert (masks.head > 0).nonzero().tolist() == [[1, 0]]
