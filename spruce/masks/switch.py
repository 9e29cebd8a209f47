"""Several gate sets on one model, one active at a time.

Mask hooks take a single source of masks (:func:`spruce.compact.apply_masks`); when
tasks share an encoder but each has gates of its own (transfer learning with separate
or tied structures), that source is a :class:`GateSwitch`, and each task's forward pass
runs inside ``switch.using(name)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from spruce.errors import SpruceError
from spruce.masks.gates import EncoderGates
from spruce.masks.units import UnitMasks


class GateSwitch:
    """A callable mask source that answers with the active gate set's masks."""

    def __init__(self, gate_sets: Mapping[str, EncoderGates], active: str) -> None:
        if active not in gate_sets:
            raise SpruceError(f"no gate set named '{active}'", f"use one of {list(gate_sets)}")
        self.gate_sets = dict(gate_sets)
        self.active = active

    def __call__(self) -> UnitMasks:
        return self.gate_sets[self.active]()

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[EncoderGates]:
        """Make ``name`` the active set inside the block, restoring the previous one after."""
        if name not in self.gate_sets:
            raise SpruceError(f"no gate set named '{name}'", f"use one of {list(self.gate_sets)}")
        previous, self.active = self.active, name
        try:
            yield self.gate_sets[name]
        finally:
            self.active = previous
