"""Analytic FLOPs of an encoder forward pass, from its (possibly pruned) shape.

Convention: **2 FLOPs per multiply-accumulate (MAC)**, per example (one sequence of
``seq_len`` tokens, batch size 1, no padding). Only matrix products are counted:

per layer ``l`` with ``H_l`` kept heads of size ``d``, ``F_l`` kept FFN units, hidden ``D``,
sequence length ``T``:

======================  =======================
Q, K, V projections     ``3 * T * D * H_l * d``
output projection O     ``T * H_l * d * D``
scores ``Q K^T``        ``T * T * H_l * d``
weighted sum ``A V``    ``T * T * H_l * d``
FFN in and out          ``2 * T * D * F_l``
======================  =======================

Excluded (small next to the products, and not what pruning changes): embedding lookups,
bias additions, softmax, scaling, masking, LayerNorm, activations and residual adds.
A dense and a pruned model are counted with the same formula; a pruned shape simply has
smaller (per-layer) numbers, and a layer with 0 heads or 0 FFN units costs 0 there.
"""

from __future__ import annotations

from spruce.models.structure import EncoderShape

FLOPS_PER_MAC = 2


def layer_macs(shape: EncoderShape, seq_len: int) -> list[dict[str, int]]:
    """MACs of each transformer layer, split into the parts of the module docstring."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    t, dim, d = seq_len, shape.hidden_size, shape.head_size
    out = []
    for heads, ffn in zip(shape.heads, shape.ffn, strict=True):
        inner = heads * d  # width of the attention block's inside (all kept heads)
        out.append(
            {
                "qkv": 3 * t * dim * inner,
                "attention_output": t * inner * dim,
                "attention_scores": 2 * t * t * inner,
                "ffn": 2 * t * dim * ffn,
            }
        )
    return out


def encoder_flops(shape: EncoderShape, seq_len: int) -> int:
    """FLOPs (2 per MAC) of the transformer layers for one sequence of ``seq_len`` tokens.

    Counts Q/K/V/O projections, attention scores and weighted sum and the two FFN matrices
    of every layer with its own number of heads and FFN units. Embedding lookups, softmax,
    LayerNorm, activations, biases and residual additions are excluded.
    """
    return FLOPS_PER_MAC * sum(sum(parts.values()) for parts in layer_macs(shape, seq_len))


def head_flops(hidden_size: int, num_labels: int) -> int:
    """FLOPs of pooler (``D x D``) plus classifier (``D x num_labels``) on the one pooled
    token. RoBERTa's head (dense + out_proj) and DistilBERT's (pre_classifier + classifier)
    have the same two matrices, so the count holds for every supported family."""
    return FLOPS_PER_MAC * (hidden_size * hidden_size + hidden_size * num_labels)


def model_flops(
    shape: EncoderShape, seq_len: int, num_labels: int, include_classifier: bool = True
) -> int:
    """:func:`encoder_flops` plus, unless ``include_classifier`` is false, the pooler and
    classifier (:func:`head_flops`). Embeddings stay excluded (lookups, no products)."""
    total = encoder_flops(shape, seq_len)
    if include_classifier:
        total += head_flops(shape.hidden_size, num_labels)
    return total


def flops_summary(
    dense: EncoderShape, pruned: EncoderShape, seq_len: int, num_labels: int
) -> dict[str, object]:
    """Report section: both counts, the pruned fraction of dense and the speed-up in FLOPs."""
    before = model_flops(dense, seq_len, num_labels)
    after = model_flops(pruned, seq_len, num_labels)
    return {
        "seq_len": seq_len,
        "convention": "2 FLOPs per multiply-accumulate; matrix products only",
        "dense": before,
        "pruned": after,
        "fraction_of_dense": round(after / before, 6) if before else None,
        "speedup": round(before / after, 4) if after else None,
    }
