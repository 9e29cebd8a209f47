"""Scores of a CNN's coupled channel groups, for the criteria of :mod:`spruce.criteria`.

A *group* is torch-pruning's set of layers whose channels must go together (a conv, its
BatchNorm, the depthwise conv and the next layer's inputs; every branch of a residual
sum). A criterion gives one score per channel of the group (higher = keep), in the root
layer's channel order; the pruner decides how many to remove.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
import torch_pruning as tp
from torch import nn

Batch = dict[str, torch.Tensor]


class ElementScorer(Protocol):
    """What :func:`weight_scores` asks of a criterion (:class:`~spruce.criteria.Importance`)."""

    name: str
    needs_gradients: bool

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor: ...

    def reduce(self, summed: torch.Tensor) -> torch.Tensor: ...


WEIGHT_OUT_FNS = (
    tp.prune_conv_out_channels,
    tp.prune_linear_out_channels,
    tp.prune_depthwise_conv_out_channels,
)
"""Handlers that remove a layer's *output* channels together with their weights."""
OUT_FNS = (*WEIGHT_OUT_FNS, tp.prune_batchnorm_out_channels)
"""Handlers whose layer produces the group's channels (what masking zeroes)."""


def group_size(group: tp.Group) -> int:
    """Channels in ``group`` (the root layer's output channels)."""
    return len(group[0].idxs)


def _to_root(item, values: torch.Tensor, out: torch.Tensor) -> None:
    """Add per-index ``values`` of one group member to ``out`` in the root's channel order."""
    out.scatter_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long), values.float().cpu())


@torch.no_grad()
def weight_scores(criterion: ElementScorer, group: tp.Group) -> torch.Tensor:
    """``criterion``'s element scores summed over the out-channel weights (and biases)
    each channel owns in every conv or linear layer of ``group``."""
    total = torch.zeros(group_size(group))
    for item in group:
        if item.dep.handler not in WEIGHT_OUT_FNS:
            continue
        layer = item.dep.target.module
        idxs = torch.as_tensor(item.idxs, dtype=torch.long, device=layer.weight.device)
        for param in (layer.weight, layer.bias):
            if param is None:
                continue
            if criterion.needs_gradients and param.grad is None:
                raise ValueError(
                    f"criterion '{criterion.name}' needs gradients: call prepare(model, batches)"
                )
            grad = param.grad[idxs] if param.grad is not None else None
            scores = criterion.element_scores(param[idxs], grad)
            _to_root(item, scores.reshape(len(idxs), -1).sum(dim=1), total)
    return criterion.reduce(total)


class ChannelRelevance:
    """Relevance of each channel for the true-class logit (after Yeom et al. 2021).

    Implemented with the gradient x input identity: for networks of linear layers and
    piecewise-linear activations (ReLU, ReLU6) the LRP-0 relevance of an activation is
    ``a * df/da`` (Ancona et al. 2018). A channel's relevance is ``|sum over examples and
    positions of a * df/da|`` at the output of each layer that produces it, where f is the
    logit of the true class and BatchNorm is in eval mode. A group whose channel exists at
    several depths (before and after a depthwise conv; every branch of a residual sum) adds
    those relevances; a conv directly followed by its BatchNorm counts once, at the
    BatchNorm. Activations are copied, so in-place activations after a layer are safe.
    Batches hold ``images`` and ``labels``.
    """

    def __init__(self) -> None:
        self.relevance: dict[nn.Module, torch.Tensor] = {}

    def accumulate(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        device: torch.device | str = "cpu",
        max_batches: int | None = None,
    ) -> None:
        layers = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
        hooks = [
            m.register_forward_hook(self._capture) for m in model.modules() if isinstance(m, layers)
        ]
        was_training = model.training
        model.eval()
        try:
            for count, batch in enumerate(batches):
                if max_batches is not None and count >= max_batches:
                    break
                logits = model(batch["images"].to(device))
                labels = batch["labels"].to(device).long().view(-1, 1)
                logits.gather(1, labels).sum().backward()
        finally:
            for hook in hooks:
                hook.remove()
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not output.requires_grad:
            return
        activation = output.detach().clone()

        def on_grad(grad: torch.Tensor) -> None:
            dims = [d for d in range(grad.dim()) if d != 1]
            value = (activation * grad).sum(dim=dims).cpu()
            self.relevance[module] = self.relevance.get(module, 0) + value

        output.register_hook(on_grad)

    @torch.no_grad()
    def group_scores(self, group: tp.Group) -> torch.Tensor:
        producers = {item.dep.target.module for item in group if item.dep.handler in OUT_FNS}
        graph = group._DG
        total = torch.zeros(group_size(group))
        for item in group:
            module = item.dep.target.module
            if item.dep.handler not in OUT_FNS or module not in self.relevance:
                continue
            successors = graph.module2node[module].outputs if graph is not None else []
            if any(node.module in producers for node in successors):
                continue  # e.g. conv -> BatchNorm: counted at the BatchNorm's output
            values = self.relevance[module][torch.as_tensor(item.idxs, dtype=torch.long)]
            _to_root(item, values, total)
        return total.abs()
