"""Settings of one ``spruce adapt`` run, validated and JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from spruce.adapters import AdapterConfig
from spruce.adapters.config import block_shape
from spruce.errors import SpruceError
from spruce.masks.control import CONTROLS

TRANSFORMER_ADAPTERS = ("splora", "splopa")
LEARNED = "l0"  # hard-concrete masks instead of a criterion


def criterion_names() -> tuple[str, ...]:
    """Scoring criteria known now (read at call time: criteria may be registered later)."""
    from spruce.criteria import CRITERIA

    return (*CRITERIA, LEARNED)


@dataclass
class AdaptConfig:
    """What adapter, which pruning criterion, how hard, and the length of each phase.

    Phases: ``prune_rounds`` rounds of score -> remove units up to ``target * round /
    rounds`` -> train ``epochs_per_round`` (for ``l0``: one phase of ``prune_rounds *
    epochs_per_round`` epochs learning hard-concrete masks), then ``final_epochs`` with the
    masks fixed. ``fine_prune`` trains every weight and no adapter (the paper's baseline).
    """

    adapter: str = "splora"
    rank: int | float = 8
    scaling: float = 1.0
    block_size: int | tuple[int, int] = (32, 32)
    num_prototypes: int = 16
    criterion: str = "taylor"
    target_sparsity: float = 0.5
    prune_rounds: int = 3
    epochs_per_round: float = 1.0
    final_epochs: float = 3.0
    fine_prune: bool = False
    # FFN widths of the result are multiples of this (faster matrix products on CPUs).
    size_multiple: int = 8
    sparsity_warmup: float = 0.5
    # l0 criterion: see spruce.masks.control (exact: on the ramp by construction).
    sparsity_control: str = "exact"
    lr_gates: float = 0.1
    lr_lambda: float = 0.1
    export_onnx: bool = True
    measure_latency: bool = True
    latency_repeats: int = 10

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            kind=self.adapter,
            rank=self.rank,
            scaling=self.scaling,
            block_size=self.block_size,
            num_prototypes=self.num_prototypes,
        ).validate()

    def validate(self) -> AdaptConfig:
        _check_types(self)
        if self.adapter == "sppara":
            raise SpruceError(
                "--adapter sppara adapts convolutions; a transformer's layers are Linear",
                "use --adapter splora (low-rank) or splopa (block) for transformers",
            )
        if self.adapter not in TRANSFORMER_ADAPTERS:
            raise SpruceError(
                f"--adapter {self.adapter} is not known",
                f"use one of {', '.join(TRANSFORMER_ADAPTERS)}",
            )
        known = criterion_names()
        if self.criterion not in known:
            raise SpruceError(
                f"--criterion {self.criterion} is not known", f"use one of {', '.join(known)}"
            )
        if isinstance(self.rank, float) and not 0 < self.rank < 1:
            raise SpruceError(
                f"--rank {self.rank}: a fractional rank is a share of each layer's width",
                "give a whole number >= 1 or a fraction in (0, 1)",
            )
        if not 0 < self.target_sparsity < 1:
            raise SpruceError(
                f"--target-sparsity must be in (0, 1), got {self.target_sparsity}",
                "e.g. 0.9 removes 90% of the encoder's attention and FFN weights",
            )
        for name in ("epochs_per_round", "final_epochs", "lr_gates", "lr_lambda"):
            if not getattr(self, name) > 0:
                raise SpruceError(f"--{name.replace('_', '-')} must be positive")
        if not 0 <= self.sparsity_warmup <= 1:
            raise SpruceError(f"sparsity_warmup must be in [0, 1], got {self.sparsity_warmup}")
        if self.sparsity_control not in CONTROLS:
            raise SpruceError(
                f"--sparsity-control {self.sparsity_control} is not known",
                f"use one of {', '.join(CONTROLS)}",
            )
        for name in ("prune_rounds", "size_multiple", "latency_repeats"):
            if getattr(self, name) < 1:
                raise SpruceError(f"--{name.replace('_', '-')} must be at least 1")
        self.block_size = block_shape(self.block_size)
        self.adapter_config()  # rank, scaling and prototypes as the adapters check them
        return self

    @property
    def mode(self) -> str:
        return "fine-prune" if self.fine_prune else "adapt"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["block_size"] = list(block_shape(self.block_size))
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaptConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpruceError(f"unknown adapt settings: {', '.join(unknown)}")
        return cls(**values).validate()


_FLOATS = ("target_sparsity", "epochs_per_round", "final_epochs", "sparsity_warmup")
_FLOATS += ("lr_gates", "lr_lambda")
_INTS = ("prune_rounds", "size_multiple", "latency_repeats")
_BOOLS = ("fine_prune", "export_onnx", "measure_latency")


def _check_types(config: AdaptConfig) -> None:
    """Settings also come from JSON (reports, grids): a wrong type is named, not a
    ``TypeError`` deep in a comparison."""
    for name in ("adapter", "criterion", "sparsity_control"):
        if not isinstance(getattr(config, name), str):
            raise SpruceError(f"adapt setting '{name}' must be text, got {getattr(config, name)!r}")
    for name in _FLOATS:
        value = getattr(config, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise SpruceError(f"adapt setting '{name}' must be a finite number, got {value!r}")
    for name in _INTS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpruceError(f"adapt setting '{name}' must be a whole number, got {value!r}")
    for name in _BOOLS:
        if not isinstance(getattr(config, name), bool):
            raise SpruceError(f"adapt setting '{name}' must be true or false")
