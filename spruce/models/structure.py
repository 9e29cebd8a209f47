"""Where the prunable parts of an encoder live, described once per architecture family.

Masks, compaction and adapters never name ``query`` or ``intermediate.dense``
themselves: they ask an :class:`ArchitectureDescription` for the modules of layer *i*.
Supporting a new encoder family means registering one more description here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from spruce.errors import SpruceError


@dataclass(frozen=True)
class LayerLayout:
    """Dotted paths, relative to one transformer layer, of the modules pruning acts on."""

    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_input: str
    ffn_output: str
    ffn_norm: str


@dataclass(frozen=True)
class ArchitectureDescription:
    """How one architecture family is laid out (paths are relative to ``model.base_model``)."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    embeddings: str
    word_embeddings: str
    embedding_norm: str
    layer: LayerLayout
    num_layers_field: str = "num_hidden_layers"
    num_heads_field: str = "num_attention_heads"
    hidden_size_field: str = "hidden_size"
    ffn_size_field: str = "intermediate_size"


@dataclass(frozen=True)
class LayerModules:
    """The live modules of one layer, resolved from a :class:`LayerLayout`."""

    index: int
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_output: nn.Linear
    attention_norm: nn.LayerNorm
    ffn_input: nn.Linear
    ffn_output: nn.Linear
    ffn_norm: nn.LayerNorm


@dataclass(frozen=True)
class EncoderShape:
    """Sizes of an encoder; per-layer lists so that pruned models with uneven layers fit."""

    num_layers: int
    hidden_size: int
    head_size: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "head_size": self.head_size,
            "layers": [{"heads": h, "ffn": f} for h, f in zip(self.heads, self.ffn, strict=True)],
        }


_BERT_LAYER = LayerLayout(
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_input="intermediate.dense",
    ffn_output="output.dense",
    ffn_norm="output.LayerNorm",
)

DESCRIPTIONS: dict[str, ArchitectureDescription] = {}
# The model type of spruce's compact encoder (spruce.models.compact), whose layout is below.
COMPACT_MODEL_TYPE = "spruce_compact"


def register_description(description: ArchitectureDescription) -> ArchitectureDescription:
    """Make an architecture family known to every part of spruce."""
    for model_type in description.model_types:
        DESCRIPTIONS[model_type] = description
    return description


register_description(
    ArchitectureDescription(
        family="bert",
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
        layers="encoder.layer",
        embeddings="embeddings",
        word_embeddings="embeddings.word_embeddings",
        embedding_norm="embeddings.LayerNorm",
        layer=_BERT_LAYER,
    )
)
register_description(
    ArchitectureDescription(
        family="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        embeddings="embeddings",
        word_embeddings="embeddings.word_embeddings",
        embedding_norm="embeddings.LayerNorm",
        layer=LayerLayout(
            query="attention.q_lin",
            key="attention.k_lin",
            value="attention.v_lin",
            attention_output="attention.out_lin",
            attention_norm="sa_layer_norm",
            ffn_input="ffn.lin1",
            ffn_output="ffn.lin2",
            ffn_norm="output_layer_norm",
        ),
        num_layers_field="n_layers",
        num_heads_field="n_heads",
        hidden_size_field="dim",
        ffn_size_field="hidden_dim",
    )
)


def describe(config: PretrainedConfig) -> ArchitectureDescription:
    """The description for ``config.model_type``, or a clear error naming those supported."""
    description = DESCRIPTIONS.get(config.model_type)
    if description is None:
        raise SpruceError(
            f"model type '{config.model_type}' has no structure description",
            f"use one of: {', '.join(sorted(DESCRIPTIONS))}",
        )
    return description


def encoder_shape(config: PretrainedConfig) -> EncoderShape:
    """Sizes read from a config; uses per-layer lists when a pruned config records them."""
    d = describe(config)
    layers = int(getattr(config, d.num_layers_field))
    hidden = int(getattr(config, d.hidden_size_field))
    heads = int(getattr(config, d.num_heads_field))
    head_size = int(getattr(config, "attention_head_size", None) or hidden // heads)
    per_layer_heads = getattr(config, "layer_heads", None) or [heads] * layers
    per_layer_ffn = (
        getattr(config, "layer_ffn", None) or [int(getattr(config, d.ffn_size_field))] * layers
    )
    return EncoderShape(layers, hidden, head_size, tuple(per_layer_heads), tuple(per_layer_ffn))


def layer_modules(model: PreTrainedModel) -> list[LayerModules]:
    """The prunable modules of every layer of ``model`` (a base or task model)."""
    d = describe(model.config)
    base = model.base_model
    layers = base.get_submodule(d.layers)
    return [
        LayerModules(
            index=i,
            **{name: layer.get_submodule(getattr(d.layer, name)) for name in _LAYOUT_FIELDS},
        )
        for i, layer in enumerate(layers)
    ]


_LAYOUT_FIELDS = tuple(LayerLayout.__dataclass_fields__)


def encoder_parameters(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """Parameters inside the transformer layers (no embeddings, pooler or task head)."""
    d = describe(model.config)
    return list(model.base_model.get_submodule(d.layers).parameters())


register_description(
    ArchitectureDescription(
        family=COMPACT_MODEL_TYPE,
        model_types=(COMPACT_MODEL_TYPE,),
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
