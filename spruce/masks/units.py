"""The unit types structured pruning removes, and one container for their mask values.

See docs/pruning-semantics.md for exactly what each mask multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

UNIT_TYPES = ("head", "mha_layer", "ffn_neuron", "ffn_layer", "hidden")
PER_LAYER_UNITS = ("head", "ffn_neuron")  # 2-D gates whose groups are rows (layers)


@dataclass
class UnitMasks:
    """Mask values per unit type; ``None`` means that unit type is not pruned (all ones).

    Shapes: ``head`` [L, H], ``mha_layer`` [L], ``ffn_neuron`` [L, F], ``ffn_layer`` [L],
    ``hidden`` [D]. Values lie in [0, 1]; 0 removes the unit.
    """

    head: torch.Tensor | None = None
    mha_layer: torch.Tensor | None = None
    ffn_neuron: torch.Tensor | None = None
    ffn_layer: torch.Tensor | None = None
    hidden: torch.Tensor | None = None

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [
            (f.name, getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        ]

    def detach(self) -> UnitMasks:
        return UnitMasks(**{name: value.detach() for name, value in self.items()})

    def to(self, device: torch.device | str) -> UnitMasks:
        return UnitMasks(**{name: value.to(device) for name, value in self.items()})
