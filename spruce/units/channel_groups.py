"""A CNN's prunable units: torch-pruning's coupled channel groups and their parameter cost.

torch-pruning's dependency graph finds the coupled channel groups (residual sums,
depthwise convs, BatchNorm, concatenations) and performs the physical removal; this
module counts what a removal leaves and plans how many channels to remove so that the
*parameters* of the prunable conv/linear layers shrink to a requested fraction. The
criteria (:mod:`spruce.criteria`, the same classes that score transformer units) score
the groups; the pruners (:mod:`spruce.pruning.cnn`, :mod:`spruce.units.channel_masks`)
decide when.

Sparsity counts the weights and biases of every ``Conv*d``/``Linear`` layer outside
``ignored_layers`` (BatchNorm and the ignored classifier are not counted). Channels come
in whole units, so the achieved sparsity is the closest reachable value, reported per
round; it differs from the target by at most about the cost of one channel per group.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from spruce.criteria.channels import OUT_FNS, WEIGHT_OUT_FNS, group_size

Batch = tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]
"""``(images, labels)``, or a dict of ``images`` and ``labels`` (what criteria read)."""

Plan = list[tuple[tp.Group, list[int]]]
"""Per group, the root-order indices of the channels to remove."""

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def image_batches(batches: Iterable[Batch]) -> Iterator[dict[str, torch.Tensor]]:
    """Batches as the criteria read them: dicts of ``images`` and ``labels``."""
    for batch in batches:
        yield batch if isinstance(batch, dict) else {"images": batch[0], "labels": batch[1]}


def image_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The classification loss gradient criteria differentiate."""
    return F.cross_entropy(model(batch["images"]), batch["labels"].long())


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (traced once; training mode kept)."""
    was_training = model.training
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)


def channel_groups(
    graph: tp.DependencyGraph, ignored_layers: Sequence[nn.Module] = ()
) -> list[tp.Group]:
    """Every prunable coupled group with more than one channel (full indices, root order)."""
    groups = graph.get_all_groups(ignored_layers=list(ignored_layers), root_module_types=_LAYERS)
    return [g for g in groups if group_size(g) > 1]


def prunable_parameter_count(model: nn.Module, ignored_layers: Sequence[nn.Module] = ()) -> int:
    """Weights and biases of the conv/linear layers that are not ignored."""
    ignored = {id(m) for m in ignored_layers}
    return sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, _LAYERS) and id(m) not in ignored
        for p in m.parameters(recurse=False)
    )


def plan_pruning(
    groups: Sequence[tp.Group],
    scores: Sequence[torch.Tensor],
    target_parameters: int,
    ignored_layers: Sequence[nn.Module] = (),
    global_ranking: bool = False,
) -> Plan:
    """Lowest-scoring channels whose removal leaves about ``target_parameters``.

    Local ranking (default) removes the same fraction q of every group, so no layer is
    emptied; global ranking compares scores normalised by their group mean across groups.
    Either way every group keeps its best channel. q is found by bisection on the exact
    parameter count the removal would leave, computed from the layer shapes.
    """
    if not groups:
        return []
    counter = _ParameterCounter(groups, ignored_layers)
    orders = [torch.argsort(s.double(), stable=True) for s in scores]
    normalised = [s.double() / (s.double().mean() + 1e-12) for s in scores]

    def select(q: float) -> list[torch.Tensor]:
        if not global_ranking:
            return [o[: min(int(q * len(o)), len(o) - 1)] for o in orders]
        candidates = torch.cat([n[o[:-1]] for n, o in zip(normalised, orders, strict=True)])
        k = min(int(q * sum(len(o) for o in orders)), len(candidates))
        threshold = candidates.sort().values[k - 1] if k > 0 else -torch.inf
        return [o[:-1][n[o[:-1]] <= threshold] for n, o in zip(normalised, orders, strict=True)]

    low, high = 0.0, 1.0
    if counter.count(select(high)) > target_parameters:
        warnings.warn(
            f"cannot reach {target_parameters} prunable parameters by channel removal; "
            "removing all but one channel per group",
            stacklevel=2,
        )
        low = high
    for _ in range(40):
        middle = (low + high) / 2
        if counter.count(select(middle)) > target_parameters:
            low = middle
        else:
            high = middle
    best = min((select(low), select(high)), key=lambda s: abs(counter.count(s) - target_parameters))
    return [(g, sorted(r.tolist())) for g, r in zip(groups, best, strict=True)]


def removal_group(group: tp.Group, remove: Sequence[int]) -> tp.Group:
    """The group restricted to ``remove`` (root-order indices), mapped onto every member."""
    root = group[0].dep
    return group._DG.get_pruning_group(root.target.module, root.handler, list(remove))


@contextlib.contextmanager
def mask_channels(plan: Plan) -> Iterator[None]:
    """Zero the planned channels at every layer that produces them, without removing any.

    With activations that map 0 to 0 (ReLU, ReLU6, SiLU; not sigmoid gates), this is the
    forward pass of the physically pruned network: the test of :func:`apply_plan`.
    """
    hooks = []
    try:
        for group, remove in plan:
            if not remove:
                continue
            for item in removal_group(group, remove):
                if item.dep.handler not in OUT_FNS:
                    continue
                module = item.dep.target.module
                keep = torch.ones(_out_channels(module))
                keep[torch.as_tensor(item.idxs, dtype=torch.long)] = 0.0

                def hook(m: nn.Module, args: tuple, out: torch.Tensor, keep=keep) -> torch.Tensor:
                    shape = (1, -1, *([1] * (out.dim() - 2)))
                    return out * keep.to(out.device, out.dtype).view(shape)

                hooks.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in hooks:
            handle.remove()


def apply_plan(plan: Plan) -> int:
    """Remove the planned channels physically; returns how many channels were removed."""
    removed = 0
    for group, remove in plan:
        if remove:
            pruning = removal_group(group, remove)
            if group._DG.check_pruning_group(pruning):
                pruning.prune()
                removed += len(remove)
    return removed


def replay_pruning(
    model: nn.Module, example_inputs: torch.Tensor, history: Sequence[list]
) -> nn.Module:
    """Give a fresh dense ``model`` the pruned shapes recorded in ``CNNPruneResult.history``,
    so that a pruned state dict can be loaded into it (one graph per recorded round)."""
    for round_history in history:
        build_graph(model, example_inputs).load_pruning_history(copy.deepcopy(round_history))
    return model


def _out_channels(module: nn.Module) -> int:
    for attribute in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attribute):
            return int(getattr(module, attribute))
    raise TypeError(f"cannot tell the output channels of {type(module).__name__}")


class _ParameterCounter:
    """Prunable parameters left after removing given channels, from layer shapes alone."""

    def __init__(self, groups: Sequence[tp.Group], ignored_layers: Sequence[nn.Module]) -> None:
        ignored = {id(m) for m in ignored_layers}
        self.layers: dict[int, nn.Module] = {}
        self.members: list[list[tuple[int, str, torch.Tensor]]] = []
        for group in groups:
            members = []
            for item in group:
                module = item.dep.target.module
                if not isinstance(module, _LAYERS) or id(module) in ignored:
                    continue
                if item.dep.handler in WEIGHT_OUT_FNS:
                    side = "out"
                elif item.dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                    side = "in"
                else:
                    continue
                self.layers[id(module)] = module
                members.append((id(module), side, torch.as_tensor(item.root_idxs)))
            self.members.append(members)
        # Layers that no group touches (e.g. a one-channel output) still count, unchanged.
        total = prunable_parameter_count(groups[0]._DG.model, ignored_layers)
        self.untouched = total - sum(_kept(m, 0, 0) for m in self.layers.values())

    def count(self, removals: Sequence[torch.Tensor]) -> int:
        removed: dict[tuple[int, str], int] = {}
        for members, remove in zip(self.members, removals, strict=True):
            if len(remove) == 0:
                continue
            for key, side, root_idxs in members:
                hit = int(torch.isin(root_idxs, remove).sum())
                removed[(key, side)] = removed.get((key, side), 0) + hit
        total = 0
        for key, module in self.layers.items():
            total += _kept(module, removed.get((key, "out"), 0), removed.get((key, "in"), 0))
        return total + self.untouched


def _kept(module: nn.Module, out_removed: int, in_removed: int) -> int:
    bias = 1 if getattr(module, "bias", None) is not None else 0
    if isinstance(module, nn.Linear):
        out, inp = module.out_features - out_removed, module.in_features - in_removed
        return out * inp + bias * out
    out = module.out_channels - out_removed
    kernel = module.weight[0, 0].numel()
    if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
        return out * kernel + bias * out  # depthwise: one filter per channel
    return out * ((module.in_channels - in_removed) // module.groups) * kernel + bias * out
