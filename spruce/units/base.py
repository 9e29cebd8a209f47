"""What a score-based pruner asks of a model's prunable units, whatever they are.

An implementation holds one model: :class:`~spruce.units.encoder.EncoderUnits` (a
transformer encoder's heads and FFN neurons) or
:class:`~spruce.units.channel_masks.ChannelUnits` (a CNN's coupled channel groups). The
pruner (:class:`spruce.pruning.rounds.ScoreRounds`) only scores, chooses, records and
masks through it, so one schedule serves both.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, TypeVar

from spruce.criteria import Importance

Selection = TypeVar("Selection")


class Units(Protocol[Selection]):
    """The prunable units of one model."""

    def choose(
        self, criterion: Importance, target_sparsity: float, current: Selection | None
    ) -> Selection:
        """Score every unit with ``current`` masked, and keep the best ones so that
        ``target_sparsity`` of the prunable parameters are removed; units ``current``
        removes stay removed."""
        ...

    def encode(self, selection: Selection) -> Any:
        """``selection`` as a checkpoint keeps it (a resumed run does not score again)."""
        ...

    def decode(self, stored: Any) -> Selection:
        """The selection :meth:`encode` stored."""
        ...

    def masked(self, selection: Selection) -> contextlib.AbstractContextManager[None]:
        """The model computing as if the removed units were gone (training goes on)."""
        ...

    def record_key(self, round_index: int) -> str:
        """The checkpoint product name of round ``round_index``'s selection."""
        ...
