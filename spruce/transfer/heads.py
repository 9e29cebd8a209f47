"""Task heads of the auxiliary tasks.

The MLM and classification heads sit on the shared encoder's last hidden states: they
read the full hidden width while pruning (the masked encoder zeroes removed hidden
dimensions) and are sliced to the kept dimensions by :meth:`AuxHead.compact` once the
encoder is compacted, so the auxiliary loss can continue in the final fine-tune. The
distillation "head" has no weights of its own: it compares the student's own classifier
with the dense teacher's (:class:`DistillHead`).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from spruce.data.tokenization import MODEL_INPUTS
from spruce.train.distillation import LayerDistiller, prediction_loss

# Where each family keeps its pre-trained MLM head: (transform dense, LayerNorm, decoder).
_MLM_HEAD_MODULES = {
    "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"),
    "roberta": ("lm_head.dense", "lm_head.layer_norm"),
    "xlm-roberta": ("lm_head.dense", "lm_head.layer_norm"),
    "camembert": ("lm_head.dense", "lm_head.layer_norm"),
    "electra": ("generator_predictions.dense", "generator_predictions.LayerNorm"),
    "distilbert": ("vocab_transform", "vocab_layer_norm"),
}
_HEAD_KEY_PREFIXES = ("cls.predictions.", "lm_head.", "vocab_transform.", "generator_predictions.")


class AuxHead(nn.Module):
    """Common interface: ``batch_loss(model, batch)`` and ``compact(kept)``; a head on the
    encoder implements ``loss(hidden_states, batch)`` and ``input_layer()``."""

    def batch_loss(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one auxiliary batch on ``model`` (under the gates in force)."""
        return self.loss(encode(model, batch), batch)

    def loss(self, hidden_states: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def compact(self, kept: torch.Tensor) -> AuxHead:
        """A copy reading only the hidden dimensions ``kept`` (indices into the full width)."""
        head = copy.deepcopy(self)
        _read_only(head.input_layer(), kept)
        return head

    def input_layer(self) -> nn.Linear:
        raise NotImplementedError


def _read_only(layer: nn.Linear, kept: torch.Tensor) -> None:
    """Make ``layer`` read only the input dimensions ``kept``."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight[:, kept.to(layer.weight.device)].clone())
    layer.in_features = int(kept.numel())


class MaskedLMHead(AuxHead):
    """transform (dense, activation, LayerNorm) then a decoder over the vocabulary, as in
    BERT; the decoder is a copy of the word embeddings, not tied to them: the encoder's
    embedding table shrinks with hidden pruning, the decoder's output side must not."""

    def __init__(self, hidden_size: int, vocab_size: int, activation: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[activation]
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def input_layer(self) -> nn.Linear:
        return self.dense

    def loss(self, hidden_states: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        chosen = labels != -100
        if not bool(chosen.any()):
            # A batch without masked tokens (very short texts) teaches nothing.
            return hidden_states.sum() * 0.0
        # Only masked positions reach the vocabulary projection: 15% of the tokens, so the
        # largest matrix product of the head costs 15% of what a full projection would.
        logits = self.decoder(self.norm(self.activation(self.dense(hidden_states[chosen]))))
        return nn.functional.cross_entropy(logits, labels[chosen])


class ClassifierHead(AuxHead):
    """dense + tanh on the first token, dropout, then the label layer (BERT's pooler and
    classifier), fresh for an auxiliary labelled task."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, init_std: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)
        for layer in (self.dense, self.out):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def input_layer(self) -> nn.Linear:
        return self.dense

    def loss(self, hidden_states: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = torch.tanh(self.dense(hidden_states[:, 0]))
        return nn.functional.cross_entropy(self.out(self.dropout(pooled)), batch["labels"])


class DistillHead(AuxHead):
    """TinyBERT-style distillation on unlabelled text: the temperature-softened KL between
    the dense teacher's and the student's classifier logits, scaled by T^2; with a
    ``layers`` distiller, also CoFi's layer loss (``alpha * layer + (1 - alpha) *
    prediction``, as on the labelled batches).

    The student runs through its own classifier; the only weights of this head are the
    layer distiller's projection, sliced to the kept hidden dimensions on compaction. The
    teacher runs frozen, in eval mode and without gradients, and stays dense.
    """

    def __init__(
        self,
        teacher: PreTrainedModel,
        temperature: float,
        layers: LayerDistiller | None = None,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        # Kept outside the module tree: the teacher is neither trained nor saved with the
        # auxiliary heads, and must not enter their optimizer, state_dict or compaction.
        object.__setattr__(self, "teacher", teacher.eval())
        self.temperature = float(temperature)
        self.layers = layers
        self.alpha = float(alpha)

    def batch_loss(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = _inputs(model, batch)  # labels, if any, are never read
        hidden = self.layers is not None
        student = model(**inputs, output_hidden_states=hidden)
        teacher = self.teacher
        if teacher.training:
            teacher.eval()  # dropout off: the teacher's predictions are the targets
        device = student.logits.device
        if next(teacher.parameters()).device != device:
            teacher.to(device)  # the heads' .to() does not reach it (see __init__)
        with torch.no_grad():
            target = teacher(**_inputs(teacher, batch), output_hidden_states=hidden)
        prediction = prediction_loss(student.logits, target.logits, self.temperature)
        if self.layers is None:
            return prediction
        layer, _ = self.layers(
            student.hidden_states[1:], target.hidden_states[1:], batch.get("attention_mask")
        )
        return self.alpha * layer + (1 - self.alpha) * prediction

    def compact(self, kept: torch.Tensor) -> DistillHead:
        if self.layers is None:
            return self
        layers = copy.deepcopy(self.layers)  # not the whole head: that would copy the teacher
        _read_only(layers.projection, kept)
        return DistillHead(self.teacher, self.temperature, layers, self.alpha)


def encode(model: PreTrainedModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states of ``model``'s encoder (its task head is not run)."""
    base = model.base_model
    return base(**_inputs(base, batch))[0]


def _inputs(module: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model inputs of ``batch`` that ``module.forward`` accepts (no labels)."""
    accepted = _forward_inputs(type(module))
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS and k in accepted}


_SIGNATURES: dict[type, frozenset[str]] = {}


def _forward_inputs(cls: type) -> frozenset[str]:
    if cls not in _SIGNATURES:
        parameters = inspect.signature(cls.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            # A wrapper that passes everything on (e.g. DistributedDataParallel).
            _SIGNATURES[cls] = frozenset(MODEL_INPUTS)
        else:
            _SIGNATURES[cls] = frozenset(p.name for p in parameters)
    return _SIGNATURES[cls]


def classifier_head(config: PretrainedConfig, num_labels: int) -> ClassifierHead:
    dropout = getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1))
    return ClassifierHead(
        config.hidden_size, num_labels, float(dropout), getattr(config, "initializer_range", 0.02)
    )


def mlm_head(
    config: PretrainedConfig, word_embeddings: nn.Embedding, source: str | None
) -> tuple[MaskedLMHead, bool]:
    """The checkpoint's pre-trained MLM head when ``source`` has one, else a fresh head
    whose decoder starts from the word embeddings (the usual weight tying, as a copy).
    Returns the head and whether it was pre-trained."""
    activation = getattr(config, "hidden_act", getattr(config, "activation", "gelu"))
    eps = float(getattr(config, "layer_norm_eps", 1e-12))
    head = MaskedLMHead(config.hidden_size, word_embeddings.num_embeddings, activation, eps)
    pretrained = _pretrained_mlm_modules(config, source)
    with torch.no_grad():
        if pretrained is not None:
            dense, norm, decoder = pretrained
            head.dense.load_state_dict(dense.state_dict())
            head.norm.load_state_dict(norm.state_dict())
            head.decoder.weight.copy_(decoder.weight)
            if decoder.bias is not None:
                head.decoder.bias.copy_(decoder.bias)
            else:
                head.decoder.bias.zero_()
        else:
            nn.init.normal_(head.dense.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(head.dense.bias)
            head.decoder.weight.copy_(word_embeddings.weight)
            head.decoder.bias.zero_()
    return head, pretrained is not None


def _pretrained_mlm_modules(config: PretrainedConfig, source: str | None):
    names = _MLM_HEAD_MODULES.get(config.model_type)
    if source is None or names is None or not _has_head_weights(Path(source)):
        return None
    try:
        model = AutoModelForMaskedLM.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return (
        model.get_submodule(names[0]),
        model.get_submodule(names[1]),
        model.get_output_embeddings(),
    )


def _has_head_weights(path: Path) -> bool:
    """Whether the checkpoint folder stores MLM head tensors (reads key names only)."""
    if not path.is_dir():
        return False
    index = path / "model.safetensors.index.json"
    if index.exists():
        keys = json.loads(index.read_text())["weight_map"]
    elif (path / "model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as handle:
            keys = list(handle.keys())
    else:
        return False
    # Some checkpoints prefix keys with the architecture name ("bert.", "roberta.").
    return any(
        key.split(".", 1)[-1].startswith(_HEAD_KEY_PREFIXES) or key.startswith(_HEAD_KEY_PREFIXES)
        for key in keys
    )
