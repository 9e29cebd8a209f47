"""PDP, parameter-free differentiable pruning (Cho et al. 2023), for heads and FFN neurons.

No mask parameters: at every forward pass each unit's soft mask is computed from its own
weights, ``m = sigmoid((log r - log t) / TEMPERATURE)``, where ``r`` is the unit's mean
squared weight (per encoder weight it owns, so that a head and a neuron compare fairly)
and ``t`` the threshold that the step's target sets: the largest-``r`` units that keep
``1 - target`` of the encoder weights lie above it, the others below. The mask is
differentiable in the weights, so training moves weights across the threshold, and the
kept size sits on the ramped target by construction. The final structure keeps the units
above the threshold at the full target (:func:`~spruce.units.encoder.select_units`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel

from spruce.masks.accounting import dense_encoder_params, sparsity_from_masks
from spruce.masks.control import SparsityController
from spruce.masks.units import UnitMasks
from spruce.models.structure import EncoderShape, layer_modules
from spruce.units.encoder import select_units, unit_costs

# Width of the soft step in log mean-square: a unit 20% above the threshold keeps about
# 0.86 of its output, one 20% below about 0.14.
TEMPERATURE = 0.1


def unit_squared_weights(model: PreTrainedModel, head_size: int) -> dict[str, torch.Tensor]:
    """Sum of squared weights each head ([L, H]: its Q, K, V rows and output columns) and
    FFN neuron ([L, F]: its input row and output column) owns; differentiable."""
    heads, neurons = [], []
    for layer in layer_modules(model):
        count = layer.query.out_features // head_size
        head = sum(
            p.weight.pow(2).reshape(count, -1).sum(dim=1)
            for p in (layer.query, layer.key, layer.value)
        )
        out = layer.attention_output.weight.pow(2)
        heads.append(head + out.reshape(out.shape[0], count, head_size).sum(dim=(0, 2)))
        neurons.append(
            layer.ffn_input.weight.pow(2).sum(dim=1) + layer.ffn_output.weight.pow(2).sum(dim=0)
        )
    return {"head": torch.stack(heads), "ffn_neuron": torch.stack(neurons)}


class PDPMasks:
    """A mask source for :func:`~spruce.compact.apply_masks`: soft PDP masks from the
    model's current weights at the target of step ``step`` of ``schedule``."""

    def __init__(
        self, model: PreTrainedModel, shape: EncoderShape, schedule: SparsityController
    ) -> None:
        self.model, self.shape, self.schedule = model, shape, schedule
        self.costs = unit_costs(shape)
        self.step = 0
        self.last: dict[str, float] = {}

    def __call__(self) -> UnitMasks:
        target = self.schedule.target_at(self.step)
        squared = unit_squared_weights(self.model, self.shape.head_size)
        if target <= 0.0:
            self.last = {"expected_sparsity": 0.0, "target_sparsity": target}
            return UnitMasks(**{name: torch.ones_like(v) for name, v in squared.items()})
        ratios = {name: value / self.costs[name] for name, value in squared.items()}
        chosen = select_units({n: v.detach() for n, v in squared.items()}, self.shape, target)
        threshold = self.threshold(ratios, chosen)
        masks = {
            name: torch.sigmoid((ratio.clamp_min(1e-30).log() - threshold) / TEMPERATURE)
            for name, ratio in ratios.items()
        }
        soft_kept = sum(float(masks[n].detach().sum()) * self.costs[n] for n in masks)
        self.last = {
            # The units above the threshold: on the target by construction.
            "expected_sparsity": sparsity_from_masks(chosen, self.shape),
            "target_sparsity": target,
            # What the forward pass sees: soft masks are not exactly 0 or 1.
            "soft_sparsity": 1.0 - soft_kept / dense_encoder_params(self.shape),
        }
        return UnitMasks(**masks)

    def threshold(self, ratios: dict[str, torch.Tensor], chosen: UnitMasks) -> float:
        """log ``t``: halfway (geometrically) between the weakest unit ``chosen`` keeps and
        the strongest one it removes."""
        detached = {name: value.detach() for name, value in ratios.items()}
        kept = [detached[n][getattr(chosen, n) > 0] for n in detached]
        removed = [detached[n][getattr(chosen, n) == 0] for n in detached]
        low = min((float(v.min()) for v in kept if v.numel()), default=math.inf)
        high = max((float(v.max()) for v in removed if v.numel()), default=0.0)
        if not math.isfinite(low):
            return math.log(max(high, 1e-30)) + TEMPERATURE
        if high <= 0.0:
            return math.log(max(low, 1e-30)) - TEMPERATURE
        return 0.5 * (math.log(max(low, 1e-30)) + math.log(max(high, 1e-30)))

    def final_masks(self, size_multiple: int) -> UnitMasks:
        """The structure at the full target: the units above the threshold, each with the
        soft mask value it trained with (compaction folds it into the weights)."""
        with torch.no_grad():
            squared = unit_squared_weights(self.model, self.shape.head_size)
            chosen = select_units(
                squared, self.shape, self.schedule.target_sparsity, size_multiple=size_multiple
            )
            step, self.step = self.step, self.schedule.warmup_steps
            soft = self()
            self.step = step
        return UnitMasks(
            **{
                name: torch.where(keep > 0, getattr(soft, name).clamp_min(1e-3), 0.0)
                for name, keep in chosen.items()
            }
        )

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
