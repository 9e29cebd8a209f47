"""Masked forward passes, physical compaction into the compact model, its files and ONNX export.

The compact model itself is defined in :mod:`spruce.models.compact`; it is re-exported here
for the callers that compact and save it.
"""

from spruce.compact.compaction import compact_model
from spruce.compact.io import load_pruned, save_pruned
from spruce.compact.masking import MaskHandle, apply_masks
from spruce.compact.onnx_export import check_onnx, export_onnx
from spruce.models.compact import (
    MODEL_TYPE,
    CompactModelForSequenceClassification,
    SpruceCompactConfig,
    SpruceCompactModel,
)

__all__ = [
    "MODEL_TYPE",
    "CompactModelForSequenceClassification",
    "MaskHandle",
    "SpruceCompactConfig",
    "SpruceCompactModel",
    "apply_masks",
    "check_onnx",
    "compact_model",
    "export_onnx",
    "load_pruned",
    "save_pruned",
]
