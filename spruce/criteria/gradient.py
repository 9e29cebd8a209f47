"""Gradient-based importances, computed from gradients accumulated over a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from transformers import PreTrainedModel

from spruce.criteria.base import Importance


class GradientImportance(Importance):
    """Sum of |dL/dw| over a unit's weights."""

    name = "gradient"
    needs_gradients = True

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        assert grad is not None
        return grad.abs()


class TaylorImportance(Importance):
    """First-order Taylor estimate of the loss change when the unit is removed:
    |sum over the unit of w * dL/dw| (Molchanov et al. 2019)."""

    name = "taylor"
    needs_gradients = True

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        assert grad is not None
        return weight * grad

    def reduce(self, summed: torch.Tensor) -> torch.Tensor:
        return summed.abs()


def accumulate_gradients(
    model: PreTrainedModel,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    loss_fn: Callable[[PreTrainedModel, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> int:
    """Sum the gradients of the task loss over ``batches`` into ``.grad``; returns the count.

    Dropout is off (eval mode) so that the scores do not depend on the dropout draw.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    count = 0
    for batch in batches:
        if max_batches is not None and count >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
        loss.backward()
        count += 1
    model.train(was_training)
    return count
