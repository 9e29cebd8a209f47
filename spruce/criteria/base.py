"""Importance of structural units, kept apart from the pruner that acts on it.

A criterion turns each weight (and, when it needs one, its accumulated gradient) into an
element score, then sums the scores over the weights a unit owns. The same criterion
scores both kinds of unit spruce prunes:

* a transformer encoder's units (``criterion(model)``): for head h of layer l the Q/K/V
  rows and output-projection columns of that head; for FFN neuron j the first
  projection's row and bias entry and the second projection's column;
* a CNN's coupled channel groups (``criterion.group_scores(group)``, a torch-pruning
  group): for each channel the out-channel weights and biases of every conv or linear
  layer of the group (:mod:`spruce.criteria.channels`).

Data passes run over dict batches (:meth:`Importance.prepare`). A new criterion is one
small subclass of :class:`Importance`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import PreTrainedModel

from spruce.models.structure import encoder_shape, layer_modules

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


class Importance(ABC):
    """Scores per unit: ``{"head": [L, H], "ffn_neuron": [L, F]}`` (higher = keep)."""

    name: str = ""
    needs_gradients: bool = False
    needs_relevance: bool = False

    @property
    def needs_data(self) -> bool:
        return self.needs_gradients or self.needs_relevance

    def prepare(
        self,
        model: torch.nn.Module,
        batches: Iterable[Batch],
        *,
        device: torch.device | str = "cpu",
        max_batches: int | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        """Collect what scoring needs from data: the loss gradients of a gradient
        criterion (``loss_fn``, else the model's own ``.loss``); nothing for the others."""
        if self.needs_gradients:
            accumulate_gradients(model, batches, device, max_batches, loss_fn)

    def group_scores(self, group: Any) -> torch.Tensor:
        """One score per channel of a torch-pruning ``group``, in its root's order."""
        from spruce.criteria.channels import weight_scores  # torch-pruning, for CNNs only

        return weight_scores(self, group)

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


def accumulate_gradients(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    loss_fn: LossFn | None = None,
) -> int:
    """Sum the gradients of the task loss over ``batches`` into ``.grad``; returns the count.

    Eval mode: dropout and BatchNorm statistics must not make the scores depend on the
    draw or on the batch composition.
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
