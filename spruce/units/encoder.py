"""A transformer encoder's prunable units (heads, FFN neurons) for score-based pruning.

:func:`select_units` turns unit importances into binary masks that meet an
encoder-sparsity target (the one-shot and iterative baselines, ``--method
magnitude|taylor``, and PDP's final structure). Units are ranked globally by importance
per parameter, because a head owns ``4 * D * d`` weights and an FFN neuron ``2 * D``:
comparing raw sums would always remove neurons first. :class:`EncoderUnits` is the
:class:`~spruce.units.base.Units` of an encoder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from transformers import PreTrainedModel

from spruce.compact import apply_masks
from spruce.criteria import Importance
from spruce.criteria.base import Batch, LossFn
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models.structure import EncoderShape, encoder_shape

GRADIENT_BATCHES = 32  # enough batches for stable Taylor scores on a few thousand examples
ScoringContext = Callable[[PreTrainedModel], contextlib.AbstractContextManager]


class EncoderUnits:
    """Heads and FFN neurons of ``model``, scored on ``batches`` (at most
    ``GRADIENT_BATCHES``) with ``loss_fn``; ``scoring_context(model)`` wraps each scoring
    pass (entered before the masks), e.g. to let criteria see adapted weights instead of
    adapters. Selections are :class:`UnitMasks`."""

    def __init__(
        self,
        model: PreTrainedModel,
        batches: Iterable[Batch],
        device: torch.device,
        loss_fn: LossFn,
        *,
        size_multiple: int = 1,
        scoring_context: ScoringContext | None = None,
    ) -> None:
        self.model, self.batches, self.device, self.loss_fn = model, batches, device, loss_fn
        self.shape = encoder_shape(model.config)
        self.size_multiple = size_multiple
        self.scoring_context = scoring_context

    def choose(
        self, criterion: Importance, target_sparsity: float, current: UnitMasks | None
    ) -> UnitMasks:
        view = self.scoring_context(self.model) if self.scoring_context else None
        with contextlib.ExitStack() as stack:
            stack.enter_context(view or contextlib.nullcontext())  # before the mask hooks
            if current is not None:
                stack.enter_context(apply_masks(self.model, current))
            criterion.prepare(
                self.model,
                self.batches,
                device=self.device,
                max_batches=GRADIENT_BATCHES,
                loss_fn=self.loss_fn,
            )
            scores = criterion(self.model)
            self.model.zero_grad(set_to_none=True)
        return select_units(
            scores, self.shape, target_sparsity, current=current, size_multiple=self.size_multiple
        )

    def encode(self, selection: UnitMasks) -> dict[str, torch.Tensor]:
        return dict(selection.items())

    def decode(self, stored: dict[str, torch.Tensor]) -> UnitMasks:
        return UnitMasks(**stored)

    def masked(self, selection: UnitMasks) -> contextlib.AbstractContextManager[None]:
        return apply_masks(self.model, selection)

    def record_key(self, round_index: int) -> str:
        return f"prune round {round_index} masks"


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
