"""A compact encoder whose layers each keep their own number of heads and FFN width.

Structured pruning leaves layers of different sizes, which no stock transformers class can
hold, so the compacted model is this one: a BERT-style post-LN encoder written out in full
(embeddings, attention, FFN, classification head) with per-layer sizes in its config.
The forward pass branches only on config values, never on tensor values, so that it traces
to ONNX. See docs/pruning-semantics.md for how the weights are derived from a masked model.
"""

from __future__ import annotations

import warnings

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from spruce.models.structure import COMPACT_MODEL_TYPE as MODEL_TYPE

CLASSIFIER_KINDS = ("bert", "roberta", "distilbert")
POSITION_KINDS = ("absolute", "padding_offset")


@strict
class SpruceCompactConfig(PretrainedConfig):
    """Sizes of a compacted encoder; ``layer_heads`` / ``layer_ffn`` may differ per layer.

    ``num_attention_heads`` and ``intermediate_size`` are the largest per-layer values, kept
    so that code reading the usual BERT fields still finds them.
    ``position_embedding_type`` is ``"absolute"`` (BERT: position i is row i) or
    ``"padding_offset"`` (RoBERTa: positions count non-pad tokens from ``pad_token_id + 1``).
    ``type_vocab_size`` 0 means the source had no token-type embeddings (DistilBERT).
    ``classifier_kind`` says which head sits on the first token: ``"bert"`` (pooler
    dense + tanh, classifier), ``"roberta"`` (dense + tanh, out_proj) or ``"distilbert"``
    (pre_classifier + ReLU, classifier); ``classifier_hidden_size`` is the width of its
    dense layer, which pruning of the residual stream does not change.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    attention_head_size: int = 64
    intermediate_size: int = 3072
    layer_heads: list[int] | None = None
    layer_ffn: list[int] | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    position_embedding_type: str = "absolute"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    classifier_kind: str = "bert"
    classifier_hidden_size: int | None = None
    classifier_dropout: float | int | None = None
    source_model_type: str | None = None

    def __post_init__(self, **kwargs):
        if self.layer_heads is None:
            self.layer_heads = [self.num_attention_heads] * self.num_hidden_layers
        if self.layer_ffn is None:
            self.layer_ffn = [self.intermediate_size] * self.num_hidden_layers
        self.layer_heads = [int(h) for h in self.layer_heads]
        self.layer_ffn = [int(f) for f in self.layer_ffn]
        if self.classifier_hidden_size is None:
            self.classifier_hidden_size = self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: per-layer lists must match the layer count."""
        if len(self.layer_heads) != self.num_hidden_layers:
            raise ValueError(
                f"layer_heads has {len(self.layer_heads)} entries, not {self.num_hidden_layers}"
            )
        if len(self.layer_ffn) != self.num_hidden_layers:
            raise ValueError(
                f"layer_ffn has {len(self.layer_ffn)} entries, not {self.num_hidden_layers}"
            )
        if min([*self.layer_heads, *self.layer_ffn, 0]) < 0:
            raise ValueError("per-layer head counts and FFN widths cannot be negative")
        if self.classifier_kind not in CLASSIFIER_KINDS:
            raise ValueError(f"classifier_kind must be one of {CLASSIFIER_KINDS}")
        if self.position_embedding_type not in POSITION_KINDS:
            raise ValueError(f"position_embedding_type must be one of {POSITION_KINDS}")


def _linear(in_features: int, out_features: int) -> nn.Linear:
    with warnings.catch_warnings():
        # Removed blocks have zero-width projections; torch warns that initializing them is a no-op.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features)


class CompactEmbeddings(nn.Module):
    def __init__(self, config: SpruceCompactConfig):
        super().__init__()
        self.position_kind = config.position_embedding_type
        self.pad_token_id = config.pad_token_id
        # padding_idx as in the source families: the pad rows get no gradient when fine-tuning.
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings,
            config.hidden_size,
            padding_idx=config.pad_token_id if self.position_kind == "padding_offset" else None,
        )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size)
            if config.type_vocab_size > 0
            else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.position_kind == "padding_offset":
            # RoBERTa: pads keep position pad_token_id, real tokens count up from pad_token_id + 1.
            not_pad = input_ids.ne(self.pad_token_id).int()
            position_ids = (torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad).long()
            position_ids = position_ids + self.pad_token_id
        else:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(embeddings))


class CompactAttention(nn.Module):
    """Multi-head self-attention with ``num_heads`` heads (possibly 0) of a fixed size."""

    def __init__(self, config: SpruceCompactConfig, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = config.attention_head_size
        inner = num_heads * self.head_size
        # A layer without heads keeps zero-width projections so that every layer has the same
        # module paths (layer_modules); only the output bias is used then.
        self.query = _linear(config.hidden_size, inner)
        self.key = _linear(config.hidden_size, inner)
        self.value = _linear(config.hidden_size, inner)
        self.output = _linear(inner, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        if self.num_heads == 0:
            # The folded constant b_O * mha_layer * hidden; zero-sized matmuls would not export.
            return self.output.bias.expand_as(hidden_states)
        batch, length = hidden_states.shape[0], hidden_states.shape[1]
        split = (batch, length, self.num_heads, self.head_size)
        query = self.query(hidden_states).view(split).transpose(1, 2)
        key = self.key(hidden_states).view(split).transpose(1, 2)
        value = self.value(hidden_states).view(split).transpose(1, 2)

        # The fused kernel, as the dense transformers models use by default: timing the compact
        # model with a slower hand-written attention would understate pruning's speed-up.
        context = nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=additive_mask,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)
        return self.output(context)


class CompactFeedForward(nn.Module):
    """The position-wise FFN with ``width`` intermediate units (possibly 0)."""

    def __init__(self, config: SpruceCompactConfig, width: int):
        super().__init__()
        self.width = width
        self.intermediate = _linear(config.hidden_size, width)
        self.output = _linear(width, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.width == 0:
            return self.output.bias.expand_as(hidden_states)
        return self.output(self.activation(self.intermediate(hidden_states)))


class CompactLayer(nn.Module):
    """Post-LN transformer layer; both LayerNorms stay even when a block is removed."""

    def __init__(self, config: SpruceCompactConfig, num_heads: int, ffn_width: int):
        super().__init__()
        self.attention = CompactAttention(config, num_heads)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = CompactFeedForward(config, ffn_width)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        attention = self.attention(hidden_states, additive_mask)
        hidden_states = self.attention_norm(hidden_states + self.dropout(attention))
        ffn = self.ffn(hidden_states)
        return self.ffn_norm(hidden_states + self.dropout(ffn))


class SpruceCompactPreTrainedModel(PreTrainedModel):
    config_class = SpruceCompactConfig
    config: SpruceCompactConfig
    base_model_prefix = "compact"
    main_input_name = "input_ids"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and module.weight.numel() == 0:
            # Only the bias of a zero-width output projection carries anything (a constant).
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        super()._init_weights(module)


class SpruceCompactModel(SpruceCompactPreTrainedModel):
    """Embeddings and layers; returns the last hidden states (and all of them on request)."""

    def __init__(self, config: SpruceCompactConfig):
        super().__init__(config)
        self.embeddings = CompactEmbeddings(config)
        self.layers = nn.ModuleList(
            CompactLayer(config, heads, ffn)
            for heads, ffn in zip(config.layer_heads, config.layer_ffn, strict=True)
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutput:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden_states = self.embeddings(input_ids, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # [B, T] of 1/0 -> [B, 1, 1, T] of 0/-inf-ish, added to every head's scores.
        keep = attention_mask[:, None, None, :].to(hidden_states.dtype)
        additive_mask = (1.0 - keep) * torch.finfo(hidden_states.dtype).min
        # As in transformers: the embedding output, then every layer's output (layer
        # distillation reads them).
        all_states = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, additive_mask)
            if all_states is not None:
                all_states.append(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=None if all_states is None else tuple(all_states),
        )


class CompactClassificationHead(nn.Module):
    """The source family's head on the first token, with its dropout placement."""

    def __init__(self, config: SpruceCompactConfig):
        super().__init__()
        self.kind = config.classifier_kind
        dropout = config.classifier_dropout
        if dropout is None:
            # Each family's default: DistilBERT's seq_classif_dropout is recorded explicitly.
            dropout = config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.classifier_hidden_size)
        self.out_proj = nn.Linear(config.classifier_hidden_size, config.num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first = hidden_states[:, 0]
        if self.kind == "bert":
            pooled = torch.tanh(self.dense(first))
            return self.out_proj(self.dropout(pooled))
        if self.kind == "roberta":
            pooled = torch.tanh(self.dense(self.dropout(first)))
            return self.out_proj(self.dropout(pooled))
        pooled = torch.relu(self.dense(first))
        return self.out_proj(self.dropout(pooled))


class CompactModelForSequenceClassification(SpruceCompactPreTrainedModel):
    """A compacted encoder with its task head; same call signature as the HF classifiers."""

    def __init__(self, config: SpruceCompactConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.compact = SpruceCompactModel(config)
        self.classifier = CompactClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput:
        outputs = self.compact(input_ids, attention_mask, token_type_ids, output_hidden_states)
        logits = self.classifier(outputs.last_hidden_state)
        loss = None if labels is None else self._loss(logits, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states
        )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Same problem-type inference as the transformers classifiers, so training code is shared.
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return MSELoss()(logits.squeeze(), labels.squeeze())
            return MSELoss()(logits, labels)
        if self.config.problem_type == "single_label_classification":
            return CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return BCEWithLogitsLoss()(logits, labels)


def register_auto_classes() -> None:
    """Make ``Auto*.from_pretrained`` build this model from its saved config (idempotent).

    Called by :func:`spruce.models.loading.load_config` before a model is read, rather than
    on import, so that what registers it is visible where it is needed.
    """
    AutoConfig.register(MODEL_TYPE, SpruceCompactConfig, exist_ok=True)
    AutoModel.register(SpruceCompactConfig, SpruceCompactModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        SpruceCompactConfig, CompactModelForSequenceClassification, exist_ok=True
    )
