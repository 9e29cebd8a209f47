"""The pruning phase of each method, as a pruner object: learn or choose masks on a model
that keeps its full size (the masks act through hooks); compaction happens afterwards.

Every pruner takes the same :class:`PhaseInputs` (the model, its batches, loss and
optimisation settings, where to checkpoint) and returns a :class:`PhaseResult`:

* :class:`LearnedMasks` (``l0``): hard-concrete gates and weights learn together under a
  Lagrangian that lands the expected sparsity on a target ramped up over a warm-up (CoFi);
* :class:`SoftMasks` (``pdp``): soft masks computed from the weights against a threshold
  that the ramped target sets; no mask parameters (:mod:`spruce.pruning.pdp`);
* :class:`ScoreBased` (``magnitude`` / ``taylor`` / any criterion): score units, remove the
  least important, fine-tune with the masks applied, repeat for ``prune_rounds`` rounds
  (:class:`~spruce.pruning.rounds.ScoreRounds`, the schedule CNNs use too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

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


@dataclass
class PhaseInputs:
    """What a pruning phase trains: ``model`` on ``loader`` under ``loss`` with the run's
    optimisation settings (``train``; the phase sets its own length). ``extra_optimizers``
    step beside the model's (a distiller's projection, auxiliary heads);
    ``checkpoint_modules`` are saved with the phase (what ``loss`` draws on).
    ``wrap_ddp=False`` is for a loss that runs the encoder directly: under several
    processes the model's gradients are then averaged without DDP (:class:`Trainer`)."""

    model: PreTrainedModel
    loader: DataLoader
    train: TrainConfig
    loss: LossFn
    device: torch.device
    progress: bool = True
    extra_optimizers: Sequence[torch.optim.Optimizer] = ()
    checkpoint: Checkpointer | None = None
    checkpoint_modules: Sequence[Stateful] = ()
    wrap_ddp: bool = True

    def trainer(self, config: TrainConfig, **options) -> Trainer:
        """A Trainer of this phase's model, batches and optimizers (``options`` add the
        loss, callbacks, checkpoint phase and the rest)."""
        return Trainer(
            self.model,
            self.loader,
            config,
            extra_optimizers=self.extra_optimizers,
            keep_best=False,
            device=self.device,
            progress=self.progress,
            **options,
        )


class Pruner(Protocol):
    """A pruning phase: ``run`` trains and returns the masks it chose."""

    def run(self, inputs: PhaseInputs) -> PhaseResult: ...


def pruner_for(prune: PruneConfig, **options: Any) -> Pruner:
    """The pruner of ``prune.method`` (``options``: that pruner's own settings)."""
    if prune.method == "l0":
        return LearnedMasks(prune, **options)
    if prune.method == "pdp":
        return SoftMasks(prune)
    return ScoreBased(prune, **options)


@dataclass
class LearnedMasks:
    """Gates and weights learn together (``l0``). ``extras`` add transfer learning's gate
    sets and losses; ``evaluate`` runs on the validation set with deterministic gates;
    the phase is checkpointed as ``phase``, its gate sets beside the inputs' modules. An
    ``extras.aux_loss`` averages gradients without DDP, as ``wrap_ddp=False`` does."""

    prune: PruneConfig
    extras: PhaseExtras = field(default_factory=PhaseExtras)
    evaluate: Callable[[], dict[str, float]] | None = None
    description: str = "prune (l0)"
    phase: str = "prune"

    def run(self, inputs: PhaseInputs) -> PhaseResult:
        config = phase_config(inputs.train, self.prune.prune_epochs, self.prune.prune_max_steps)
        gate_sets = self._gate_sets(inputs)
        gates = gate_sets[TARGET]
        steps = phase_steps(config, inputs.loader)
        controllers, callbacks = self._controllers(gate_sets, steps, inputs.device)
        trajectory = TrajectoryLog(steps)
        switch = GateSwitch(gate_sets, TARGET)
        handle = apply_masks(inputs.model, switch)
        try:
            _set_mode(gate_sets, True)
            result = inputs.trainer(
                config,
                loss_fn=self._loss(inputs.loss, gate_sets, controllers, switch),
                callbacks=[*callbacks, trajectory],
                evaluate=self._evaluate(gate_sets) if self.evaluate else None,
                description=self.description,
                checkpoint=phase_checkpoint(inputs.checkpoint, self.phase),
                checkpoint_modules=[*inputs.checkpoint_modules, *gate_sets.values()],
                # The auxiliary loss encodes its batches with model.base_model, which the
                # DDP wrapper does not see.
                wrap_ddp=inputs.wrap_ddp and self.extras.aux_loss is None,
            ).fit()
        finally:
            handle.remove()
            for gate_set in gate_sets.values():
                gate_set.set_offset(None)  # the last step's graph
        _set_mode(gate_sets, False)
        masks = gates.deterministic_masks(target_sparsity=self.prune.target_sparsity)
        others = {name: g for name, g in gate_sets.items() if name != TARGET}
        return PhaseResult(
            masks=masks.detach(),
            results=[result],
            gates=gates,
            other_gates=others,
            trajectory=trajectory.columns(),
        )

    def _gate_sets(self, inputs: PhaseInputs) -> dict[str, EncoderGates]:
        shape = encoder_shape(inputs.model.config)

        def new_gates() -> EncoderGates:
            return EncoderGates(shape, self.prune.units, size_multiple=self.prune.size_multiple).to(
                inputs.device
            )

        initial = self.extras.initial_gates
        gates = initial.to(inputs.device) if initial is not None else new_gates()
        return {TARGET: gates, **{name: new_gates() for name in self.extras.other_gate_sets}}

    def _controllers(
        self, gate_sets: dict[str, EncoderGates], steps: int, device: torch.device
    ) -> tuple[dict[str, SparsityController], list[SparsityStep]]:
        """One controller per gate set, each with its gate and multiplier optimizers."""
        # Transferred gates are already sparse: ramp from where they stand, not from 0, so
        # the multipliers do not first push them back towards dense.
        start = 0.0
        if self.extras.initial_gates is not None:
            with torch.no_grad():
                start = float(expected_sparsity(gate_sets[TARGET]))
            start = min(start, self.prune.target_sparsity)
        controllers, callbacks = {}, []
        for name, gate_set in gate_sets.items():
            controller = SparsityController(
                self.prune.target_sparsity,
                warmup_steps=int(self.prune.sparsity_warmup * steps),
                start_sparsity=start if name == TARGET else 0.0,
                control=self.prune.sparsity_control,
                ramp=self.prune.sparsity_ramp,
            ).to(device)
            gate_optimizer, lambda_optimizer = make_optimizers(
                gate_set, controller, self.prune.lr_gates, self.prune.lr_lambda
            )
            controllers[name] = controller
            callbacks.append(SparsityStep(controller, gate_optimizer, lambda_optimizer))
        return controllers, callbacks

    def _loss(
        self,
        base_loss: LossFn,
        gate_sets: dict[str, EncoderGates],
        controllers: dict[str, SparsityController],
        switch: GateSwitch,
    ) -> LossFn:
        """The task loss plus every gate set's sparsity penalty and transfer's terms."""
        extras, gates = self.extras, gate_sets[TARGET]
        others = {name: g for name, g in gate_sets.items() if name != TARGET}

        def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]):
            for name, gate_set in gate_sets.items():  # exact control: before gates sample
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

        return loss_fn

    def _evaluate(self, gate_sets: dict[str, EncoderGates]) -> Callable[[], dict[str, float]]:
        evaluate = self.evaluate
        assert evaluate is not None

        def with_structure() -> dict[str, float]:
            _set_mode(gate_sets, False)
            try:
                return evaluate()
            finally:
                _set_mode(gate_sets, True)

        return with_structure


def _set_mode(gate_sets: dict[str, EncoderGates], training: bool) -> None:
    for gate_set in gate_sets.values():
        gate_set.train(training)


@dataclass
class SoftMasks:
    """PDP (:mod:`spruce.pruning.pdp`): weights train under soft masks computed from
    themselves, the target ramped as for ``l0``; then the hard structure at the target."""

    prune: PruneConfig

    def run(self, inputs: PhaseInputs) -> PhaseResult:
        prune = self.prune
        config = phase_config(inputs.train, prune.prune_epochs, prune.prune_max_steps)
        steps = phase_steps(config, inputs.loader)
        schedule = SparsityController(
            prune.target_sparsity,
            warmup_steps=int(prune.sparsity_warmup * steps),
            ramp=prune.sparsity_ramp,
        )
        model = inputs.model.to(inputs.device)
        source = PDPMasks(model, encoder_shape(model.config), schedule)
        trajectory = TrajectoryLog(steps)

        def advance(trainer: Trainer, step: int, stats: dict[str, float]) -> None:
            source.step = step  # the target of the next forward pass

        def loss_fn(model: PreTrainedModel, batch: dict[str, torch.Tensor]):
            loss, stats = inputs.loss(model, batch)
            last = source.last
            return loss, {
                **stats,
                "task_loss": float(loss.detach()),
                "sparsity": last.get("expected_sparsity", 0.0),
                "target": last.get("target_sparsity", 0.0),
                "soft_sparsity": last.get("soft_sparsity", 0.0),
            }

        with apply_masks(model, source):
            result = inputs.trainer(
                config,
                loss_fn=loss_fn,
                callbacks=[advance, trajectory],
                description="prune (pdp)",
                checkpoint=phase_checkpoint(inputs.checkpoint, "prune"),
                checkpoint_modules=[*inputs.checkpoint_modules, source],
                wrap_ddp=inputs.wrap_ddp,
            ).fit()
        masks = source.final_masks(prune.size_multiple)
        return PhaseResult(masks=masks, results=[result], trajectory=trajectory.columns())


@dataclass
class ScoreBased:
    """Iterative structured pruning by ``prune.method`` (:class:`ScoreRounds` over the
    encoder's units); one round is one-shot pruning (the final fine-tune of the compact
    model then recovers accuracy). ``criterion`` names any entry of
    :data:`~spruce.criteria.CRITERIA` in place of the method's own; ``scoring_context``
    wraps each scoring pass (see :class:`EncoderUnits`). With a checkpoint, each round's
    masks are stored and each round's training is a phase ``prune round N``."""

    prune: PruneConfig
    criterion: str | None = None
    scoring_context: ScoringContext | None = None

    def run(self, inputs: PhaseInputs) -> PhaseResult:
        prune = self.prune
        name = self.criterion or ("weight" if prune.method == "magnitude" else prune.method)
        inputs.model.to(inputs.device)
        units = EncoderUnits(
            inputs.model,
            inputs.loader,
            inputs.device,
            lambda m, b: inputs.loss(m, b)[0],
            size_multiple=prune.size_multiple,
            scoring_context=self.scoring_context,
        )
        rounds = prune.prune_rounds
        max_steps = prune.prune_max_steps // rounds if prune.prune_max_steps else None
        config = phase_config(inputs.train, prune.prune_epochs / rounds, max_steps)

        def train_round(round_index: int) -> TrainResult:
            return inputs.trainer(
                config,
                loss_fn=inputs.loss,
                description=f"prune ({self.criterion or prune.method}) round {round_index}",
                checkpoint=phase_checkpoint(inputs.checkpoint, f"prune round {round_index}"),
                checkpoint_modules=inputs.checkpoint_modules,
                wrap_ddp=inputs.wrap_ddp,
            ).fit()

        schedule = ScoreRounds(name, prune.target_sparsity, rounds)
        selections, results = schedule.run(units, train_round, inputs.checkpoint)
        return PhaseResult(masks=selections[-1], results=results)
