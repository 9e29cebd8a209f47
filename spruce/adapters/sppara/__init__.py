"""SPPaRA: parallel pointwise structured pruning adapter for convolutions."""

from spruce.adapters.sppara.layer import SPPaRALayer

__all__ = ["SPPaRALayer"]
