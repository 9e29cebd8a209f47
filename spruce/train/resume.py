"""The state of a :class:`~spruce.train.Trainer` that a checkpoint holds, and how it is
put back.

A mid-phase save holds everything the next step depends on: the model, every optimizer
and the scheduler, callbacks and ``checkpoint_modules`` with state, the step and the
progress (losses, evaluations, the best weights so far), the position in the data order
and every random generator. Restored in that order, the continued phase computes the
same numbers as one that was never stopped. A save at the end of a phase (``finished``)
keeps only what outlives the phase: the model (with the best weights loaded), the
extra optimizers (score-based rounds share them), an optimizer given to the trainer
(it outlives the phase), callbacks, modules, generators and the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader

from spruce.errors import SpruceError
from spruce.train.rng import (
    generator_state,
    global_rng_state,
    set_generator_state,
    set_global_rng_state,
)

if TYPE_CHECKING:
    from spruce.train.loop import Trainer


class TrainerCheckpoint(Protocol):
    """Where one phase saves: :class:`spruce.train.checkpoint.PhaseCheckpoint`, or any
    object with these members."""

    phase: str
    every_steps: int  # 0: only at the end of the phase and on a stop signal
    directory: Path  # optional: named in messages

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class LoaderPosition:
    """Where the training loader is: the generator state its current epoch started from
    (which fixes the epoch's order) and how many batches of that epoch were drawn."""

    epoch_start: torch.Tensor | None = None
    batches: int = 0

    @classmethod
    def start(cls, loader: DataLoader, resumed: LoaderPosition | None = None) -> LoaderPosition:
        """Call just before ``iter(loader)``; ``resumed`` rewinds the generator to the
        start of the epoch being continued."""
        generator = getattr(loader, "generator", None)
        if resumed is not None:
            set_generator_state(generator, resumed.epoch_start)
        return cls(epoch_start=generator_state(generator))

    def skip(self, batches: Iterator, count: int) -> None:
        """Draw (and drop) the ``count`` batches the interrupted run had trained on; the
        generator then stands where it stood at the save."""
        for _ in range(count):
            next(batches)
        self.batches = count


def trainer_state(
    trainer: Trainer,
    result: dict[str, Any],
    progress: dict[str, Any],
    epoch: LoaderPosition | None,
    *,
    finished: bool,
) -> dict[str, Any]:
    """The checkpoint of ``trainer`` between two steps (or at the end of its phase)."""
    generator = getattr(trainer.train_loader, "generator", None)
    state: dict[str, Any] = {
        "format": 1,
        "finished": finished,
        "step": progress["step"],
        "result": result,
        "model": trainer.model.state_dict(),
        # The one config field a forward pass sets (transformers fills it in on the first
        # batch with labels); a finished phase restored without a forward needs it back.
        # Models that are not transformers (CNNs) have no config.
        "problem_type": getattr(getattr(trainer.model, "config", None), "problem_type", None),
        "extra_optimizers": [o.state_dict() for o in trainer.extra_optimizers],
        "callbacks": [
            c.state_dict() if isinstance(c, Stateful) else None for c in trainer.callbacks
        ],
        "modules": [m.state_dict() for m in trainer.checkpoint_modules],
        "generator": generator_state(generator),
        "rng": global_rng_state(),
    }
    if not finished or trainer.optimizer_outlives_phase:
        state["optimizer"] = trainer.optimizer.state_dict()
    if not finished:
        assert epoch is not None
        state["scheduler"] = trainer.scheduler.state_dict()
        state["progress"] = progress
        state["loader"] = {"epoch_start": epoch.epoch_start, "batches": epoch.batches}
    return state


def restore_trainer(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Put ``saved`` back into ``trainer`` and its companions. A finished phase also gets
    its generators back; a continued one does that itself, after replaying its epoch."""
    phase = getattr(trainer.checkpoint, "phase", "?")
    directory = getattr(trainer.checkpoint, "directory", "the checkpoint directory")
    counts = {
        "extra_optimizers": len(trainer.extra_optimizers),
        "callbacks": len(trainer.callbacks),
        "modules": len(trainer.checkpoint_modules),
    }
    for key, count in counts.items():
        if len(saved[key]) != count:
            raise SpruceError(
                f"the checkpoint of phase {phase} in {directory} holds {len(saved[key])} "
                f"{key.replace('_', ' ')}, this run has {count}",
                f"remove {directory} to start again",
            )
    trainer.model.load_state_dict(saved["model"])
    if saved["problem_type"] is not None:
        trainer.model.config.problem_type = saved["problem_type"]
    for optimizer, optimizer_state in zip(
        trainer.extra_optimizers, saved["extra_optimizers"], strict=True
    ):
        optimizer.load_state_dict(optimizer_state)
    for callback, callback_state in zip(trainer.callbacks, saved["callbacks"], strict=True):
        if callback_state is not None:
            callback.load_state_dict(callback_state)
    for module, module_state in zip(trainer.checkpoint_modules, saved["modules"], strict=True):
        module.load_state_dict(module_state)
    if "optimizer" in saved:  # every mid-phase save; a finished one of a shared optimizer
        trainer.optimizer.load_state_dict(saved["optimizer"])
    if saved["finished"]:
        set_generator_state(getattr(trainer.train_loader, "generator", None), saved["generator"])
        set_global_rng_state(saved["rng"])
    else:
        trainer.scheduler.load_state_dict(saved["scheduler"])
