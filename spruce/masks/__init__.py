"""Pruning masks: hard-concrete gates per unit type, expected size, sparsity control."""

from spruce.masks.accounting import (
    dense_encoder_params,
    encoder_params_from_masks,
    expected_encoder_params,
    expected_sparsity,
    sparsity_from_masks,
    structure_from_masks,
)
from spruce.masks.control import SparsityController, SparsityStep, make_optimizers
from spruce.masks.gates import EncoderGates
from spruce.masks.hard_concrete import HardConcreteGate
from spruce.masks.units import UNIT_TYPES, UnitMasks

__all__ = [
    "UNIT_TYPES",
    "EncoderGates",
    "HardConcreteGate",
    "SparsityController",
    "SparsityStep",
    "UnitMasks",
    "dense_encoder_params",
    "encoder_params_from_masks",
    "expected_encoder_params",
    "expected_sparsity",
    "make_optimizers",
    "sparsity_from_masks",
    "structure_from_masks",
]
