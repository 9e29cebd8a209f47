"""The auxiliary part of the training objective: heads, data streams, schedule, tie penalty.

Every target step draws ``aux_ratio`` batches (on average) from each auxiliary task, runs
them through the shared encoder -- under the task's own gates when it has them; for
``distill`` through the student's own classifier, against the dense teacher's -- and
adds ``schedule(step) * sum(weight_i * loss_i)`` to the target loss. The pruning phase
and the final fine-tune call :meth:`AuxiliaryObjective.loss` from their loss functions;
sequential coupling trains on :meth:`AuxiliaryObjective.first_stage_loss` alone first.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.data import TaskData
from spruce.data.augment import augment_texts, select_texts
from spruce.errors import SpruceError
from spruce.masks.gates import EncoderGates
from spruce.masks.switch import GateSwitch
from spruce.models import encoder_shape
from spruce.train.distillation import DistillationConfig, LayerDistiller, default_teacher_layers
from spruce.train.distributed import context
from spruce.train.loop import LossFn
from spruce.transfer.config import AuxTask, TransferConfig
from spruce.transfer.data import (
    Stream,
    distill_texts,
    labelled_task,
    mlm_stream,
    mlm_texts,
    text_stream,
)
from spruce.transfer.heads import AuxHead, DistillHead, classifier_head, mlm_head


@dataclass
class AuxRuntime:
    """One auxiliary task ready to train: its head, its data and its gate set (None: the
    target's gates)."""

    task: AuxTask
    head: AuxHead
    stream: Stream
    gate_set: str | None = None
    pretrained_head: bool = False
    examples: int = 0


class AuxiliaryObjective:
    """Auxiliary losses of one run; see the module docstring."""

    def __init__(self, config: TransferConfig, runtimes: list[AuxRuntime]) -> None:
        self.config = config
        self.schedule = config.parsed_schedule
        self.runtimes = runtimes
        self.heads = nn.ModuleList(runtime.head for runtime in runtimes)
        self.phase = "prune"
        self.step = 0  # target training steps seen, over pruning and final fine-tune
        self.total_steps = 1
        self._credit = 0.0
        self.device = torch.device("cpu")
        # How many auxiliary losses each phase computed: what the schedule really did.
        self.calls: dict[str, int] = {"first_stage": 0, "prune": 0, "final": 0}

    @property
    def separate_gate_sets(self) -> tuple[str, ...]:
        return tuple(r.gate_set for r in self.runtimes if r.gate_set is not None)

    def to(self, device: torch.device) -> AuxiliaryObjective:
        self.heads.to(device)
        self.device = device
        return self

    def optimizers(self, learning_rate: float) -> list[torch.optim.Optimizer]:
        """The heads' optimizer; none when no head has weights (``distill`` trains only
        the student, whose optimizer the phase already has)."""
        parameters = list(self.heads.parameters())
        return [torch.optim.AdamW(parameters, lr=learning_rate)] if parameters else []

    def factor(self) -> float:
        return self.schedule.factor(self.phase, self.step, self.total_steps)

    def loss(
        self, model: PreTrainedModel, switch: GateSwitch | None = None
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The weighted auxiliary loss of one target step (None when the schedule's factor
        is 0 or the ratio skips this step), and progress-bar stats."""
        factor = self.factor()
        if model.training and torch.is_grad_enabled():
            self.step += 1
        self._credit += self.config.aux_ratio
        batches = int(self._credit)
        self._credit -= batches
        if factor == 0.0 or batches == 0:
            return None, {"aux_w": factor}
        total = self._weighted_losses(model, switch, batches)
        self.calls[self.phase] += 1
        return factor * total, {"aux": float(total.detach()), "aux_w": factor}

    def first_stage_loss(self) -> LossFn:
        """A loss function for sequential coupling's first stage: the auxiliary tasks only
        (the trainer's own batches are ignored; see :class:`StepsLoader`)."""

        def loss_fn(model: PreTrainedModel, batch: dict) -> tuple[torch.Tensor, dict]:
            self.calls["first_stage"] += 1
            total = self._weighted_losses(model, None, 1)
            return total, {"aux": float(total.detach())}

        return loss_fn

    def _weighted_losses(
        self, model: PreTrainedModel, switch: GateSwitch | None, batches: int
    ) -> torch.Tensor:
        total = None
        for runtime in self.runtimes:
            for _ in range(batches):
                batch = {k: v.to(self.device) for k, v in next(runtime.stream).items()}
                use_own = switch is not None and runtime.gate_set is not None
                with switch.using(runtime.gate_set) if use_own else contextlib.nullcontext():
                    loss = runtime.head.batch_loss(model, batch)
                term = runtime.task.weight * loss / batches
                total = term if total is None else total + term
        assert total is not None
        return total

    def tie_penalty(self, target: EncoderGates, others: Mapping[str, EncoderGates]) -> torch.Tensor:
        """``tie_strength * sum over unit types of mean((P_target - P_aux)^2)``, summed over
        the auxiliary gate sets: a mean per unit type so that the strength does not scale
        with the number of FFN neurons."""
        target_probs = target.probs()
        penalty = None
        for gates in others.values():
            for unit, probs in gates.probs().items():
                term = (target_probs[unit] - probs).pow(2).mean()
                penalty = term if penalty is None else penalty + term
        if penalty is None:
            return next(target.parameters()).sum() * 0.0
        return self.config.tie_strength * penalty

    def state_dict(self) -> dict:
        """Heads, counters and each stream's position: what a resumed phase needs to draw
        and weight the same auxiliary batches (``spruce.train.checkpoint``)."""
        return {
            "heads": self.heads.state_dict(),
            "phase": self.phase,
            "step": self.step,
            "credit": self._credit,
            "calls": dict(self.calls),
            "streams": [runtime.stream.state_dict() for runtime in self.runtimes],
        }

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
        self.phase, self.step, self._credit = state["phase"], state["step"], state["credit"]
        self.calls = dict(state["calls"])
        for runtime, stream_state in zip(self.runtimes, state["streams"], strict=True):
            runtime.stream.load_state_dict(stream_state)

    def compact_heads(self, kept: torch.Tensor) -> None:
        """Slice every head to the kept hidden dimensions (after compaction)."""
        for runtime in self.runtimes:
            runtime.head = runtime.head.compact(kept)
        self.heads = nn.ModuleList(runtime.head for runtime in self.runtimes)

    def summary(self) -> dict:
        """What the report records beyond the configuration."""
        return {
            "aux_losses_computed": dict(self.calls),
            "tasks": [
                {
                    "name": r.task.name,
                    "examples": r.examples,
                    "pretrained_head": r.pretrained_head,
                    "epochs_seen": r.stream.epochs,
                    "own_gates": r.gate_set is not None,
                }
                for r in self.runtimes
            ],
        }


def with_auxiliary(base: LossFn, objective: AuxiliaryObjective) -> LossFn:
    """``base`` plus the auxiliary loss (the target's structure for every task)."""

    def loss_fn(model: PreTrainedModel, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, stats = base(model, batch)
        extra, extra_stats = objective.loss(model)
        return (loss if extra is None else loss + extra), {**stats, **extra_stats}

    return loss_fn


def build_objective(
    config: TransferConfig,
    target: TaskData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str | None,
    batch_size: int,
    max_length: int,
    seed: int,
    teacher: PreTrainedModel | None = None,
    distillation: DistillationConfig | None = None,
    steps: int | None = None,
) -> AuxiliaryObjective:
    """Heads and data streams for every auxiliary task of ``config``; ``distill`` tasks
    compare the student with ``teacher`` as ``distillation`` says (its temperature; its
    layers and ``alpha`` when ``config.distill_layers``). Under several processes each
    stream yields this process's shard (as the target's loader does); the heads start
    alike everywhere (copied weights, or drawn after the same seeding). ``steps``, the
    target steps the objective will serve, bounds the texts ``--aux-select longest`` keeps:
    as many as the run reads (None: every text)."""
    separate = config.coupling == "tied" or (config.coupling == "joint" and not config.shared_gates)
    batch_size = config.aux_batch_size or batch_size
    shard = {"rank": context().rank, "world_size": context().world_size}
    runtimes = []
    for index, task in enumerate(config.aux):
        # Each stream has its own seed so two auxiliary tasks never draw in lock-step.
        stream_seed = seed + 1000 * (index + 1)
        if task.kind == "mlm":
            texts = mlm_texts(task, target)
            head, pretrained = mlm_head(model.config, model.get_input_embeddings(), source)
            stream = mlm_stream(
                texts,
                tokenizer,
                batch_size,
                max_length,
                config.mlm_probability,
                stream_seed,
                **shard,
            )
            examples = len(texts)
        elif task.kind == "distill":
            if teacher is None:
                raise no_teacher_error()
            texts = select_texts(
                distill_texts(task, target),
                config.distill_select,
                None if steps is None else rows_read(config, steps, batch_size),
            )
            texts = augment_texts(texts, config.distill_augment, stream_seed)
            head, pretrained = distill_head(teacher, model, config, distillation), False
            stream = text_stream(texts, tokenizer, batch_size, max_length, stream_seed, **shard)
            examples = len(texts)
        else:
            data = labelled_task(task, seed)
            head, pretrained = classifier_head(model.config, data.num_labels), False
            stream = text_stream(
                data.train, tokenizer, batch_size, max_length, stream_seed, **shard
            )
            examples = len(data.train)
        runtimes.append(
            AuxRuntime(
                task=task,
                head=head,
                stream=stream,
                gate_set=f"aux{index}:{task.kind}" if separate else None,
                pretrained_head=pretrained,
                examples=examples,
            )
        )
    return AuxiliaryObjective(config, runtimes)


def rows_read(config: TransferConfig, steps: int, batch_size: int) -> int:
    """Auxiliary rows ``steps`` target steps read from each task, over every process."""
    return math.ceil(steps * config.aux_ratio) * batch_size * context().world_size


def distill_head(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    config: TransferConfig,
    distillation: DistillationConfig | None,
) -> DistillHead:
    """Prediction distillation at the run's temperature; with ``config.distill_layers``
    also the layer loss, through a projection of its own (identity at the start)."""
    distillation = distillation or DistillationConfig()
    if not config.distill_layers:
        return DistillHead(teacher, distillation.temperature)
    teacher_shape = encoder_shape(teacher.config)
    layers = LayerDistiller(
        encoder_shape(student.config).hidden_size,
        teacher_shape.hidden_size,
        distillation.teacher_layers or default_teacher_layers(teacher_shape.num_layers),
    )
    return DistillHead(teacher, distillation.temperature, layers, distillation.alpha)


def no_teacher_error() -> SpruceError:
    """What ``--aux distill`` without ``--teacher`` or ``--distill`` reports."""
    return SpruceError(
        "--aux distill learns the dense teacher's predictions, and --recipe plain has no teacher",
        "add --teacher DIR (a spruce finetune output) or --distill, or drop --recipe plain",
    )


class StepsLoader:
    """``steps`` empty batches: drives a :class:`~spruce.train.Trainer` whose loss function
    draws its own data (sequential coupling's auxiliary-only first stage)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([{}] * self.steps)
