"""Pruning masks: hard-concrete gates per unit type, expected size, sparsity control."""

from spruce.masks.units import UNIT_TYPES, UnitMasks

__all__ = ["UNIT_TYPES", "UnitMasks"]
