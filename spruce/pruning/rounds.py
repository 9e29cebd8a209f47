"""Score-based pruning in rounds, for any model's units (:mod:`spruce.units`).

Round r scores every unit with what earlier rounds removed masked, keeps the best ones at
``target * r / rounds`` of the prunable parameters, then trains under the new masks (not
after the last round: the caller's final phase does). One round is one-shot pruning.
Each round's selection is a checkpoint product, so a resumed run masks what the saved
weights were trained under instead of scoring again; with several processes rank 0
scores and every process takes its choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from spruce.criteria import CRITERIA
from spruce.train.checkpoint import Checkpointer, remember
from spruce.train.distributed import context
from spruce.units.base import Units

T = TypeVar("T")


@dataclass
class ScoreRounds:
    """``rounds`` rounds of ``criterion`` (a name of :data:`~spruce.criteria.CRITERIA`)
    up to ``target_sparsity``."""

    criterion: str
    target_sparsity: float
    rounds: int = 1

    def target(self, round_index: int) -> float:
        return self.target_sparsity * round_index / self.rounds

    def run(
        self,
        units: Units,
        train_round: Callable[[int], T],
        checkpoint: Checkpointer | None = None,
    ) -> tuple[list[Any], list[T]]:
        """Every round's selection, and what ``train_round(r)`` returned for each round
        but the last."""
        selections: list[Any] = []
        trained: list[T] = []
        current = None
        for round_index in range(1, self.rounds + 1):

            def choose(current: Any = current, target: float = self.target(round_index)) -> Any:
                criterion = CRITERIA[self.criterion]()
                return units.encode(units.choose(criterion, target, current))

            key = units.record_key(round_index)
            current = units.decode(remember(checkpoint, key, lambda c=choose: context().on_main(c)))
            selections.append(current)
            with units.masked(current):
                if round_index < self.rounds:
                    trained.append(train_round(round_index))
        return selections, trained
