"""How many encoder parameters a structure keeps: expected (differentiable) and exact.

**Definition.** *Encoder parameters* here are the weight matrices of attention and FFN
blocks only: per layer, Q, K, V and O (``4 * D_kept * heads_kept * head_size``) and the
two FFN projections (``2 * D_kept * ffn_kept``). Biases, LayerNorms, embeddings, pooler
and task head are excluded. This is CoFi's prunable-size definition: it is what the
sparsity target refers to, and it is linear in every unit type, so its expectation
factorizes. It differs from ``spruce.report.params.count_parameters()["encoder"]``, which
counts every tensor of the transformer layers (biases and LayerNorms too); reports should
name which one they show.

*Encoder sparsity* = ``1 - kept / dense`` under this definition.

Expected counts multiply expectations (CoFi): a head contributes
``P(head) * P(mha_layer)``, a hidden dimension ``P(hidden)``, and the per-layer product is
``E[D_kept] * sum_h P(head) * P(mha_layer)``. Gates are independent, so for these
multilinear terms the product of expectations *is* the expectation of the product of
indicators. A unit type without gates counts as always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from spruce.masks.units import UnitMasks
from spruce.models.structure import EncoderShape

if TYPE_CHECKING:
    from spruce.masks.gates import EncoderGates

ATTENTION_MATRICES = 4  # Q, K, V, O
FFN_MATRICES = 2  # W_1, W_2


def params_from_counts(
    shape: EncoderShape, hidden: int, heads: Sequence[int], ffn: Sequence[int]
) -> int:
    """Exact encoder parameters with ``hidden`` kept dimensions and, per layer, ``heads``
    and ``ffn`` kept units (a removed block is 0 there)."""
    per_hidden = sum(
        ATTENTION_MATRICES * shape.head_size * h + FFN_MATRICES * f
        for h, f in zip(heads, ffn, strict=True)
    )
    return int(hidden) * int(per_hidden)


def dense_encoder_params(shape: EncoderShape) -> int:
    """Encoder parameters of the unpruned ``shape`` (attention + FFN weight matrices)."""
    return params_from_counts(shape, shape.hidden_size, shape.heads, shape.ffn)


def structure_from_masks(masks: UnitMasks, shape: EncoderShape) -> dict:
    """Kept sizes of a fixed structure: ``{"hidden": D, "layers": [{"heads", "ffn"}...]}``.

    A unit counts as kept when its mask is > 0; a layer whose ``mha_layer`` (``ffn_layer``)
    mask is 0 has 0 heads (FFN units) whatever its head (neuron) masks say. Absent masks
    mean all kept.
    """
    layers = shape.num_layers
    heads = _kept_per_layer(masks.head, shape.heads, layers, "head")
    ffn = _kept_per_layer(masks.ffn_neuron, shape.ffn, layers, "ffn_neuron")
    for name, counts in (("mha_layer", heads), ("ffn_layer", ffn)):
        gate = getattr(masks, name)
        if gate is None:
            continue
        if gate.shape != (layers,):
            raise ValueError(f"{name} mask has shape {tuple(gate.shape)}, expected ({layers},)")
        for layer, alive in enumerate((gate > 0).tolist()):
            counts[layer] = counts[layer] if alive else 0
    if masks.hidden is None:
        hidden = shape.hidden_size
    elif masks.hidden.shape != (shape.hidden_size,):
        raise ValueError(f"hidden mask has shape {tuple(masks.hidden.shape)}")
    else:
        hidden = int((masks.hidden > 0).sum())
    return {
        "hidden": hidden,
        "layers": [{"heads": h, "ffn": f} for h, f in zip(heads, ffn, strict=True)],
    }


def encoder_params_from_masks(masks: UnitMasks, shape: EncoderShape) -> int:
    """Exact encoder parameters that remain once the units with mask 0 are removed."""
    structure = structure_from_masks(masks, shape)
    layers = structure["layers"]
    return params_from_counts(
        shape, structure["hidden"], [x["heads"] for x in layers], [x["ffn"] for x in layers]
    )


def sparsity_from_masks(masks: UnitMasks, shape: EncoderShape) -> float:
    """Exact encoder sparsity (fraction of attention + FFN weights removed)."""
    return 1.0 - encoder_params_from_masks(masks, shape) / dense_encoder_params(shape)


def expected_encoder_params(gates: EncoderGates) -> torch.Tensor:
    """Expected encoder parameters under the gates' distribution (differentiable scalar)."""
    shape, probs = gates.shape, gates.probs()
    device = next(iter(probs.values())).device if probs else None
    layers = shape.num_layers

    def total(name: str, dense: Sequence[int] | int) -> torch.Tensor:
        # Expected kept units per layer ([L]) or overall (hidden), dense count if ungated.
        if name in probs:
            return probs[name].sum(dim=-1)
        return torch.as_tensor(dense, dtype=torch.float32, device=device)

    def layer_keep(name: str) -> torch.Tensor:
        return probs[name] if name in probs else torch.ones(layers, device=device)

    hidden = total("hidden", shape.hidden_size)
    heads = total("head", shape.heads) * layer_keep("mha_layer")
    ffn = total("ffn_neuron", shape.ffn) * layer_keep("ffn_layer")
    per_hidden = ATTENTION_MATRICES * shape.head_size * heads.sum() + FFN_MATRICES * ffn.sum()
    return hidden * per_hidden


def expected_sparsity(gates: EncoderGates) -> torch.Tensor:
    """``1 - E[encoder params] / dense``: what the Lagrangian pulls to its target."""
    return 1.0 - expected_encoder_params(gates) / dense_encoder_params(gates.shape)


def _kept_per_layer(
    mask: torch.Tensor | None, dense: Sequence[int], layers: int, name: str
) -> list[int]:
    if mask is None:
        return [int(x) for x in dense]
    if mask.ndim != 2 or mask.shape[0] != layers:
        raise ValueError(f"{name} mask has shape {tuple(mask.shape)}, expected [{layers}, *]")
    return [int(x) for x in (mask > 0).sum(dim=1).tolist()]
