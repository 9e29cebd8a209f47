"""Structured Pruning Adapters on transformer encoders: wiring, the per-task file, the bank.

:mod:`~spruce.spa.wiring` puts :mod:`spruce.adapters` layers on each layer's six linear
maps (found through the structure description) and gives criteria and compaction the
plain view they read; :mod:`~spruce.spa.task_file` writes and reads one task's own
tensors; :class:`~spruce.spa.bank.TaskBank` serves many tasks from one frozen base.
"""

from spruce.spa.bank import TaskBank
from spruce.spa.config import AdaptConfig
from spruce.spa.task_file import BaseReference, TaskRecord, load_task, save_task
from spruce.spa.wiring import (
    ADAPT_UNITS,
    base_fingerprint,
    head_module_names,
    head_parameters,
    inject_transformer_adapters,
    merged_plain_copy,
    scoring_view,
    set_unit_masks,
)

__all__ = [
    "ADAPT_UNITS",
    "AdaptConfig",
    "BaseReference",
    "TaskBank",
    "TaskRecord",
    "base_fingerprint",
    "head_module_names",
    "head_parameters",
    "inject_transformer_adapters",
    "load_task",
    "merged_plain_copy",
    "save_task",
    "scoring_view",
    "set_unit_masks",
]
