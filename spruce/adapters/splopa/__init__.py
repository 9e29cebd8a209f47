"""SPLoPA: block structured pruning adapter with shared low-rank prototypes."""

from spruce.adapters.splopa.layer import SPLoPALayer

__all__ = ["SPLoPALayer"]
