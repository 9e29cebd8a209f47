"""How auxiliary tasks join a pruning run: the pieces ``spruce prune`` puts together.

``sequential``: :func:`run_first_stage` prunes on the auxiliary tasks alone; its weights
and/or gates then start the target's pruning phase (:func:`carry_over`).
``joint`` / ``tied``: :func:`phase_extras` adds the auxiliary losses (and, for ``tied``,
the penalty that pulls the separate gate sets together) to the target's pruning phase;
:func:`final_phase_loss` continues them, on the compacted model, in the final fine-tune.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from spruce.data import TaskData
from spruce.data.augment import check_augment
from spruce.errors import SpruceError
from spruce.masks.gates import EncoderGates
from spruce.masks.units import UnitMasks
from spruce.pruning.config import PruneConfig
from spruce.pruning.phases import LearnedMasks, PhaseExtras, PhaseInputs, PhaseResult
from spruce.train import TrainConfig
from spruce.train.checkpoint import Checkpointer
from spruce.train.loop import LossFn
from spruce.transfer.config import TransferConfig
from spruce.transfer.data import distill_texts
from spruce.transfer.objective import (
    AuxiliaryObjective,
    StepsLoader,
    no_teacher_error,
    with_auxiliary,
)


def check_compatible(transfer: TransferConfig, prune: PruneConfig) -> None:
    """Couplings that learn or carry gates need the ``l0`` method; a shared-structure
    ``joint`` objective works with any method (it only adds a loss). ``distill`` needs a
    teacher: checked here, before any model or data is loaded."""
    distills = transfer.active and any(task.kind == "distill" for task in transfer.aux)
    if distills and not prune.uses_teacher:
        raise no_teacher_error()
    needs_gates = transfer.coupling in ("sequential", "tied") or (
        transfer.coupling == "joint" and not transfer.shared_gates
    )
    if needs_gates and prune.method != "l0":
        raise SpruceError(
            f"--coupling {transfer.coupling} --transfer {transfer.transfer} learns "
            f"gates, which --method {prune.method} does not have",
            "use --method l0, or --coupling joint --transfer both",
        )


def check_distill_texts(transfer: TransferConfig, target: TaskData) -> None:
    """Read every ``distill`` task's text once, so that a file that does not fit the
    target's text shape fails before the teacher's fine-tune (which may take hours), not
    after it, when the auxiliary tasks are built; likewise a ``--aux-augment`` that does
    not fit the target (joining sentence pairs)."""
    for task in transfer.aux if transfer.active else ():
        if task.kind == "distill":
            texts = distill_texts(task, target)
            check_augment(transfer.distill_augment, texts)


@dataclass
class FirstStage:
    """Sequential coupling's auxiliary stage and what the target stage starts from."""

    result: PhaseResult
    initial_gates: EncoderGates | None


def run_first_stage(
    model: PreTrainedModel,
    objective: AuxiliaryObjective,
    train: TrainConfig,
    prune: PruneConfig,
    target_steps: int,
    device: torch.device,
    progress: bool,
    checkpoint: Checkpointer | None = None,
) -> FirstStage:
    """Prune ``model`` on the auxiliary tasks alone (same target sparsity and schedule
    shape as the target's phase), then restore what ``--transfer`` does not carry over:
    ``weights`` keeps the stage's encoder weights and starts fresh gates, ``masks``
    restores the original weights and keeps the stage's gates, ``both`` keeps both.
    With a ``checkpoint`` the stage is the resumable phase ``auxiliary stage``. Under
    several processes each draws its own shard of the auxiliary data, and the model's
    gradients are averaged without the DDP wrapper, which this stage's loss never calls
    (it encodes with ``model.base_model``)."""
    transfer = objective.config.transfer
    original = copy.deepcopy(model.state_dict()) if transfer == "masks" else None
    steps = objective.config.aux_steps or target_steps
    stage_prune = replace(prune, prune_max_steps=steps)
    inputs = PhaseInputs(
        model,
        StepsLoader(steps),
        train,
        objective.first_stage_loss(),
        device,
        progress,
        objective.optimizers(train.learning_rate),
        checkpoint=checkpoint,
        checkpoint_modules=[objective],
        wrap_ddp=False,
    )
    stage = LearnedMasks(stage_prune, description="auxiliary stage (l0)", phase="auxiliary stage")
    result = stage.run(inputs)
    if original is not None:
        model.load_state_dict(original)
    gates = result.gates if transfer in ("masks", "both") else None
    return FirstStage(result=result, initial_gates=gates)


def phase_extras(
    objective: AuxiliaryObjective | None, initial_gates: EncoderGates | None = None
) -> PhaseExtras:
    """The target pruning phase's additions for ``objective``'s coupling."""
    extras = PhaseExtras(initial_gates=initial_gates)
    if objective is None or objective.config.coupling not in ("joint", "tied"):
        return extras
    extras.aux_loss = objective.loss
    extras.other_gate_sets = objective.separate_gate_sets
    if objective.config.coupling == "tied":
        extras.coupling_penalty = objective.tie_penalty
    return extras


def joint_loss(base: LossFn, objective: AuxiliaryObjective | None) -> LossFn:
    """``base`` plus the auxiliary loss under the target's structure (score-based methods,
    which have no gates to switch), for ``joint``; ``base`` otherwise."""
    if objective is None or objective.config.coupling != "joint":
        return base
    return with_auxiliary(base, objective)


def final_phase_loss(
    base: LossFn,
    objective: AuxiliaryObjective | None,
    masks: UnitMasks,
    hidden_size: int,
    learning_rate: float,
) -> tuple[LossFn, list[torch.optim.Optimizer]]:
    """The final fine-tune's loss: for ``joint``/``tied``, the auxiliary heads are sliced
    to the compact model's hidden dimensions and the schedule decides their weight."""
    if objective is None or objective.config.coupling not in ("joint", "tied"):
        return base, []
    kept = (
        torch.arange(hidden_size)
        if masks.hidden is None
        else torch.nonzero(masks.hidden.detach().cpu() > 0).flatten()
    )
    objective.compact_heads(kept)
    objective.heads.to(objective.device)
    objective.phase = "final"
    return with_auxiliary(base, objective), objective.optimizers(learning_rate)
