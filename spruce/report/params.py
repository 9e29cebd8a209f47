"""Parameter counts taken from tensor shapes."""

from __future__ import annotations

from transformers import PreTrainedModel

from spruce.models.structure import encoder_parameters


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """``total``: every parameter; ``encoder``: those of the transformer layers only
    (attention, FFN and their LayerNorms; not embeddings, pooler or head)."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "encoder": sum(p.numel() for p in encoder_parameters(model)),
    }
