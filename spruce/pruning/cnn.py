"""Progressive channel pruning of a plain CNN: score -> remove a fraction -> fine-tune -> repeat.

The channel groups, their parameter cost and the physical removal are the CNN units of
:mod:`spruce.units.channel_groups`; the scores come from :mod:`spruce.criteria`. This
module is the schedule.

Sparsity counts the weights and biases of every ``Conv*d``/``Linear`` layer outside
``ignored_layers`` (BatchNorm and the ignored classifier are not counted). Channels come
in whole units, so the achieved sparsity is the closest reachable value, reported per
round; it differs from the target by at most about the cost of one channel per group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spruce.criteria import CRITERIA, Importance
from spruce.errors import SpruceError
from spruce.units.channel_groups import (
    Batch,
    apply_plan,
    build_graph,
    channel_groups,
    image_batches,
    image_loss,
    plan_pruning,
    prunable_parameter_count,
)
from spruce.vision.models import classifier_of


@dataclass
class RoundReport:
    round: int
    target_sparsity: float
    sparsity: float
    parameters: int
    channels_removed: int


@dataclass
class CNNPruneResult:
    """What :func:`prune_cnn` did; ``history`` rebuilds the shapes (:func:`replay_pruning`)."""

    base_parameters: int
    parameters: int
    sparsity: float
    rounds: list[RoundReport] = field(default_factory=list)
    history: list[list] = field(default_factory=list)


def prune_cnn(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: str | Importance,
    target_sparsity: float,
    rounds: int = 1,
    finetune_fn: Callable[[nn.Module], object] | None = None,
    ignored_layers: Sequence[nn.Module] | None = None,
    *,
    max_batches: int | None = None,
    global_ranking: bool = False,
    device: torch.device | str | None = None,
) -> CNNPruneResult:
    """Prune ``model`` in place over ``rounds`` rounds to ``target_sparsity`` of parameters.

    Round r scores every group on the current model (data criteria run over at most
    ``max_batches`` of ``loader``), removes channels until ``target * r / rounds`` of the
    original prunable parameters are gone, then calls ``finetune_fn(model)`` unless it was
    the last round (the caller fine-tunes the final model). ``ignored_layers`` defaults to
    the classifier, whose outputs are the classes.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise SpruceError(f"target sparsity {target_sparsity} is outside [0, 1)", "use e.g. 0.5")
    if rounds < 1:
        raise SpruceError(f"rounds must be at least 1, got {rounds}")
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise SpruceError(
                f"unknown channel criterion '{criterion}'",
                f"use one of {', '.join(CRITERIA)}",
            )
        criterion = CRITERIA[criterion]()
    ignored = list(ignored_layers) if ignored_layers is not None else [classifier_of(model)]
    device = device or next(model.parameters()).device
    example = next(image_batches(loader))["images"][:1].to(device)
    base = prunable_parameter_count(model, ignored)
    result = CNNPruneResult(base_parameters=base, parameters=base, sparsity=0.0)
    for r in range(1, rounds + 1):
        graph = build_graph(model, example)
        groups = channel_groups(graph, ignored)
        if criterion.needs_data:
            criterion.prepare(
                model, image_batches(loader), device=device, max_batches=max_batches,
                loss_fn=image_loss,
            )  # fmt: skip
        scores = [criterion.group_scores(group) for group in groups]
        model.zero_grad(set_to_none=True)
        target = target_sparsity * r / rounds
        plan = plan_pruning(groups, scores, round(base * (1 - target)), ignored, global_ranking)
        removed = apply_plan(plan)
        result.history.append(copy.deepcopy(graph.pruning_history()))
        result.parameters = prunable_parameter_count(model, ignored)
        result.sparsity = 1 - result.parameters / base
        result.rounds.append(RoundReport(r, target, result.sparsity, result.parameters, removed))
        if finetune_fn is not None and r < rounds:
            finetune_fn(model)
    return result
