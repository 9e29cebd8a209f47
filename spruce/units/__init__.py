"""The units a pruner removes, and their parameter cost.

* A transformer encoder's units (attention heads and layers, FFN neurons and layers,
  hidden dimensions) are described by :mod:`spruce.models.structure`, masked by
  :mod:`spruce.masks` / :mod:`spruce.compact` and chosen by :mod:`spruce.pruning`.
* A CNN's units are torch-pruning's coupled channel groups
  (:mod:`spruce.units.channel_groups`: groups, parameter counts, plans, physical
  removal), masked on a live (adapted) model and fused by name
  (:mod:`spruce.units.channel_masks`).

Both are scored by the same criteria (:mod:`spruce.criteria`).
"""
