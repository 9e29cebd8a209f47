"""The pruning phase of each method: learn or choose masks on a model that keeps its
full size (the masks act through hooks); compaction happens afterwards.

``l0``: hard-concrete gates and weights learn together under a Lagrangian that lands the
expected sparsity on a target ramped up over a warm-up (CoFi).
``pdp``: soft masks computed from the weights against a threshold that the ramped target
sets; no mask parameters (:mod:`spruce.pruning.pdp`).
``magnitude`` / ``taylor``: score units with a criterion, remove the least important,
fine-tune with the masks applied, and repeat for ``prune_rounds`` rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from spruce.compact import apply_masks
from spruce.masks import UnitMasks
from spruce.masks.accounting import expected_sparsity
from spruce.masks.control import SparsityController, SparsityStep, make_optimizers
from spruce.masks.gates import EncoderGates
from spruce.masks.switch import GateSwitch
from spruce.models.structure import encoder_shape
from spruce.pruning.config import PruneConfig
from spruce.pruning.pdp import PDPMasks
from spruce.pruning.rounds import ScoreRounds
from spruce.pruning.trajectory import TrajectoryLog
from spruce.train import TrainConfig, Trainer, TrainResult
from spruce.train.checkpoint import Checkpointer, phase_checkpoint
from spruce.train.loop import LossFn
from spruce.train.resume import Stateful
from spruce.units.encoder import EncoderUnits, ScoringContext

TARGET = "target"  # name of the target task's gate set


@dataclass
class PhaseResult:
    masks: UnitMasks
    results: list[TrainResult]
    gates: EncoderGates | None = None
    other_gates: dict[str, EncoderGates] = field(default_factory=dict)
    # Per logged step of a learned-mask phase: sparsity, target, control, losses.
    trajectory: dict[str, list[float]] | None = None


AuxLoss = Callable[[PreTrainedModel, GateSwitch], tuple[torch.Tensor | None, dict[str, float]]]
CouplingPenalty = Callable[[EncoderGates, Mapping[str, EncoderGates]], torch.Tensor]


@dataclass
class PhaseExtras:
    """What transfer learning adds to an l0 pruning phase (``spruce.transfer`` builds it).

    ``other_gate_sets`` get gates of their own, each held on the same sparsity target by
    its own multipliers; ``aux_loss`` runs the other tasks (switching gate sets through
    the :class:`GateSwitch`); ``coupling_penalty`` ties the target's gates to the others;
    ``initial_gates`` replace fresh target gates (masks transferred from an earlier stage).
    """

    aux_loss: AuxLoss | None = None
    other_gate_sets: tuple[str, ...] = ()
    coupling_penalty: CouplingPenalty | None = None
    initial_gates: EncoderGates | None = None


def phase_config(train: TrainConfig, epochs: float, max_steps: int | None) -> TrainConfig:
    """The run's optimisation settings with this phase's length; no early stopping while
    the structure is still changing."""
    return replace(train, epochs=max(epochs, 1e-9), max_steps=max_steps, patience=None)


def phase_steps(config: TrainConfig, loader: DataLoader) -> int:
    """Optimizer steps of a phase run with ``config`` over ``loader``."""
    return config.total_steps(len(loader))


def learn_l0_masks(
    model: PreTrainedModel,
    loader: DataLoader,
    train: TrainConfig,
    prune: PruneConfig,
    base_loss: LossFn,
    evaluate: Callable[[], dict[str, float]] | None,
    device: torch.device,
    progress: bool,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
    extras: PhaseExtras | None = None,
    description: str = "prune (l0)",
    checkpoint: Checkpointer | None = None,
    checkpoint_modules: Sequence[Stateful] = (),
    phase: str = "prune",
    wrap_ddp: bool = True,
) -> PhaseResult:
    """Learn gates and weights together; ``checkpoint`` makes the phase (named ``phase``)
    resumable, saving its gate sets with ``checkpoint_modules`` (what the caller's loss
    draws on: a distiller, auxiliary heads and streams). ``wrap_ddp=False`` (a loss that
    runs the encoder directly) and an ``extras.aux_loss`` average the model's gradients
    without ``DistributedDataParallel`` under several processes (:class:`Trainer`)."""
    extras = extras or PhaseExtras()
    config = phase_config(train, prune.prune_epochs, prune.prune_max_steps)
    shape = encoder_shape(model.config)

    def new_gates() -> EncoderGates:
        return EncoderGates(shape, prune.units, size_multiple=prune.size_multiple).to(device)

    gates = extras.initial_gates.to(device) if extras.initial_gates is not None else new_gates()
    gate_sets = {TARGET: gates, **{name: new_gates() for name in extras.other_gate_sets}}
    trainer_steps = phase_steps(config, loader)
    # Transferred gates are already sparse: ramp from where they stand, not from 0, so the
    # multipliers do not first push them back towards dense.
    with torch.no_grad():
        start = min(float(expected_sparsity(gates)), prune.target_sparsity)
    start = start if extras.initial_gates is not None else 0.0
    controllers, callbacks = {}, []
    for name, gate_set in gate_sets.items():
        controller = SparsityController(
            prune.target_sparsity,
            warmup_steps=int(prune.sparsity_warmup * trainer_steps),
            start_sparsity=start if name == TARGET else 0.0,
            control=prune.sparsity_control,
            ramp=prune.sparsity_ramp,
        ).to(device)
        gate_optimizer, lambda_optimizer = make_optimizers(
            gate_set, controller, prune.lr_gates, prune.lr_lambda
        )
        controllers[name] = controller
        callbacks.append(SparsityStep(controller, gate_optimizer, lambda_optimizer))
    switch = GateSwitch(gate_sets, TARGET)
    others = {name: g for name, g in gate_sets.items() if name != TARGET}

    trajectory = TrajectoryLog(trainer_steps)
    callbacks.append(trajectory)

    def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]):
        for name, gate_set in gate_sets.items():  # exact control: before the gates sample
            controllers[name].place(gate_set)
        loss, stats = base_loss(model, batch)
        stats = {**stats, "task_loss": float(loss.detach())}
        for name, gate_set in gate_sets.items():
            loss = loss + controllers[name].gate_penalty(gate_set)
        if extras.coupling_penalty is not None:
            tie = extras.coupling_penalty(gates, others)
            loss, stats = loss + tie, {**stats, "tie": float(tie.detach())}
        if extras.aux_loss is not None:
            aux, aux_stats = extras.aux_loss(model, switch)
            loss = loss if aux is None else loss + aux
            stats = {**stats, **aux_stats}
        control = controllers[TARGET].stats()
        stats = {
            **stats,
            "sparsity": control.pop("expected_sparsity"),
            "target": control.pop("target_sparsity"),
            **control,  # the shift, or the multipliers
        }
        stats.pop("lagrangian", None)
        return loss, stats

    def set_mode(training: bool) -> None:
        for gate_set in gate_sets.values():
            gate_set.train(training)

    def evaluate_with_structure() -> dict[str, float]:
        set_mode(False)
        try:
            return evaluate() if evaluate else {}
        finally:
            set_mode(True)

    handle = apply_masks(model, switch)
    try:
        set_mode(True)
        trainer = Trainer(
            model,
            loader,
            config,
            loss_fn=loss_fn,
            callbacks=callbacks,
            extra_optimizers=extra_optimizers,
            evaluate=evaluate_with_structure if evaluate else None,
            keep_best=False,
            device=device,
            progress=progress,
            description=description,
            checkpoint=phase_checkpoint(checkpoint, phase),
            checkpoint_modules=[*checkpoint_modules, *gate_sets.values()],
            # The auxiliary loss encodes its batches with model.base_model, which the DDP
            # wrapper does not see.
            wrap_ddp=wrap_ddp and extras.aux_loss is None,
        )
        result = trainer.fit()
    finally:
        handle.remove()
        for gate_set in gate_sets.values():
            gate_set.set_offset(None)  # the last step's graph
    set_mode(False)
    masks = gates.deterministic_masks(target_sparsity=prune.target_sparsity)
    return PhaseResult(
        masks=masks.detach(),
        results=[result],
        gates=gates,
        other_gates=others,
        trajectory=trajectory.columns(),
    )


def learn_pdp_masks(
    model: PreTrainedModel,
    loader: DataLoader,
    train: TrainConfig,
    prune: PruneConfig,
    base_loss: LossFn,
    device: torch.device,
    progress: bool,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
    checkpoint: Checkpointer | None = None,
    checkpoint_modules: Sequence[Stateful] = (),
    wrap_ddp: bool = True,
) -> PhaseResult:
    """PDP (:mod:`spruce.pruning.pdp`): weights train under soft masks computed from
    themselves, the target ramped as for ``l0``; then the hard structure at the target."""
    config = phase_config(train, prune.prune_epochs, prune.prune_max_steps)
    trainer_steps = phase_steps(config, loader)
    schedule = SparsityController(
        prune.target_sparsity,
        warmup_steps=int(prune.sparsity_warmup * trainer_steps),
        ramp=prune.sparsity_ramp,
    )
    model.to(device)
    source = PDPMasks(model, encoder_shape(model.config), schedule)
    trajectory = TrajectoryLog(trainer_steps)

    def advance(trainer: Trainer, step: int, stats: dict[str, float]) -> None:
        source.step = step  # the target of the next forward pass

    def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]):
        loss, stats = base_loss(model, batch)
        last = source.last
        return loss, {
            **stats,
            "task_loss": float(loss.detach()),
            "sparsity": last.get("expected_sparsity", 0.0),
            "target": last.get("target_sparsity", 0.0),
            "soft_sparsity": last.get("soft_sparsity", 0.0),
        }

    with apply_masks(model, source):
        result = Trainer(
            model,
            loader,
            config,
            loss_fn=loss_fn,
            callbacks=[advance, trajectory],
            extra_optimizers=extra_optimizers,
            keep_best=False,
            device=device,
            progress=progress,
            description="prune (pdp)",
            checkpoint=phase_checkpoint(checkpoint, "prune"),
            checkpoint_modules=[*checkpoint_modules, source],
            wrap_ddp=wrap_ddp,
        ).fit()
    masks = source.final_masks(prune.size_multiple)
    return PhaseResult(masks=masks, results=[result], trajectory=trajectory.columns())


def score_and_prune(
    model: PreTrainedModel,
    loader: DataLoader,
    train: TrainConfig,
    prune: PruneConfig,
    base_loss: LossFn,
    device: torch.device,
    progress: bool,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
    criterion: str | None = None,
    scoring_context: ScoringContext | None = None,
    checkpoint: Checkpointer | None = None,
    checkpoint_modules: Sequence[Stateful] = (),
    wrap_ddp: bool = True,
) -> PhaseResult:
    """Iterative structured pruning by ``prune.method`` (:class:`ScoreRounds` over the
    encoder's units); one round is one-shot pruning (the final fine-tune of the compact
    model then recovers accuracy).

    ``criterion`` names any entry of :data:`~spruce.criteria.CRITERIA` in place of the
    method's own; ``scoring_context(model)`` wraps each scoring pass (see
    :class:`EncoderUnits`). With a ``checkpoint``, each round's masks are stored and each
    round's training is a phase ``prune round N``. ``wrap_ddp=False`` is for a
    ``base_loss`` that runs the encoder directly (see :class:`Trainer`).
    """
    name = criterion or ("weight" if prune.method == "magnitude" else prune.method)
    model.to(device)
    units = EncoderUnits(
        model,
        loader,
        device,
        lambda m, b: base_loss(m, b)[0],
        size_multiple=prune.size_multiple,
        scoring_context=scoring_context,
    )
    max_steps = prune.prune_max_steps // prune.prune_rounds if prune.prune_max_steps else None
    config = phase_config(train, prune.prune_epochs / prune.prune_rounds, max_steps)

    def train_round(round_index: int) -> TrainResult:
        return Trainer(
            model,
            loader,
            config,
            loss_fn=base_loss,
            extra_optimizers=extra_optimizers,
            keep_best=False,
            device=device,
            progress=progress,
            description=f"prune ({criterion or prune.method}) round {round_index}",
            checkpoint=phase_checkpoint(checkpoint, f"prune round {round_index}"),
            checkpoint_modules=checkpoint_modules,
            wrap_ddp=wrap_ddp,
        ).fit()

    rounds = ScoreRounds(name, prune.target_sparsity, prune.prune_rounds)
    selections, results = rounds.run(units, train_round, checkpoint)
    return PhaseResult(masks=selections[-1], results=results)
