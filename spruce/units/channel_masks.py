"""Channel pruning of a shared, adapted CNN: masks while training, physical removal at the end.

Why masks: with Structured Pruning Adapters (METHODS.md section 3) every task shares one
frozen base, so a task cannot shrink the base's tensors while it trains. The pruning plan
is decided on a *plain merged copy* (:func:`merged_copy`: adapters folded into ordinary
convolutions, because torch-pruning traces plain layers and the scores must see the
task's own weights W + delta), recorded by module name as a :class:`ChannelPlan`, and then
either

* **masked** on the live adapted model (:func:`apply_channel_plan`): an adapter layer gets
  the plan's output channels in its ``out_mask`` and input channels in its ``in_mask``;
  any other member (BatchNorm, a plain conv or linear layer) gets a forward hook zeroing
  the removed output channels, and a consumer of removed channels a forward pre-hook
  zeroing those inputs; or
* **removed** from a fresh merged copy by torch-pruning (:func:`fuse_pruned`), giving the
  compact plain CNN plus the pruning history that
  :func:`~spruce.units.channel_groups.replay_pruning` needs to rebuild it.

In eval mode both compute the same function (the tests hold them to 1e-4), as long as the
activations map 0 to 0 (ReLU, ReLU6, SiLU), which is what
:func:`~spruce.units.channel_groups.mask_channels` assumes too. Plans live in the *dense*
channel numbering, so progressive rounds extend one plan instead of renumbering channels
after every physical removal.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from spruce.adapters import SPAdapterLayer, find_adapters
from spruce.criteria import Importance
from spruce.errors import SpruceError
from spruce.units.channel_groups import (
    Batch,
    Plan,
    _ParameterCounter,
    apply_plan,
    build_graph,
    channel_groups,
    image_batches,
    image_loss,
    mask_channels,
    plan_pruning,
    prunable_parameter_count,
    removal_group,
)

_OUT = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_batchnorm_out_channels)
_BOTH = (tp.prune_depthwise_conv_out_channels,)  # a depthwise conv loses inputs with outputs
_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_MASKABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


# ----- hooks that a copy can recognise and drop -------------------------------------------
class _Plumbing:
    """Base of the hooks this module registers, so :func:`merged_copy` can strip them."""


class _ZeroOutputs(_Plumbing):
    def __init__(self, keep: Tensor) -> None:
        self.keep = keep

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output * _channel_view(self.keep, output)


class _ZeroInputs(_Plumbing):
    def __init__(self, keep: Tensor) -> None:
        self.keep = keep

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * _channel_view(self.keep, args[0]), *args[1:])


def _channel_view(keep: Tensor, like: Tensor) -> Tensor:
    return keep.to(like.device, like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def _drop_plumbing(model: nn.Module) -> None:
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(hook, _Plumbing)]:
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
                module._forward_pre_hooks_with_kwargs.pop(key, None)


# ----- the merged copy ----------------------------------------------------------------------
def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every adapter folded into a plain layer, no masks, all weights
    trainable, in eval mode.

    Each adapter becomes its own base layer class (so e.g. TensorFlow-padded convs keep
    their padding) holding W + delta and the task's bias -- a bias is added even where the
    base layer had none, because the adapter's per-task bias must survive. Masks are not
    copied: they belong to the plan, which is applied separately.
    """
    result = copy.deepcopy(model)
    for name, layer in find_adapters(result).items():
        plain = layer.base_layer
        with torch.no_grad():
            plain.weight = nn.Parameter(layer.adapted_weight().detach().clone())
            plain.bias = nn.Parameter(layer.bias.detach().clone())
        parent, _, child = name.rpartition(".")
        setattr(result.get_submodule(parent), child, plain)
    _drop_plumbing(result)
    result.requires_grad_(True)
    result.zero_grad(set_to_none=True)
    return result.eval()


# ----- the plan by module name ------------------------------------------------------------
@dataclass
class GroupPlan:
    """One coupled group: its root layer, the removed channels (root numbering) and, per
    member layer, which side loses which channels (``out``, ``in`` or ``both``)."""

    root: str
    remove: list[int]
    members: list[tuple[str, str, list[int]]] = field(default_factory=list)


@dataclass
class ChannelPlan:
    """Removed channels of every group, by module name: JSON-able and model-independent."""

    groups: list[GroupPlan] = field(default_factory=list)

    @property
    def channels_removed(self) -> int:
        return sum(len(g.remove) for g in self.groups)

    def removed(self, root: str) -> list[int]:
        return next((g.remove for g in self.groups if g.root == root), [])

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"root": g.root, "remove": g.remove, "members": [list(m) for m in g.members]}
            for g in self.groups
        ]

    @classmethod
    def from_json(cls, data: Any) -> ChannelPlan:
        try:
            return cls(
                [
                    GroupPlan(
                        str(g["root"]),
                        [int(i) for i in g["remove"]],
                        [(str(n), str(s), [int(i) for i in idx]) for n, s, idx in g["members"]],
                    )
                    for g in data
                ]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise SpruceError(
                f"the channel plan is malformed ({type(error).__name__}: {error})",
                "use a task.json written by spruce.pipelines.adapt_image",
            ) from None

    @classmethod
    def from_tp(cls, model: nn.Module, plan: Plan) -> ChannelPlan:
        """Name every member of a torch-pruning plan made on ``model``."""
        names = {module: name for name, module in model.named_modules()}
        groups = []
        for group, remove in plan:
            if not remove:
                continue
            members = []
            for item in removal_group(group, sorted(remove)):
                module, handler = item.dep.target.module, item.dep.handler
                side = "out" if handler in _OUT else "both" if handler in _BOTH else None
                side = "in" if handler in _IN else side
                if module not in names:  # torch-pruning's own op nodes (add, pad, flatten)
                    continue
                if side is None or not isinstance(module, _MASKABLE):
                    raise SpruceError(
                        f"cannot mask channels of '{names[module]}' ({type(module).__name__})",
                        "channel masks support convolutions, linear layers and BatchNorm",
                    )
                members.append((names[module], side, sorted(int(i) for i in item.idxs)))
            groups.append(GroupPlan(names[group[0].dep.target.module], sorted(remove), members))
        return cls(groups)

    def to_tp(self, groups: dict[str, tp.Group]) -> Plan:
        """The torch-pruning plan on the graph whose groups (by root name) are ``groups``."""
        plan = []
        for g in self.groups:
            if g.root not in groups:
                raise SpruceError(
                    f"the channel plan prunes a group rooted at '{g.root}', which this model "
                    "does not have",
                    "apply a plan to the same architecture it was made for",
                )
            plan.append((groups[g.root], list(g.remove)))
        return plan


def named_groups(
    model: nn.Module, example: Tensor, ignored: Sequence[nn.Module]
) -> tuple[tp.DependencyGraph, dict[str, tp.Group]]:
    """The dependency graph of a plain model and its prunable groups by root module name."""
    with torch.enable_grad():  # torch-pruning traces through autograd
        graph = build_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    groups = {names[g[0].dep.target.module]: g for g in channel_groups(graph, ignored)}
    return graph, groups


# ----- masks on the live model ------------------------------------------------------------
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, ChannelMasks] = weakref.WeakKeyDictionary()


class ChannelMasks:
    """The plan's masks on one model: adapter masks plus hooks; :meth:`remove` undoes them."""

    def __init__(self, model: nn.Module, plan: ChannelPlan) -> None:
        self.model, self.plan = model, plan
        self.handles: list = []
        removed: dict[tuple[str, str], set[int]] = {}
        for group in plan.groups:
            for name, side, idxs in group.members:
                for part in ("out", "in") if side == "both" else (side,):
                    removed.setdefault((name, part), set()).update(idxs)
        self.removed = removed
        try:
            for name in dict.fromkeys(name for name, _ in removed):
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    raise SpruceError(
                        f"the channel plan names '{name}', which the model does not have",
                        "apply a plan to the same architecture it was made for",
                    ) from None
                self._mask(name, module)
        except SpruceError:
            self.remove()  # no stray hooks of a plan that does not fit (a bank goes on)
            raise

    def _keep(self, name: str, side: str, size: int) -> Tensor | None:
        if (name, side) not in self.removed:
            return None
        keep = torch.ones(size)
        keep[sorted(self.removed[(name, side)])] = 0.0
        return keep

    def _mask(self, name: str, module: nn.Module) -> None:
        if isinstance(module, SPAdapterLayer):
            module.set_masks(
                self._keep(name, "in", module.in_features),
                self._keep(name, "out", module.out_features),
            )
            return
        if not isinstance(module, _MASKABLE):
            raise SpruceError(f"cannot mask channels of '{name}' ({type(module).__name__})")
        size_out = getattr(module, "out_channels", getattr(module, "out_features", None))
        out = self._keep(name, "out", size_out or module.num_features)
        if out is not None:
            self.handles.append(module.register_forward_hook(_ZeroOutputs(out)))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return  # a BatchNorm's channels are its outputs: zeroing them is enough
        size_in = getattr(module, "in_channels", getattr(module, "in_features", 0))
        inp = self._keep(name, "in", size_in)
        if inp is not None:
            self.handles.append(module.register_forward_pre_hook(_ZeroInputs(inp)))

    def input_keep(self, name: str, size: int) -> Tensor:
        """Boolean keep-vector of the inputs of layer ``name`` (all true if unmasked)."""
        keep = self._keep(name, "in", size)
        return torch.ones(size, dtype=torch.bool) if keep is None else keep > 0.5

    def output_keep(self, name: str, size: int) -> Tensor:
        """Boolean keep-vector of the outputs of layer ``name`` (all true if unmasked)."""
        keep = self._keep(name, "out", size)
        return torch.ones(size, dtype=torch.bool) if keep is None else keep > 0.5

    def remove(self) -> None:
        """Drop the hooks and reset every adapter's masks to ones."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for layer in find_adapters(self.model).values():
            layer.set_masks(torch.ones(layer.in_features), torch.ones(layer.out_features))
        if _ACTIVE.get(self.model) is self:
            del _ACTIVE[self.model]


def apply_channel_plan(model: nn.Module, plan: ChannelPlan) -> ChannelMasks:
    """Mask ``plan`` on ``model`` in place, replacing the masks a previous call set."""
    clear_channel_masks(model)
    masks = ChannelMasks(model, plan)
    _ACTIVE[model] = masks
    return masks


def clear_channel_masks(model: nn.Module) -> None:
    """Undo :func:`apply_channel_plan` (no-op if nothing is masked)."""
    previous = _ACTIVE.get(model)
    if previous is not None:
        previous.remove()


def active_masks(model: nn.Module) -> ChannelMasks | None:
    """The masks :func:`apply_channel_plan` last put on ``model``."""
    return _ACTIVE.get(model)


# ----- scoring rounds and physical removal ------------------------------------------------
@dataclass
class PlanStep:
    """A plan after one scoring round and the prunable parameters it leaves of the base's."""

    plan: ChannelPlan
    parameters: int
    base_parameters: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.parameters / self.base_parameters


def extend_plan(
    model: nn.Module,
    plan: ChannelPlan,
    batches: Iterable[Batch],
    criterion: Importance,
    target_sparsity: float,
    example: Tensor,
    ignored: Sequence[str],
    *,
    max_batches: int | None = None,
) -> PlanStep:
    """Score the channels of ``model``'s merged copy with ``plan`` masked, then remove the
    lowest-scoring ones until ``target_sparsity`` of the prunable parameters are gone.

    Channels ``plan`` already removes stay removed (scored below every other channel, and
    unioned in), so a progressive schedule only ever grows the plan. ``ignored`` names
    layers whose outputs must stay (the classifier).
    """
    plain = merged_copy(model)
    ignored_layers = [plain.get_submodule(name) for name in ignored]
    _, groups = named_groups(plain, example, ignored_layers)
    base = prunable_parameter_count(plain, ignored_layers)
    with mask_channels(plan.to_tp(groups)):
        if criterion.needs_data:
            criterion.prepare(
                plain, image_batches(batches), max_batches=max_batches, loss_fn=image_loss
            )
        scores = []
        for root, group in groups.items():
            score = criterion.group_scores(group).clone().double()
            score[plan.removed(root)] = -1.0  # criteria are non-negative: these go first
            scores.append(score)
    plain.zero_grad(set_to_none=True)
    target = round(base * (1.0 - target_sparsity))
    chosen = plan_pruning(list(groups.values()), scores, target, ignored_layers)
    union = [
        (group, sorted(set(remove) | set(plan.removed(root))))
        for (root, group), (_, remove) in zip(groups.items(), chosen, strict=True)
    ]
    counter = _ParameterCounter(list(groups.values()), ignored_layers)
    left = counter.count([torch.as_tensor(remove, dtype=torch.long) for _, remove in union])
    return PlanStep(ChannelPlan.from_tp(plain, union), left, base)


def fuse_pruned(
    model: nn.Module, plan: ChannelPlan, example: Tensor, ignored: Sequence[str]
) -> tuple[nn.Module, list[list]]:
    """The compact plain CNN: merged copy of ``model`` with ``plan`` removed physically.

    Returns it with torch-pruning's history (one round), which
    :func:`~spruce.units.channel_groups.replay_pruning` replays on a fresh dense model of
    the same kind.
    """
    compact = merged_copy(model)
    graph, groups = named_groups(compact, example, [compact.get_submodule(n) for n in ignored])
    removed = apply_plan(plan.to_tp(groups))
    if removed != plan.channels_removed:
        raise SpruceError(
            f"torch-pruning removed {removed} of the plan's {plan.channels_removed} channels",
            "a plan must leave every group at least one channel",
        )
    return compact, [copy.deepcopy(graph.pruning_history())]


class ChannelUnits:
    """The coupled channel groups of a live (adapted) CNN, scored on ``batches`` (at most
    ``max_batches``) on its merged copy; ``example`` traces the graph, ``ignored`` names
    the layers whose outputs stay (the classifier). Selections are :class:`PlanStep`."""

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        example: Tensor,
        ignored: Sequence[str],
        max_batches: int | None = None,
    ) -> None:
        self.model, self.batches, self.example = model, batches, example
        self.ignored, self.max_batches = list(ignored), max_batches

    def choose(
        self, criterion: Importance, target_sparsity: float, current: PlanStep | None
    ) -> PlanStep:
        plan = current.plan if current is not None else ChannelPlan()
        return extend_plan(
            self.model, plan, self.batches, criterion, target_sparsity, self.example,
            self.ignored, max_batches=self.max_batches,
        )  # fmt: skip

    def encode(self, selection: PlanStep) -> dict[str, Any]:
        return {
            "plan": selection.plan.to_json(),
            "parameters": selection.parameters,
            "base_parameters": selection.base_parameters,
        }

    def decode(self, stored: dict[str, Any]) -> PlanStep:
        plan = ChannelPlan.from_json(stored["plan"])
        return PlanStep(plan, stored["parameters"], stored["base_parameters"])

    @contextlib.contextmanager
    def masked(self, selection: PlanStep) -> Iterator[None]:
        # The plan stays on the live model after the block: the next round scores, and
        # the final phase trains, under it (apply_channel_plan replaces earlier masks).
        apply_channel_plan(self.model, selection.plan)
        yield

    def record_key(self, round_index: int) -> str:
        return f"round {round_index} plan"
