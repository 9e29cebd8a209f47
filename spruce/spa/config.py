"""Settings of one ``spruce adapt`` run, validated and JSON round-trippable."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from spruce.adapters import AdapterConfig
from spruce.adapters.config import KINDS, block_shape
from spruce.config import AT_LEAST_ONE, POSITIVE, Bounds, check_settings, setting
from spruce.errors import SpruceError
from spruce.masks.control import CONTROLS
from spruce.utils.fields import checked_fields

LEARNED = "l0"  # hard-concrete masks instead of a criterion


def criterion_names() -> tuple[str, ...]:
    """Scoring criteria known now (read at call time: criteria may be registered later)."""
    from spruce.criteria import CRITERIA

    return (*CRITERIA, LEARNED)


def rank_value(text: str) -> int | float:
    """An absolute rank (whole number >= 1) or a fraction of each layer's width in (0, 1)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"expected a whole number >= 1 or a fraction in (0, 1), got '{text}'"
            ) from None
        if not 0 < value < 1:
            raise ValueError(f"a fractional rank must lie in (0, 1), got '{text}'") from None
        return value
    if value < 1:
        raise ValueError(f"expected a rank of at least 1, got '{text}'")
    return value


def _block_side(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise ValueError(f"expected a positive whole number, got '{text}'")
    return value


GROUP = "adapters and pruning"


@dataclass
class AdaptConfig:
    """What adapter, which pruning criterion, how hard, and the length of each phase.

    Phases: ``prune_rounds`` rounds of score -> remove units up to ``target * round /
    rounds`` -> train ``epochs_per_round`` (for ``l0``: one phase of ``prune_rounds *
    epochs_per_round`` epochs learning hard-concrete masks), then ``final_epochs`` with the
    masks fixed. ``fine_prune`` trains every weight and no adapter (the paper's baseline).
    """

    adapter: str = setting(
        "splora",
        "splora: low-rank channel adapter; splopa: block adapter with shared prototypes",
        choices=KINDS,  # sppara is refused with a reason rather than as an unknown word
        group=GROUP,
    )
    rank: int | float = setting(
        8, "adapter rank, or a fraction of width", parse=rank_value, group=GROUP
    )
    scaling: float = setting(1.0, "multiplies the delta", group=GROUP)
    block_size: int | tuple[int, int] = setting(
        (32, 32), "splopa: square block side", parse=_block_side, metavar="N", group=GROUP
    )
    num_prototypes: int = setting(16, "splopa: shared prototypes", bounds=AT_LEAST_ONE, group=GROUP)
    criterion: str = setting(
        "taylor",
        "unit importance (scored progressively), or l0: learned hard-concrete masks",
        choices=criterion_names,
        group=GROUP,
    )
    target_sparsity: float = setting(
        0.5,
        "fraction of the prunable weights to remove",
        bounds=Bounds(low=0, high=1, low_open=True, high_open=True),
        fix="e.g. 0.9 removes 90% of the encoder's attention and FFN weights",
        group=GROUP,
    )
    prune_rounds: int = setting(
        3,
        "score-prune-train rounds (l0: one phase as long as all rounds)",
        bounds=AT_LEAST_ONE,
        group=GROUP,
    )
    epochs_per_round: float = setting(
        1.0, "training after each round", bounds=POSITIVE, group=GROUP
    )
    final_epochs: float | None = setting(
        None, "training with the structure fixed (default: --epochs)", bounds=POSITIVE, group=GROUP
    )
    fine_prune: bool = setting(
        False,
        "no adapters, every weight learns (the baseline adapters are compared with)",
        group=GROUP,
    )
    # FFN widths of the result are multiples of this (faster matrix products on CPUs).
    size_multiple: int = setting(
        8, "round kept FFN widths to multiples of this", bounds=AT_LEAST_ONE, group=GROUP
    )
    sparsity_warmup: float = setting(
        0.5,
        "--criterion l0: fraction of the steps over which the target ramps up",
        bounds=Bounds(low=0, high=1),
        group=GROUP,
    )
    # l0 criterion: see spruce.masks.control (exact: on the ramp by construction).
    sparsity_control: str = setting(
        "exact",
        "--criterion l0: exact holds the expected sparsity on the ramp by construction; "
        "lagrangian: CoFi's learned multipliers (--lr-lambda)",
        choices=CONTROLS,
        group=GROUP,
    )
    lr_gates: float = setting(
        0.1, "--criterion l0: learning rate of the gates", bounds=POSITIVE, group=GROUP
    )
    lr_lambda: float = setting(
        0.1,
        "--sparsity-control lagrangian: learning rate of the multipliers",
        bounds=POSITIVE,
        group=GROUP,
    )
    image_size: int = setting(
        32, "CNNs: images are resized to this square size", bounds=AT_LEAST_ONE, group=GROUP
    )
    export_onnx: bool = setting(True, "export the fused model to ONNX", flag="--onnx", group=GROUP)
    measure_latency: bool = setting(
        True, "measure the dense and fused models' latency", flag="--latency", group=GROUP
    )
    latency_repeats: int = setting(
        10, "timed repeats per measurement", bounds=AT_LEAST_ONE, group=GROUP
    )

    def __post_init__(self) -> None:
        check_settings(self)

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            kind=self.adapter,
            rank=self.rank,
            scaling=self.scaling,
            block_size=self.block_size,
            num_prototypes=self.num_prototypes,
        ).validate()

    def validate(self) -> AdaptConfig:
        check_settings(self)
        if self.adapter == "sppara":
            raise SpruceError(
                "--adapter sppara adapts convolutions; a transformer's layers are Linear",
                "use --adapter splora (low-rank) or splopa (block) for transformers",
            )
        if isinstance(self.rank, float) and not 0 < self.rank < 1:
            raise SpruceError(
                f"--rank {self.rank}: a fractional rank is a share of each layer's width",
                "give a whole number >= 1 or a fraction in (0, 1)",
            )
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
        """Settings as :meth:`to_dict` writes them; a wrong key or value type is a
        :class:`SpruceError` naming the setting."""
        return cls(**checked_fields(cls, values, "adapt setting")).validate()
