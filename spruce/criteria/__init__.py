"""Importance criteria for structured units (heads, FFN neurons, CNN channels), one small
class each."""

from spruce.criteria.base import Importance, accumulate_gradients
from spruce.criteria.gradient import GradientImportance, TaylorImportance
from spruce.criteria.lrp import LRPImportance
from spruce.criteria.magnitude import WeightImportance

CRITERIA: dict[str, type[Importance]] = {
    cls.name: cls for cls in (WeightImportance, GradientImportance, TaylorImportance, LRPImportance)
}

__all__ = [
    "CRITERIA",
    "GradientImportance",
    "Importance",
    "LRPImportance",
    "TaylorImportance",
    "WeightImportance",
    "accumulate_gradients",
]
