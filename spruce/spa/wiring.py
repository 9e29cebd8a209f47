"""Structured Pruning Adapters on a transformer encoder, placed through its structure description.

Each layer's six linear maps (Q, K, V, attention output, FFN in, FFN out; their module
names come from :func:`spruce.models.structure.layer_modules`) are wrapped in an adapter;
the task head stays fully trainable; everything else (embeddings, LayerNorms, base
weights and base biases) is frozen and shared by every task.

Pruning stays the one of docs/pruning-semantics.md: the masked forward pass is
:func:`spruce.compact.apply_masks` (its hooks sit on the attention-output and FFN-output
modules, wrapped or not), and :func:`set_unit_masks` only mirrors the binary part of the
unit masks into the wrappers' channel masks, so that a task's file holds nothing of a
removed unit. Compaction reads an ordinary classifier: :func:`merged_plain_copy`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn
from transformers import PreTrainedModel

from spruce.adapters import AdapterConfig, SPAdapterLayer, find_adapters, inject_adapters
from spruce.adapters.inject import name_matches
from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models.structure import encoder_shape, layer_modules

ROLES = ("query", "key", "value", "attention_output", "ffn_input", "ffn_output")
# Units an adapted transformer prunes: the hidden size is shared by every task's frozen
# embeddings and LayerNorms, so it stays whole.
ADAPT_UNITS = ("head", "mha_layer", "ffn_neuron", "ffn_layer")
_HANDLE_ATTRIBUTE = "_spruce_mask_handle"  # set by spruce.compact.apply_masks


def layer_linear_names(model: PreTrainedModel) -> list[str]:
    """Full module names of the six linear maps of every layer, layer by layer."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(getattr(layer, role))] for layer in layer_modules(model) for role in ROLES]


def head_module_names(model: PreTrainedModel) -> list[str]:
    """The task head: modules outside the encoder with parameters, plus the pooler.

    BERT: ``classifier`` and ``bert.pooler``; RoBERTa: ``classifier`` (dense and
    out_proj); DistilBERT: ``pre_classifier`` and ``classifier``.
    """
    prefix = model.base_model_prefix
    names = [
        name
        for name, child in model.named_children()
        if name != prefix and any(True for _ in child.parameters())
    ]
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None and any(True for _ in pooler.parameters()):
        names.append(f"{prefix}.pooler")
    return names


def head_parameters(model: PreTrainedModel) -> dict[str, nn.Parameter]:
    """The head's parameters by their name in ``model`` (what a task stores besides adapters)."""
    heads = head_module_names(model)
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if any(name.startswith(f"{head}.") for head in heads)
    }


def check_transformer_adapter(config: AdapterConfig) -> AdapterConfig:
    config.validate()
    if config.kind == "sppara":
        raise SpruceError(
            "sppara is a parallel pointwise convolution adapter; a transformer's layers are Linear",
            "use --adapter splora (low-rank) or splopa (block) for transformers",
        )
    return config


def inject_transformer_adapters(
    model: PreTrainedModel, config: AdapterConfig
) -> dict[str, SPAdapterLayer]:
    """Wrap every layer's six linear maps in adapters (in place); only adapters and the
    head stay trainable. ``config.target_modules`` may narrow the six to a subset
    (e.g. ``["query", "value"]``); ``config`` itself is not changed."""
    check_transformer_adapter(config)
    targets = layer_linear_names(model)
    if config.target_modules is not None:
        chosen = [n for n in targets if any(name_matches(n, p) for p in config.target_modules)]
        if not chosen:
            raise SpruceError(
                f"target_modules {config.target_modules} match none of the layers' linear maps",
                "name some of query, key, value, attention output, FFN input and output "
                "modules, or leave target_modules unset",
            )
        targets = chosen
    wiring = replace(
        config,
        target_modules=targets,
        trainable=[*(config.trainable or []), *head_module_names(model)],
    )
    return inject_adapters(model, wiring)


def _binary(mask: torch.Tensor | None, size: tuple[int, ...]) -> torch.Tensor:
    return torch.ones(size) if mask is None else (mask.detach().cpu() > 0).float()


@torch.no_grad()
def set_unit_masks(model: PreTrainedModel, masks: UnitMasks) -> None:
    """Mirror the binary part of ``masks`` into the wrappers' channel masks.

    Q/K/V rows and attention-output columns of removed heads (all of them for a removed
    ``mha_layer``) and FFN-input rows and FFN-output columns of removed neurons (all for
    a removed ``ffn_layer``) are masked. A layer that keeps no head (no neuron) also
    masks the inputs of its Q/K/V (FFN input): they feed nothing. Output projections keep
    every output, since their bias still reaches the residual stream.
    """
    if masks.hidden is not None and not bool((masks.hidden > 0).all()):
        raise SpruceError(
            "adapters share the frozen base's hidden size between tasks, so it cannot be pruned",
            f"prune only {', '.join(ADAPT_UNITS)}",
        )
    shape = encoder_shape(model.config)
    layers, d = shape.num_layers, shape.head_size
    heads = _binary(masks.head, (layers, max(shape.heads)))
    heads = heads * _binary(masks.mha_layer, (layers,))[:, None]
    neurons = _binary(masks.ffn_neuron, (layers, max(shape.ffn)))
    neurons = neurons * _binary(masks.ffn_layer, (layers,))[:, None]
    for layer in layer_modules(model):
        columns = heads[layer.index].repeat_interleave(d)
        reads = torch.full((shape.hidden_size,), float(columns.any()))
        for projection in (layer.query, layer.key, layer.value):
            if isinstance(projection, SPAdapterLayer):
                projection.set_masks(in_mask=reads, out_mask=columns)
        if isinstance(layer.attention_output, SPAdapterLayer):
            layer.attention_output.set_masks(in_mask=columns)
        units = neurons[layer.index]
        if isinstance(layer.ffn_input, SPAdapterLayer):
            reads = torch.full((shape.hidden_size,), float(units.any()))
            layer.ffn_input.set_masks(in_mask=reads, out_mask=units)
        if isinstance(layer.ffn_output, SPAdapterLayer):
            layer.ffn_output.set_masks(in_mask=units)


@torch.no_grad()
def plain_linear(layer: SPAdapterLayer) -> nn.Linear:
    """A new ``nn.Linear`` computing exactly what ``layer`` computes: the binary channel
    masks folded into ``W + delta`` (rows and columns) and into the task bias."""
    in_mask, out_mask = layer.effective_masks()
    weight = layer.adapted_weight() * out_mask[:, None] * in_mask[None, :]
    linear = nn.Linear(layer.in_features, layer.out_features, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone())
    linear.bias = nn.Parameter((layer.bias * out_mask).detach().clone())
    return linear


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@contextlib.contextmanager
def scoring_view(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Inside the block each wrapper is replaced by its :func:`plain_linear`, trainable,
    so that criteria see ``W + delta`` and gradient criteria get dL/d(W + delta).

    The plain layers hold copies: the shared base weights are never written (an in-place
    merge and unmerge would leave rounding in them). Enter this *before*
    :func:`~spruce.compact.apply_masks`, whose hooks attach to the modules present then.
    """
    if getattr(model, _HANDLE_ATTRIBUTE, None) is not None:
        raise SpruceError(
            "scoring_view swaps modules, but mask hooks are attached to the current ones",
            "enter scoring_view first, then apply_masks",
        )
    wrappers = find_adapters(model)
    for name, layer in wrappers.items():
        _swap(model, name, plain_linear(layer))
    try:
        yield model
    finally:
        for name, layer in wrappers.items():
            _swap(model, name, layer)


def merged_plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy of ``model`` with every wrapper replaced by its :func:`plain_linear`:
    an ordinary transformers classifier that :func:`spruce.compact.compact_model` can
    compact. ``model`` is not changed."""
    if getattr(model, _HANDLE_ATTRIBUTE, None) is not None:
        raise SpruceError(
            "merged_plain_copy would copy the mask hooks attached to the model",
            "remove the mask handle first and apply the masks again afterwards",
        )
    # The memo hands deepcopy the plain layers in place of the wrappers: adapter
    # factors are never copied.
    memo = {id(layer): plain_linear(layer) for layer in find_adapters(model).values()}
    plain = copy.deepcopy(model, memo)
    plain.requires_grad_(True)
    return plain


def base_fingerprint(model: PreTrainedModel) -> str:
    """A digest of the frozen parameters (the shared base), to tell bases apart.

    Two task files fit one bank only when they were trained on identical frozen weights;
    names and paths of the base can differ between machines, its numbers cannot.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            continue
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()
