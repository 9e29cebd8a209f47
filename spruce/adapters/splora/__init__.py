"""SPLoRA: low-rank structured pruning adapter for Linear and convolution layers."""

from spruce.adapters.splora.layer import SPLoRALayer

__all__ = ["SPLoRALayer"]
