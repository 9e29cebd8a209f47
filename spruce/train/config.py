"""Optimisation settings shared by every training phase (fine-tuning now; pruning later)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from spruce.errors import SpruceError


@dataclass
class TrainConfig:
    """Settings of one training phase; ``to_dict``/``from_dict`` round-trip through JSON."""

    epochs: float = 5.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_steps: int | None = None
    patience: int | None = 3
    metric: str = "accuracy"
    seed: int = 0

    def validate(self) -> TrainConfig:
        from spruce.report.metrics import METRICS

        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "learning_rate": self.learning_rate,
        }
        for name, value in positive.items():
            if not value > 0:
                raise SpruceError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("max_steps", "eval_steps", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SpruceError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not 0 <= self.warmup_ratio < 1:
            raise SpruceError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise SpruceError("--weight-decay and --max-grad-norm must not be negative")
        if not 0 <= self.seed < 2**32:
            # NumPy's legacy seeding, which seed_everything uses, takes 32-bit seeds only.
            raise SpruceError(
                f"--seed must be between 0 and {2**32 - 1}, got {self.seed}",
                "pass a non-negative 32-bit seed, e.g. --seed 0",
            )
        if self.metric not in METRICS:
            raise SpruceError(
                f"--metric {self.metric} is not known", f"choose one of {', '.join(METRICS)}"
            )
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
