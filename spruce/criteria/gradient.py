"""Gradient-based importances, computed from gradients accumulated over a data loader."""

from __future__ import annotations

import torch

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
