"""Structured Pruning Adapters (method B): a frozen base, a tiny prunable change per task.

One folder per adapter kind (``splora/``, ``sppara/``, ``splopa/``), a shared
:class:`SPAdapterLayer` base, an explicit :class:`AdapterConfig` that round-trips through
``adapter_config.json``, and :mod:`spruce.adapters.inject` to put adapters into a model,
merge them, fuse them into compact layers, and save or load one task's state.
"""

from spruce.adapters.base import SPAdapterLayer
from spruce.adapters.config import AdapterConfig
from spruce.adapters.inject import (
    ADAPTER_LAYERS,
    adapter_state,
    find_adapters,
    fuse_adapters,
    inject_adapters,
    load_adapter_state,
    make_adapter_layer,
    merge_adapters,
    unmerge_adapters,
)
from spruce.adapters.splopa import SPLoPALayer
from spruce.adapters.splora import SPLoRALayer
from spruce.adapters.sppara import SPPaRALayer

__all__ = [
    "ADAPTER_LAYERS",
    "AdapterConfig",
    "SPAdapterLayer",
    "SPLoPALayer",
    "SPLoRALayer",
    "SPPaRALayer",
    "adapter_state",
    "find_adapters",
    "fuse_adapters",
    "inject_adapters",
    "load_adapter_state",
    "make_adapter_layer",
    "merge_adapters",
    "unmerge_adapters",
]
