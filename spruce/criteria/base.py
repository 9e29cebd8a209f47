"""Importance of structural units, kept apart from the pruner that acts on it.

A criterion turns each weight (and, when it needs one, its accumulated gradient) into an
element score, then sums the scores over the weights a unit owns: for head h of layer l
the Q/K/V rows and output-projection columns of that head; for FFN neuron j the first
projection's row and bias entry and the second projection's column. A new criterion is
one small subclass of :class:`Importance`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from transformers import PreTrainedModel

from spruce.models.structure import encoder_shape, layer_modules


class Importance(ABC):
    """Scores per unit: ``{"head": [L, H], "ffn_neuron": [L, F]}`` (higher = keep)."""

    name: str = ""
    needs_gradients: bool = False

    @abstractmethod
    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Per-element contribution, summed over a unit's weights by :meth:`__call__`."""

    def reduce(self, summed: torch.Tensor) -> torch.Tensor:
        """Applied to the per-unit sums (Taylor takes the absolute value of the sum)."""
        return summed

    @torch.no_grad()
    def __call__(self, model: PreTrainedModel) -> dict[str, torch.Tensor]:
        shape = encoder_shape(model.config)
        d = shape.head_size
        heads, neurons = [], []
        for layer in layer_modules(model):
            h = layer.query.out_features // d

            def score(module: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
                if self.needs_gradients and module.weight.grad is None:
                    raise ValueError(f"criterion '{self.name}' needs accumulated gradients")
                weight = self.element_scores(module.weight, module.weight.grad)
                bias = None
                if module.bias is not None:
                    bias = self.element_scores(module.bias, module.bias.grad)
                return weight, bias

            head_sum = torch.zeros(h)
            for projection in (layer.query, layer.key, layer.value):
                weight, bias = score(projection)
                head_sum += weight.reshape(h, d, -1).sum(dim=(1, 2)).cpu()
                if bias is not None:
                    head_sum += bias.reshape(h, d).sum(dim=1).cpu()
            weight, _ = score(layer.attention_output)
            head_sum += weight.reshape(weight.shape[0], h, d).sum(dim=(0, 2)).cpu()
            heads.append(self.reduce(head_sum))

            weight, bias = score(layer.ffn_input)
            neuron_sum = weight.sum(dim=1).cpu()
            if bias is not None:
                neuron_sum += bias.cpu()
            weight, _ = score(layer.ffn_output)
            neuron_sum += weight.sum(dim=0).cpu()
            neurons.append(self.reduce(neuron_sum))
        return {"head": _stack(heads), "ffn_neuron": _stack(neurons)}


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max((row.numel() for row in rows), default=0)
    out = torch.full((len(rows), width), float("-inf"))
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out
