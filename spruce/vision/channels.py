"""Channel importance for conv nets: which channels of a coupled group matter, not how to cut.

A *group* is torch-pruning's set of layers whose channels must go together (a conv, its
BatchNorm, the depthwise conv and the next layer's inputs; every branch of a residual
sum). A criterion maps a group to one score per channel of the group (higher = keep); the
pruner in :mod:`spruce.vision.pruner` decides how many to remove. Each criterion is one
small class, as for the transformer units in :mod:`spruce.criteria`:

* ``weight``: L1 norm of the channel's out-channel weights (and biases) in every conv or
  linear layer of the group;
* ``gradient``: L1 norm of the same weights' loss gradients, summed over a data loader;
* ``taylor``: |sum of w * dL/dw| over those weights (Molchanov et al. 2019);
* ``lrp``: layer-wise relevance propagation from the true-class logit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

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


def _to_root(group: tp.Group, item, values: torch.Tensor, out: torch.Tensor) -> None:
    """Add per-index ``values`` of one group member to ``out`` in the root's channel order."""
    out.scatter_add_(0, torch.as_tensor(item.root_idxs, dtype=torch.long), values.float().cpu())


class ChannelImportance(ABC):
    """Scores the channels of a torch-pruning group; ``prepare`` runs any data pass first."""

    name: str = ""
    needs_data: bool = False

    def prepare(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        *,
        device: torch.device | str = "cpu",
        max_batches: int | None = None,
    ) -> None:
        """Collect what ``__call__`` needs from data (nothing for data-free criteria)."""
        return None

    @abstractmethod
    def __call__(self, group: tp.Group) -> torch.Tensor:
        """One finite, non-negative score per channel of ``group``, in root order."""


class _WeightBased(ChannelImportance):
    """Sum of per-element scores over the out-channel weights a channel owns."""

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def reduce(self, summed: torch.Tensor) -> torch.Tensor:
        return summed

    def prepare(self, model, batches, *, device="cpu", max_batches=None) -> None:
        if self.needs_data:
            accumulate_cnn_gradients(model, batches, device=device, max_batches=max_batches)

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        total = torch.zeros(group_size(group))
        for item in group:
            if item.dep.handler not in WEIGHT_OUT_FNS:
                continue
            layer = item.dep.target.module
            idxs = torch.as_tensor(item.idxs, dtype=torch.long, device=layer.weight.device)
            for param in (layer.weight, layer.bias):
                if param is None:
                    continue
                if self.needs_data and param.grad is None:
                    raise ValueError(
                        f"criterion '{self.name}' needs gradients: call prepare(model, batches)"
                    )
                grad = param.grad[idxs] if param.grad is not None else None
                scores = self.element_scores(param[idxs], grad)
                _to_root(group, item, scores.reshape(len(idxs), -1).sum(dim=1), total)
        return self.reduce(total)


class ChannelWeightImportance(_WeightBased):
    name = "weight"

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        return weight.abs()


class ChannelGradientImportance(_WeightBased):
    name = "gradient"
    needs_data = True

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        assert grad is not None
        return grad.abs()


class ChannelTaylorImportance(_WeightBased):
    name = "taylor"
    needs_data = True

    def element_scores(self, weight: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        assert grad is not None
        return weight * grad

    def reduce(self, summed: torch.Tensor) -> torch.Tensor:
        return summed.abs()


class ChannelLRPImportance(ChannelImportance):
    """Relevance of each channel for the true-class logit (after Yeom et al. 2021).

    Implemented with the gradient x input identity: for networks of linear layers and
    piecewise-linear activations (ReLU, ReLU6) the LRP-0 relevance of an activation is
    ``a * df/da`` (Ancona et al. 2018). A channel's relevance is ``|sum over examples and
    positions of a * df/da|`` at the output of each layer that produces it, where f is the
    logit of the true class and BatchNorm is in eval mode. A group whose channel exists at
    several depths (before and after a depthwise conv; every branch of a residual sum) adds
    those relevances; a conv directly followed by its BatchNorm counts once, at the
    BatchNorm. Activations are copied, so in-place activations after a layer are safe.
    """

    name = "lrp"
    needs_data = True

    def __init__(self) -> None:
        self._relevance: dict[nn.Module, torch.Tensor] | None = None

    def prepare(self, model, batches, *, device="cpu", max_batches=None) -> None:
        relevance: dict[nn.Module, torch.Tensor] = {}

        def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            activation = output.detach().clone()

            def on_grad(grad: torch.Tensor) -> None:
                dims = [d for d in range(grad.dim()) if d != 1]
                value = (activation * grad).sum(dim=dims).cpu()
                relevance[module] = relevance.get(module, 0) + value

            output.register_hook(on_grad)

        layers = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
        hooks = [m.register_forward_hook(capture) for m in model.modules() if isinstance(m, layers)]
        was_training = model.training
        model.eval()
        try:
            for count, (images, labels) in enumerate(batches):
                if max_batches is not None and count >= max_batches:
                    break
                logits = model(images.to(device))
                target = logits.gather(1, labels.to(device).long().view(-1, 1)).sum()
                target.backward()
        finally:
            for hook in hooks:
                hook.remove()
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        self._relevance = relevance

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        if self._relevance is None:
            raise ValueError("criterion 'lrp' needs relevances: call prepare(model, batches)")
        producers = {item.dep.target.module for item in group if item.dep.handler in OUT_FNS}
        graph = group._DG
        total = torch.zeros(group_size(group))
        for item in group:
            module = item.dep.target.module
            if item.dep.handler not in OUT_FNS or module not in self._relevance:
                continue
            successors = graph.module2node[module].outputs if graph is not None else []
            if any(node.module in producers for node in successors):
                continue  # e.g. conv -> BatchNorm: counted at the BatchNorm's output
            values = self._relevance[module][torch.as_tensor(item.idxs, dtype=torch.long)]
            _to_root(group, item, values, total)
        return total.abs()


def accumulate_cnn_gradients(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    loss_fn: LossFn | None = None,
) -> int:
    """Sum task-loss gradients over ``batches`` into ``.grad``; returns the batch count.

    Eval mode, as for the transformer criteria: dropout and BatchNorm statistics must not
    make the scores depend on the draw or on the batch composition.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    count = 0
    for images, labels in batches:
        if max_batches is not None and count >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        if loss_fn is not None:
            loss = loss_fn(model, (images, labels))
        else:
            loss = F.cross_entropy(model(images), labels.long())
        loss.backward()
        count += 1
    model.train(was_training)
    return count


CHANNEL_CRITERIA: dict[str, type[ChannelImportance]] = {
    cls.name: cls
    for cls in (
        ChannelWeightImportance,
        ChannelGradientImportance,
        ChannelTaylorImportance,
        ChannelLRPImportance,
    )
}
