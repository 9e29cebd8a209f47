"""Physical compaction: slice removed units out of a masked model and fold the mask values in.

The result is a :class:`CompactModelForSequenceClassification` whose eval-mode outputs equal
the masked model's (docs/pruning-semantics.md, "Compaction (exact)"). Folding is done in
float64 and cast back, so that it adds no rounding of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from spruce.compact.masking import check_mask_shapes
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models.compact import CompactModelForSequenceClassification, SpruceCompactConfig
from spruce.models.loading import TASK_METADATA_KEY
from spruce.models.structure import (
    EncoderShape,
    LayerModules,
    describe,
    encoder_shape,
    layer_modules,
)


@dataclass(frozen=True)
class _Family:
    classifier_kind: str
    position_kind: str


_FAMILIES = {
    "bert": _Family("bert", "absolute"),
    "roberta": _Family("roberta", "padding_offset"),
    "xlm-roberta": _Family("roberta", "padding_offset"),
    "camembert": _Family("roberta", "padding_offset"),
    "distilbert": _Family("distilbert", "absolute"),
}


def compact_model(
    model: PreTrainedModel, masks: UnitMasks | None = None
) -> CompactModelForSequenceClassification:
    """A smaller dense copy of ``model`` under fixed ``masks`` (None: nothing removed).

    ``model`` is a bert, roberta or distilbert ``*ForSequenceClassification``; it is not
    modified. The copy is in eval mode, on the source's device and dtype.
    """
    family = _FAMILIES.get(model.config.model_type)
    if family is None:
        raise SpruceError(
            f"compaction does not support model type '{model.config.model_type}'",
            f"use one of: {', '.join(sorted(_FAMILIES))}",
        )
    masks = (masks or UnitMasks()).detach().to("cpu")
    shape = encoder_shape(model.config)
    check_mask_shapes(masks, shape)
    parameter = next(model.parameters())

    hidden = _values(masks.hidden, shape.hidden_size)
    kept = _kept(hidden)
    if kept.numel() == 0:
        raise SpruceError("the hidden mask removes every dimension", "keep at least one")
    hidden_scale = hidden[kept]

    state: dict[str, torch.Tensor] = {}
    _compact_embeddings(state, model, kept, hidden_scale)
    layer_heads, layer_ffn = [], []
    for layer in layer_modules(model):
        layer_heads.append(_compact_attention(state, layer, masks, shape, kept, hidden_scale))
        layer_ffn.append(_compact_ffn(state, layer, masks, shape, kept, hidden_scale))
    dense, out_proj = _head_modules(model, family)
    state["classifier.dense.weight"] = _w(dense.weight)[:, kept]
    state["classifier.dense.bias"] = _w(dense.bias)
    state["classifier.out_proj.weight"] = _w(out_proj.weight)
    state["classifier.out_proj.bias"] = _w(out_proj.bias)

    config = _compact_config(model, family, int(kept.numel()), layer_heads, layer_ffn, dense)
    compact = CompactModelForSequenceClassification(config)
    compact.load_state_dict({k: v.to(parameter.dtype) for k, v in state.items()}, strict=True)
    return compact.to(parameter.device).eval()


def _compact_embeddings(
    state: dict[str, torch.Tensor],
    model: PreTrainedModel,
    kept: torch.Tensor,
    hidden_scale: torch.Tensor,
) -> None:
    """The embedding tables sliced to the kept hidden dimensions, and their norm with the
    hidden mask values folded in."""
    base = model.base_model
    description = describe(model.config)
    embeddings = base.get_submodule(description.embeddings)
    prefix = "compact.embeddings"
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        table = getattr(embeddings, name, None)
        if table is not None:
            state[f"{prefix}.{name}.weight"] = _w(table.weight)[:, kept]
    embedding_norm = base.get_submodule(description.embedding_norm)
    # The embedding output is LN_kept(e) * hidden: the hidden values fold into the affine part.
    state[f"{prefix}.norm.weight"] = _w(embedding_norm.weight)[kept] * hidden_scale
    state[f"{prefix}.norm.bias"] = _w(embedding_norm.bias)[kept] * hidden_scale


def _compact_attention(
    state: dict[str, torch.Tensor],
    layer: LayerModules,
    masks: UnitMasks,
    shape: EncoderShape,
    kept: torch.Tensor,
    hidden_scale: torch.Tensor,
) -> int:
    """One layer's attention sliced to its kept heads and hidden dimensions, the head,
    block and hidden mask values folded into its output; returns how many heads it keeps."""
    i, prefix = layer.index, f"compact.layers.{layer.index}"
    heads = _values(None if masks.head is None else masks.head[i], shape.heads[i])
    block = _values(None if masks.mha_layer is None else masks.mha_layer[i : i + 1], 1)
    kept_heads = _kept(heads * block)
    rows = (kept_heads[:, None] * shape.head_size + torch.arange(shape.head_size)).flatten()
    for name in ("query", "key", "value"):
        linear = getattr(layer, name)
        state[f"{prefix}.attention.{name}.weight"] = _w(linear.weight)[rows][:, kept]
        state[f"{prefix}.attention.{name}.bias"] = _w(linear.bias)[rows]
    column_scale = heads.repeat_interleave(shape.head_size)[rows]
    _fold_output(
        state,
        f"{prefix}.attention.output",
        layer.attention_output,
        kept,
        rows,
        block * hidden_scale,
        column_scale,
    )
    _copy_norm(state, f"{prefix}.attention_norm", layer.attention_norm, kept)
    return int(kept_heads.numel())


def _compact_ffn(
    state: dict[str, torch.Tensor],
    layer: LayerModules,
    masks: UnitMasks,
    shape: EncoderShape,
    kept: torch.Tensor,
    hidden_scale: torch.Tensor,
) -> int:
    """One layer's feed-forward block sliced to its kept neurons and hidden dimensions,
    the neuron, block and hidden mask values folded into its output; returns how many
    neurons it keeps."""
    i, prefix = layer.index, f"compact.layers.{layer.index}"
    neurons = _values(None if masks.ffn_neuron is None else masks.ffn_neuron[i], shape.ffn[i])
    block = _values(None if masks.ffn_layer is None else masks.ffn_layer[i : i + 1], 1)
    kept_neurons = _kept(neurons * block)
    state[f"{prefix}.ffn.intermediate.weight"] = _w(layer.ffn_input.weight)[kept_neurons][:, kept]
    state[f"{prefix}.ffn.intermediate.bias"] = _w(layer.ffn_input.bias)[kept_neurons]
    _fold_output(
        state,
        f"{prefix}.ffn.output",
        layer.ffn_output,
        kept,
        kept_neurons,
        block * hidden_scale,
        neurons[kept_neurons],
    )
    _copy_norm(state, f"{prefix}.ffn_norm", layer.ffn_norm, kept)
    return int(kept_neurons.numel())


def _w(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64)


def _values(mask: torch.Tensor | None, size: int) -> torch.Tensor:
    return torch.ones(size, dtype=torch.float64) if mask is None else mask.to(torch.float64)


def _kept(values: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(values > 0).flatten()


def _fold_output(
    state: dict[str, torch.Tensor],
    name: str,
    linear: nn.Linear,
    kept_hidden: torch.Tensor,
    kept_inputs: torch.Tensor,
    row_scale: torch.Tensor,
    column_scale: torch.Tensor,
) -> None:
    """An output projection sliced to kept inputs and hidden rows, with the masks folded in.

    (W x + b) * r with x scaled by c equals (r W c) x + r b; ``r`` holds the block and hidden
    mask values of the kept rows, ``c`` the head or neuron values of the kept columns.
    """
    weight = _w(linear.weight)[kept_hidden][:, kept_inputs]
    state[f"{name}.weight"] = weight * row_scale[:, None] * column_scale[None, :]
    state[f"{name}.bias"] = _w(linear.bias)[kept_hidden] * row_scale


def _copy_norm(
    state: dict[str, torch.Tensor], name: str, norm: nn.LayerNorm, kept: torch.Tensor
) -> None:
    state[f"{name}.weight"] = _w(norm.weight)[kept]
    state[f"{name}.bias"] = _w(norm.bias)[kept]


def _head_modules(model: PreTrainedModel, family: _Family) -> tuple[nn.Linear, nn.Linear]:
    """The (dense, output) pair of the source's classification head."""
    if family.classifier_kind == "bert":
        return model.base_model.pooler.dense, model.classifier
    if family.classifier_kind == "roberta":
        return model.classifier.dense, model.classifier.out_proj
    return model.pre_classifier, model.classifier


def _compact_config(
    model: PreTrainedModel,
    family: _Family,
    hidden_size: int,
    layer_heads: list[int],
    layer_ffn: list[int],
    dense: nn.Linear,
) -> SpruceCompactConfig:
    source = model.config
    description = describe(source)
    embeddings = model.base_model.get_submodule(description.embeddings)
    token_types = getattr(embeddings, "token_type_embeddings", None)
    distil = family.classifier_kind == "distilbert"
    config = SpruceCompactConfig(
        vocab_size=embeddings.word_embeddings.num_embeddings,
        hidden_size=hidden_size,
        num_hidden_layers=len(layer_heads),
        num_attention_heads=max(layer_heads),
        attention_head_size=encoder_shape(source).head_size,
        intermediate_size=max(layer_ffn),
        layer_heads=layer_heads,
        layer_ffn=layer_ffn,
        hidden_act=source.activation if distil else source.hidden_act,
        hidden_dropout_prob=source.dropout if distil else source.hidden_dropout_prob,
        attention_probs_dropout_prob=(
            source.attention_dropout if distil else source.attention_probs_dropout_prob
        ),
        classifier_dropout=source.seq_classif_dropout if distil else source.classifier_dropout,
        max_position_embeddings=embeddings.position_embeddings.num_embeddings,
        type_vocab_size=0 if token_types is None else token_types.num_embeddings,
        position_embedding_type=family.position_kind,
        layer_norm_eps=_norm_eps(model),
        initializer_range=getattr(source, "initializer_range", 0.02),
        pad_token_id=source.pad_token_id,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        classifier_kind=family.classifier_kind,
        classifier_hidden_size=dense.out_features,
        source_model_type=source.model_type,
        id2label=dict(source.id2label),
        label2id=dict(source.label2id),
        problem_type=source.problem_type,
    )
    task = getattr(source, TASK_METADATA_KEY, None)
    if task is not None:
        setattr(config, TASK_METADATA_KEY, task)
    return config


def _norm_eps(model: PreTrainedModel) -> float:
    """The LayerNorm epsilon the source really uses (DistilBERT hard-codes it, not in config)."""
    return float(model.base_model.get_submodule(describe(model.config).embedding_norm).eps)
