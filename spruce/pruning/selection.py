"""Turn unit importances into binary masks that meet an encoder-sparsity target.

Used by the one-shot and iterative baselines (``--method magnitude|taylor``). Units are
ranked globally by importance per parameter, because a head owns ``4 * D * d`` weights
and an FFN neuron ``2 * D``: comparing raw sums would always remove neurons first.
"""

from __future__ import annotations

import torch

from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models.structure import EncoderShape


def unit_costs(shape: EncoderShape) -> dict[str, int]:
    """Encoder weights (attention and FFN matrices) removed with one unit of each type."""
    return {"head": 4 * shape.hidden_size * shape.head_size, "ffn_neuron": 2 * shape.hidden_size}


def encoder_weight_count(shape: EncoderShape) -> int:
    d, D = shape.head_size, shape.hidden_size
    return sum(4 * D * h * d + 2 * D * f for h, f in zip(shape.heads, shape.ffn, strict=True))


def select_units(
    scores: dict[str, torch.Tensor],
    shape: EncoderShape,
    target_sparsity: float,
    current: UnitMasks | None = None,
    size_multiple: int = 1,
) -> UnitMasks:
    """Binary masks removing the least important units until ``target_sparsity`` of the
    encoder weights (relative to ``shape``) is gone. Units already removed in ``current``
    stay removed (iterative pruning only ever removes more). With ``size_multiple`` > 1,
    every layer's kept FFN width is then moved to a multiple of it (or the dense width),
    which shifts the sparsity by at most ``size_multiple / 2`` neurons per layer."""
    if not 0 <= target_sparsity < 1:
        raise SpruceError(f"--target-sparsity must be in [0, 1), got {target_sparsity}")
    costs = unit_costs(shape)
    budget = target_sparsity * encoder_weight_count(shape)
    masks = {}
    for name in ("head", "ffn_neuron"):
        previous = getattr(current, name) if current is not None else None
        masks[name] = previous.clone() if previous is not None else torch.ones_like(scores[name])
    removed = sum(float((masks[n] == 0).sum()) * costs[n] for n in masks)
    candidates = [
        (float(scores[name][index] / costs[name]), name, index)
        for name in masks
        for index in map(tuple, (masks[name] > 0).nonzero().tolist())
    ]
    candidates.sort()
    for _, name, index in candidates:
        # Skip a unit that would overshoot the budget by more than half its cost; a cheaper
        # unit further down the ranking may still fit, landing closer to the target.
        if removed + costs[name] / 2 > budget:
            continue
        masks[name][index] = 0
        removed += costs[name]
    if size_multiple > 1:
        previous = getattr(current, "ffn_neuron", None) if current is not None else None
        masks["ffn_neuron"] = _snap_ffn_widths(
            masks["ffn_neuron"], scores["ffn_neuron"], previous, size_multiple
        )
    return UnitMasks(head=masks["head"], ffn_neuron=masks["ffn_neuron"])


def _snap_ffn_widths(
    keep: torch.Tensor, scores: torch.Tensor, previous: torch.Tensor | None, multiple: int
) -> torch.Tensor:
    """Per layer, drop the weakest kept neurons or restore the strongest ones removed in
    this round (never one removed earlier) until the width is a multiple of ``multiple``."""
    keep = keep.clone()
    for layer in range(keep.shape[0]):
        row, dense = keep[layer], keep.shape[1]
        kept = int((row > 0).sum())
        down = kept // multiple * multiple
        up = min(down + multiple, dense)
        restorable = (row == 0) if previous is None else (row == 0) & (previous[layer] > 0)
        if up - kept <= kept - down and up - kept <= int(restorable.sum()):
            candidates = torch.where(restorable, scores[layer], float("-inf"))
            row[candidates.argsort(descending=True)[: up - kept]] = 1
        else:
            candidates = torch.where(row > 0, scores[layer], float("inf"))
            row[candidates.argsort()[: kept - down]] = 0
    return keep
