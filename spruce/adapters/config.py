"""The settings of a Structured Pruning Adapter, saved next to the task's adapter tensors.

``adapter_config.json`` says what adapter a task file holds and how to rebuild the layers
it is loaded into, so it round-trips exactly through :meth:`AdapterConfig.save_pretrained`
and :meth:`AdapterConfig.from_pretrained`; unknown keys are rejected rather than ignored,
because a misspelt setting silently falling back to its default gives a different model.

Fields:

* ``kind``: ``splora`` (low-rank; Linear and convolutions), ``sppara`` (parallel
  pointwise; convolutions) or ``splopa`` (block pruning with shared prototypes; Linear).
* ``rank``: an int, or a float in (0, 1] read as a fraction of the output width of the
  matrix the adapter factors (per group for grouped convolutions; the block height for
  SPLoPA, where it is the prototypes' rank). Rounded, at least 1, at most the matrix's
  smaller side.
* ``scaling``: multiplies the adapter's delta (LoRA's alpha / r).
* ``block_size``: SPLoPA's block, ``[rows, cols]`` (an int means square).
* ``num_prototypes``: SPLoPA's shared prototypes per layer.
* ``target_modules``: module-name patterns to adapt (exact name, dotted suffix such as
  ``"query"``, or a shell-style wildcard such as ``"encoder.*.dense"``); ``None`` adapts
  every layer the kind supports.
* ``trainable``: module-name patterns (same rules) whose own parameters stay trainable and
  are not adapted, e.g. a task's classifier head.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from spruce.errors import SpruceError
from spruce.utils.atomic import write_text_atomic

KINDS = ("splora", "sppara", "splopa")
CONFIG_NAME = "adapter_config.json"


def resolve_rank(rank: int | float, fan_out: int, fan_in: int) -> int:
    """The rank a layer uses for a matrix of ``fan_out x fan_in`` (rules in the module doc).

    The cap at ``min(fan_out, fan_in)`` drops only redundant parameters: a depthwise
    convolution thus gets rank 1 per channel.
    """
    check_rank(rank)
    if isinstance(rank, float):
        rank = max(1, round(rank * fan_out))
    return min(rank, fan_out, fan_in)


def check_rank(rank: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int | float):
        raise SpruceError(f"adapter rank must be an int or a float, got {rank!r}")
    if isinstance(rank, float) and not 0.0 < rank <= 1.0:
        raise SpruceError(
            f"a float adapter rank is a fraction of the output width, got {rank}",
            "use a value in (0, 1], or an int >= 1 for an absolute rank",
        )
    if isinstance(rank, int) and rank < 1:
        raise SpruceError(f"adapter rank must be >= 1, got {rank}")


def block_shape(block_size: Any) -> tuple[int, int]:
    """``8`` -> ``(8, 8)``; ``[4, 8]`` -> ``(4, 8)``; anything else is an error."""
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        block_size = (block_size, block_size)
    if (
        not isinstance(block_size, list | tuple)
        or len(block_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in block_size)
    ):
        raise SpruceError(
            f"block_size must be a positive int or a pair of them, got {block_size!r}",
            "write e.g. 32 or [32, 64] (rows x columns of a weight block)",
        )
    return int(block_size[0]), int(block_size[1])


@dataclass
class AdapterConfig:
    """What adapter to put where; see the module docstring for each field."""

    kind: str = "splora"
    rank: int | float = 8
    scaling: float = 1.0
    block_size: tuple[int, int] = (32, 32)
    num_prototypes: int = 16
    target_modules: list[str] | None = None
    trainable: list[str] | None = None

    def validate(self) -> AdapterConfig:
        if not isinstance(self.kind, str):
            raise SpruceError(
                f"adapter kind must be a name, got {self.kind!r}", f"use one of {', '.join(KINDS)}"
            )
        if self.kind not in KINDS:
            raise SpruceError(
                f"adapter kind '{self.kind}' is not known{_did_you_mean(self.kind, KINDS)}",
                f"use one of {', '.join(KINDS)}",
            )
        check_rank(self.rank)
        if isinstance(self.scaling, bool) or not (
            isinstance(self.scaling, int | float) and math.isfinite(self.scaling)
        ):
            raise SpruceError(f"adapter scaling must be a finite number, got {self.scaling!r}")
        self.block_size = block_shape(self.block_size)
        prototypes = self.num_prototypes
        if isinstance(prototypes, bool) or not (isinstance(prototypes, int) and prototypes >= 1):
            raise SpruceError(f"num_prototypes must be an int >= 1, got {prototypes!r}")
        for name in ("target_modules", "trainable"):
            patterns = getattr(self, name)
            if patterns is None:
                continue
            if not isinstance(patterns, list | tuple) or not all(
                isinstance(p, str) for p in patterns
            ):
                raise SpruceError(
                    f"{name} must be a list of module-name patterns, got {patterns!r}",
                    'write e.g. ["query", "value"]',
                )
            setattr(self, name, list(patterns))
        return self

    def describe(self) -> str:
        """The fields that decide whether two tasks' adapters fit one base, for messages."""
        return f"kind={self.kind}, rank={self.rank}, scaling={self.scaling}"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["block_size"] = list(self.block_size)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        if not isinstance(data, Mapping):
            raise SpruceError(f"an adapter config must be a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise SpruceError(
                    f"unknown adapter config key '{key}'{_did_you_mean(key, known)}",
                    f"known keys: {', '.join(known)}",
                )
        return cls(**dict(data)).validate()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``adapter_config.json`` into ``directory`` (created if needed), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        text = json.dumps(self.validate().to_dict(), indent=2, sort_keys=True) + "\n"
        write_text_atomic(path, text)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AdapterConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise SpruceError(
                f"no {CONFIG_NAME} in {directory}",
                "pass the folder an adapter was saved to with save_pretrained",
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise SpruceError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise SpruceError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
