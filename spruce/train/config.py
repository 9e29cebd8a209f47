"""Optimisation settings shared by every training phase (fine-tuning now; pruning later)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from spruce.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Bounds,
    check_settings,
    setting,
)
from spruce.errors import SpruceError


def _metric_names() -> list[str]:
    from spruce.report.metrics import METRICS  # metric names only; imported when checked

    return sorted(METRICS)


@dataclass
class TrainConfig:
    """Settings of one training phase; ``to_dict``/``from_dict`` round-trip through JSON."""

    epochs: float = setting(5.0, "training epochs (a fraction ends mid-epoch)", bounds=POSITIVE)
    max_steps: int | None = setting(
        None, "stop after this many optimizer steps (overrides --epochs)", bounds=AT_LEAST_ONE
    )
    batch_size: int = setting(32, "labelled examples a step", bounds=POSITIVE)
    eval_batch_size: int = setting(128, "examples a forward pass in evaluation", bounds=POSITIVE)
    learning_rate: float = setting(
        1e-4, "peak learning rate (AdamW)", aliases=("--lr",), bounds=POSITIVE
    )
    weight_decay: float = setting(0.01, "AdamW weight decay", bounds=NON_NEGATIVE)
    warmup_ratio: float = setting(
        0.1, "fraction of steps with linear learning-rate warm-up", bounds=FRACTION
    )
    max_grad_norm: float = setting(1.0, "gradient clipping; 0: off", bounds=NON_NEGATIVE)
    eval_steps: int | None = setting(
        None, "also evaluate every N steps (default: at each epoch end)", bounds=AT_LEAST_ONE
    )
    patience: int | None = setting(
        3, "stop after N evaluations without improvement", bounds=AT_LEAST_ONE
    )
    metric: str = setting(
        "accuracy", "primary metric for model selection and reports", choices=_metric_names
    )
    # NumPy's legacy seeding, which seed_everything uses, takes 32-bit seeds only.
    seed: int = setting(
        0,
        "seeds sampling, initialisation and data order",
        bounds=Bounds(low=0, high=2**32 - 1),
        fix="pass a non-negative 32-bit seed, e.g. --seed 0",
    )

    def __post_init__(self) -> None:
        check_settings(self)

    def validate(self) -> TrainConfig:
        check_settings(self)
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of a phase with these settings over ``steps_per_epoch`` batches
        an epoch: ``max_steps``, else a partial last epoch counts as a step."""
        return self.max_steps or max(1, math.ceil(self.epochs * steps_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpruceError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values).validate()
