"""Settings of one CNN task run (:func:`spruce.pipelines.adapt_image.run_cnn_adapt`): data,
schedule, pruning and adapter, and which of them a resumed attempt may change."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spruce.adapters import AdapterConfig
from spruce.criteria import CRITERIA
from spruce.errors import SpruceError
from spruce.train.checkpoint import DEFAULT_EVERY_STEPS

# Settings of one attempt at a run (checkpointing may be switched or tuned from one attempt
# to the next): in neither the report nor the checkpoint's fingerprint.
ATTEMPT_SETTINGS = ("resume", "checkpoint_steps")
# Where a run writes and how it runs: reported, but a resumed attempt may change them, as
# it may the text pipelines' output and runtime options.
RUNTIME_SETTINGS = (
    "out",
    "overwrite",
    "threads",
    "progress",
    "export_onnx",
    "measure_latency",
    "latency_repeats",
)


@dataclass
class CNNAdaptConfig:
    """One task: data, schedule, pruning and adapter settings (see
    :mod:`spruce.pipelines.adapt_image`).

    ``target_sparsity`` is the fraction of the prunable conv/linear parameters (classifier
    excluded, as :func:`~spruce.vision.prunable_parameter_count` counts them) to remove;
    ``rank`` an int, or a float fraction of each layer's output width; ``max_steps`` caps
    every training phase (quick checks). ``checkpoint_steps`` and ``resume`` are the
    text pipelines' checkpoint settings (:class:`~spruce.pipelines.common.RunSettings`).
    """

    train: str | Path
    out: str | Path
    model: str = "efficientnet-lite0"
    validation: str | Path | None = None
    test: str | Path | None = None
    image_size: int = 32
    max_train_samples: int | None = None
    seed: int = 0
    dense_epochs: int = 1
    epochs_per_round: int = 1
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    criterion: str = "weight"
    target_sparsity: float = 0.7
    rounds: int = 3
    adapter: str = "splora"
    rank: int | float = 8
    scaling: float = 1.0
    fine_prune: bool = False
    max_steps: int | None = None
    score_batches: int = 8
    export_onnx: bool = True
    measure_latency: bool = True
    latency_repeats: int = 10
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True
    resume: bool = False
    checkpoint_steps: int = DEFAULT_EVERY_STEPS

    def validate(self) -> CNNAdaptConfig:
        if self.criterion not in CRITERIA:
            raise SpruceError(
                f"unknown channel criterion '{self.criterion}'",
                f"use one of {', '.join(CRITERIA)}",
            )
        if self.adapter not in ("splora", "sppara"):
            raise SpruceError(f"CNN adapter '{self.adapter}' is not known", "use splora or sppara")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise SpruceError(f"target sparsity {self.target_sparsity} is outside [0, 1)")
        counts = {
            "rounds": self.rounds,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
        }
        for name, value in counts.items():
            if value < 1:
                raise SpruceError(f"{name} must be at least 1, got {value}")
        for name in ("dense_epochs", "epochs_per_round", "epochs"):
            if getattr(self, name) < 0:
                raise SpruceError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise SpruceError(f"lr must be positive, got {self.lr}")
        self.adapter_config().validate()
        return self

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(kind=self.adapter, rank=self.rank, scaling=self.scaling)

    def to_dict(self) -> dict[str, Any]:
        """The report's ``config``: every setting but those of one attempt at the run."""
        return {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(self).items()
            if k not in ATTEMPT_SETTINGS
        }

    def fingerprinted(self) -> dict[str, Any]:
        """The settings a checkpoint must have been written with to be continued; output
        and runtime settings may change between attempts, as for the text pipelines."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_SETTINGS}
