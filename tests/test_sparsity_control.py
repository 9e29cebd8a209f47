"""Parameter accounting (expected and exact) and the Lagrangian sparsity controller."""

from __future__ import annotations

from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch

from spruce.masks import (
    EncoderGates,
    SparsityController,
    SparsityStep,
    UnitMasks,
    dense_encoder_params,
    encoder_params_from_masks,
    expected_encoder_params,
    expected_sparsity,
    make_optimizers,
    sparsity_from_masks,
    structure_from_masks,
)
from spruce.models.structure import EncoderShape

# L=2, D=8, head size 2, H=3, F=5: dense = L * D * (4 * 2 * 3 + 2 * 5) = 2 * 8 * 34.
SHAPE = EncoderShape(num_layers=2, hidden_size=8, head_size=2, heads=(3, 3), ffn=(5, 5))
TOY = EncoderShape(num_layers=4, hidden_size=64, head_size=16, heads=(4,) * 4, ffn=(128,) * 4)


def fill(gates: EncoderGates, value: float) -> EncoderGates:
    with torch.no_grad():
        for p in gates.parameters():
            p.fill_(value)
    return gates


def test_dense_params_count_attention_and_ffn_matrices_only():
    assert dense_encoder_params(SHAPE) == 2 * 8 * (4 * 2 * 3 + 2 * 5) == 544
    base = EncoderShape(12, 768, 64, (12,) * 12, (3072,) * 12)
    assert dense_encoder_params(base) == 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # 84.9M


@pytest.mark.parametrize("units", [None, ("head", "ffn_neuron"), ("hidden",)])
def test_expected_params_of_open_gates_equal_dense(units):
    gates = fill(EncoderGates(SHAPE, *([units] if units else [])), 50.0)
    assert expected_encoder_params(gates).item() == pytest.approx(544, rel=1e-6)
    assert expected_sparsity(gates).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("unit", ["head", "mha_layer", "ffn_neuron", "ffn_layer", "hidden"])
def test_expected_params_decrease_when_log_alpha_decreases(unit):
    gates = EncoderGates(SHAPE)
    sizes = []
    for value in (4.0, 2.0, 0.0, -2.0, -4.0):
        with torch.no_grad():
            gates.gates[unit].log_alpha.fill_(value)
        sizes.append(expected_encoder_params(gates).item())
    assert all(a > b for a, b in pairwise(sizes))


def test_gradient_flows_from_expected_sparsity_to_every_log_alpha():
    gates = EncoderGates(SHAPE)
    expected_sparsity(gates).backward()
    for unit, gate in gates.gates.items():
        grad = gate.log_alpha.grad
        # Raising any keep probability lowers sparsity: every gradient is negative.
        assert grad is not None and (grad < 0).all(), unit


def test_expected_params_equal_the_mean_exact_params_of_samples():
    # Gates are independent and the size is multilinear in them, so the product of
    # expectations is the expectation of the exact count of a sampled structure.
    torch.manual_seed(0)
    gates = EncoderGates(SHAPE)
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_(0.0, 1.5)
    samples = [encoder_params_from_masks(gates(), SHAPE) for _ in range(4000)]
    mean = sum(samples) / len(samples)
    assert mean == pytest.approx(expected_encoder_params(gates).item(), rel=0.02)


def hand_masks() -> UnitMasks:
    return UnitMasks(
        head=torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]),
        mha_layer=torch.tensor([0.9, 0.0]),  # layer 1 attention removed whole
        ffn_neuron=torch.tensor([[1.0, 0.3, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0]]),
        ffn_layer=torch.tensor([1.0, 1.0]),
        hidden=torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.2, 1.0, 0.0]),  # 6 of 8 kept
    )


def test_exact_params_from_masks_match_a_hand_count():
    # layer 0: 2 heads, 2 FFN units; layer 1: attention gone, 4 FFN units; D_kept = 6.
    by_hand = 6 * (4 * 2 * 2 + 2 * 2) + 6 * (0 + 2 * 4)
    assert by_hand == 168
    assert encoder_params_from_masks(hand_masks(), SHAPE) == by_hand
    assert sparsity_from_masks(hand_masks(), SHAPE) == pytest.approx(1 - 168 / 544)
    # Dropping the FFN block of layer 0 too, and with hidden untouched (absent = all kept):
    masks = hand_masks()
    masks.ffn_layer = torch.tensor([0.0, 1.0])
    masks.hidden = None
    assert encoder_params_from_masks(masks, SHAPE) == 8 * (4 * 2 * 2) + 8 * (2 * 4)
    assert encoder_params_from_masks(UnitMasks(), SHAPE) == 544


def test_structure_from_masks():
    assert structure_from_masks(hand_masks(), SHAPE) == {
        "hidden": 6,
        "layers": [{"heads": 2, "ffn": 2}, {"heads": 0, "ffn": 4}],
    }
    only_heads = UnitMasks(head=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]))
    assert structure_from_masks(only_heads, SHAPE) == {
        "hidden": 8,
        "layers": [{"heads": 0, "ffn": 5}, {"heads": 2, "ffn": 5}],
    }
    with pytest.raises(ValueError):
        structure_from_masks(UnitMasks(hidden=torch.ones(7)), SHAPE)


def test_target_ramps_linearly_then_stays():
    controller = SparsityController(0.8, warmup_steps=100, start_sparsity=0.2)
    assert [controller.target_at(s) for s in (0, 50, 100, 500)] == pytest.approx(
        [0.2, 0.5, 0.8, 0.8]
    )
    assert SparsityController(0.5).target_at(0) == 0.5


def test_penalty_value_stats_and_ascent_direction():
    controller = SparsityController(0.5, control="lagrangian")
    with torch.no_grad():
        controller.lambda1.fill_(2.0)
        controller.lambda2.fill_(3.0)
    s = torch.tensor(0.3)
    assert controller.penalty(s, step=10).item() == pytest.approx(2 * -0.2 + 3 * 0.04)
    stats = controller.stats()
    assert stats["expected_sparsity"] == pytest.approx(0.3)
    assert stats["target_sparsity"] == 0.5 and stats["lambda1"] == 2.0
    assert stats["lambda2"] == 3.0

    # Too dense (s < t): ascent drives lambda1 down, which then rewards sparsity.
    fresh = SparsityController(0.5, control="lagrangian")
    _, lambda_optimizer = make_optimizers(EncoderGates(SHAPE), fresh, 0.1, 0.1)
    fresh.penalty(torch.tensor(0.3)).backward()
    lambda_optimizer.step()
    assert fresh.lambda1.item() < 0 and fresh.lambda2.item() > 0


def train_toy(
    target: float, steps: int = 400, warmup: int = 100, control: str = "lagrangian"
) -> EncoderGates:
    """Gates alone; the 'task' wants every unit kept; the control must win."""
    torch.manual_seed(0)
    gates = EncoderGates(TOY)
    controller = SparsityController(target, warmup_steps=warmup, control=control)
    gate_optimizer, lambda_optimizer = make_optimizers(gates, controller)
    for step in range(steps):
        controller.place(gates, step)
        masks = gates()
        task_loss = -0.01 * sum(value.mean() for _, value in masks.items())
        loss = task_loss + controller.gate_penalty(gates, step)
        loss.backward()
        gate_optimizer.step()
        lambda_optimizer.step()
        gate_optimizer.zero_grad()
        lambda_optimizer.zero_grad()
    return gates


@pytest.mark.parametrize("control", ["lagrangian", "exact"])
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_control_drives_expected_and_final_sparsity_to_the_target(target, control):
    gates = train_toy(target, control=control)
    assert expected_sparsity(gates).item() == pytest.approx(target, abs=0.01)
    final = sparsity_from_masks(gates.deterministic_masks(), TOY)
    assert final == pytest.approx(target, abs=0.01)
    # Plain per-group rounding can miss by several points on this small, hesitant
    # structure (up to 8.8 over seeds); the greedy correction only ever moves closer to
    # the gates' expected size.
    aim = expected_sparsity(gates).item()
    rounded = sparsity_from_masks(gates.deterministic_masks(correct=False), TOY)
    assert abs(final - aim) <= abs(rounded - aim)


def test_sparsity_step_callback_steps_both_optimizers():
    gates = EncoderGates(SHAPE)
    controller = SparsityController(0.5, warmup_steps=10, control="lagrangian")
    gate_optimizer, lambda_optimizer = make_optimizers(gates, controller)
    callback = SparsityStep(controller, gate_optimizer, lambda_optimizer)
    with torch.no_grad():
        controller.lambda1.fill_(1.0)
    before = gates.gates["hidden"].log_alpha.detach().clone()
    controller.gate_penalty(gates).backward()  # step from the controller's counter: 0
    assert controller.stats()["target_sparsity"] == 0.0
    callback(SimpleNamespace(), 7, {})
    # s > t with lambda1 > 0 penalizes sparsity: descent opens the gates, ascent on
    # lambda1 raises it further.
    assert (gates.gates["hidden"].log_alpha.detach() > before).all()
    assert controller.lambda1.item() > 1.0
    assert gates.gates["hidden"].log_alpha.grad is None and controller.lambda1.grad is None
    assert int(controller.num_steps) == 7
    controller.gate_penalty(gates)
    assert controller.stats()["target_sparsity"] == pytest.approx(0.35)


def test_cubic_ramp_is_fast_first_and_meets_the_linear_one_at_the_ends():
    linear = SparsityController(0.9, warmup_steps=100)
    cubic = SparsityController(0.9, warmup_steps=100, ramp="cubic")
    assert cubic.target_at(0) == linear.target_at(0) == 0.0
    assert cubic.target_at(100) == linear.target_at(100) == pytest.approx(0.9)
    assert cubic.target_at(20) == pytest.approx(0.9 * (1 - 0.8**3))
    assert all(cubic.target_at(s) > linear.target_at(s) for s in range(1, 100))


@pytest.mark.parametrize("target", [0.3, 0.8, 0.97])
def test_exact_control_places_the_expected_sparsity_on_the_target(target):
    torch.manual_seed(1)
    gates = EncoderGates(TOY)
    with torch.no_grad():
        for p in gates.parameters():
            p.normal_(2.0, 1.5)  # uneven gates: the shift is not a closed form
    controller = SparsityController(target, control="exact")
    controller.place(gates)
    assert expected_sparsity(gates).item() == pytest.approx(target, abs=1e-5)
    stats = controller.stats()
    assert stats["expected_sparsity"] == pytest.approx(target, abs=1e-5)
    assert stats["shift"] == pytest.approx(gates.shift)
    # Exact control adds no penalty and has no multipliers to learn.
    assert controller.gate_penalty(gates).item() == 0.0


def test_exact_control_leaves_the_gates_only_the_gradient_that_ranks_units():
    # A common move of every log_alpha is undone by the next shift, so the shift's
    # implicit gradient removes it: the gates' gradients sum to zero. Without it, a task
    # that wants every unit kept pushes all of them the same way.
    torch.manual_seed(2)
    gates = EncoderGates(TOY)
    controller = SparsityController(0.6, control="exact")
    controller.place(gates)
    keep_everything = sum((p * torch.rand_like(p)).sum() for p in gates.probs().values())
    (-keep_everything).backward()
    grads = torch.cat([p.grad.flatten() for p in gates.parameters()])
    assert abs(grads.sum().item()) < 1e-4 * grads.abs().sum().item()
    assert (grads > 0).any() and (grads < 0).any()

    gates.zero_grad()
    gates.set_offset(None)
    (-sum((p * torch.rand_like(p)).sum() for p in gates.probs().values())).backward()
    plain = torch.cat([p.grad.flatten() for p in gates.parameters()])
    assert (plain < 0).all()
