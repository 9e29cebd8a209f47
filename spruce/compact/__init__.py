"""Masked forward passes, physical compaction, the compact model, its files and ONNX export.

Importing this package registers the compact model with transformers' Auto classes and its
layout with :mod:`spruce.models.structure`, so ``from_pretrained``, ``layer_modules`` and
``encoder_shape`` all work on compacted models.
"""

from spruce.compact.compaction import compact_model
from spruce.compact.io import load_pruned, save_pruned
from spruce.compact.masking import MaskHandle, apply_masks
from spruce.compact.modeling import (
    MODEL_TYPE,
    CompactModelForSequenceClassification,
    SpruceCompactConfig,
    SpruceCompactModel,
)
from spruce.compact.onnx_export import check_onnx, export_onnx
from spruce.models.structure import ArchitectureDescription, LayerLayout, register_description

register_description(
    ArchitectureDescription(
        family=MODEL_TYPE,
        model_types=(MODEL_TYPE,),
        layers="layers",
        embeddings="embeddings",
        word_embeddings="embeddings.word_embeddings",
        embedding_norm="embeddings.norm",
        layer=LayerLayout(
            query="attention.query",
            key="attention.key",
            value="attention.value",
            attention_output="attention.output",
            attention_norm="attention_norm",
            ffn_input="ffn.intermediate",
            ffn_output="ffn.output",
            ffn_norm="ffn_norm",
        ),
    )
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
