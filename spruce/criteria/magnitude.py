"""Weight-magnitude importance: the L1 norm of a unit's weights (no data needed)."""

from __future__ import annotations

import torch

from spruce.criteria.base import Importance


class WeightImportance(Importance):
    name = "weight"

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return weight.abs()
