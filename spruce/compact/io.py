"""Saving and loading compacted models (safetensors weights + config with per-layer sizes)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerBase

from spruce.errors import SpruceError
from spruce.models.compact import (
    MODEL_TYPE,
    CompactModelForSequenceClassification,
    SpruceCompactConfig,
    register_auto_classes,
)
from spruce.models.loading import load_tokenizer, read_weights, saved_model_dir


def save_pruned(
    model: CompactModelForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` into ``directory``; returns it."""
    if not isinstance(model, CompactModelForSequenceClassification):
        raise SpruceError(
            f"save_pruned needs a compacted model, got {type(model).__name__}",
            "compact it first with spruce.compact.compact_model(model, masks)",
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_pruned(
    path: str | Path,
) -> tuple[CompactModelForSequenceClassification, PreTrainedTokenizerBase]:
    """A compacted model and its tokenizer from ``path`` (a run directory or its ``model/``)."""
    path = saved_model_dir(path, "spruce prune")
    register_auto_classes()
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise SpruceError(
            f"{path}/config.json cannot be read ({str(error).splitlines()[0][:200]})",
            "pass the directory written by save_pruned",
        ) from None
    if not isinstance(config, SpruceCompactConfig):
        raise SpruceError(
            f"{path} holds a '{config.model_type}' model, not a compacted ({MODEL_TYPE}) one",
            "load dense fine-tuned models with spruce.models.load_saved_classifier, "
            "or compact the model first",
        )
    model = read_weights(
        lambda: CompactModelForSequenceClassification.from_pretrained(str(path), config=config),
        path,
    )
    return model, load_tokenizer(str(path))
