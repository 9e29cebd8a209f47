"""Exact-size correction of a deterministic structure, and the floor that keeps it
able to read its input.

:class:`GreedySizeCorrection` is step 2 of :meth:`EncoderGates.deterministic_masks`
(see ``spruce/masks/gates.py``). :func:`attention_floors` exists because a structure can
legitimately round every attention head away at high sparsity: on SST-2 at 90%, one
run with tied MLM gates kept 2,656 FFN units and no head. Without attention no token
reads another, so the classifier's token ([CLS]) is the same for every input and the
model predicts a constant (that run scored 0.509, the majority class). One head, in the
layer whose attention the gates trust most, is the cheapest structure that still reads
the input; the size correction then removes other units to pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from spruce.masks.accounting import ATTENTION_MATRICES, FFN_MATRICES
from spruce.masks.hard_concrete import rank_descending
from spruce.masks.units import PER_LAYER_UNITS

if TYPE_CHECKING:
    from spruce.masks.gates import EncoderGates

Counts = dict[str, int | list[int]]


def reads_input(gates: EncoderGates, counts: Mapping[str, int | list[int]]) -> bool:
    """Whether the structure ``counts`` keeps a head in a kept attention block."""
    layers = gates.shape.num_layers
    heads = counts.get("head", list(gates.shape.heads))
    alive = _kept_blocks(gates, counts)
    return any(alive[layer] and heads[layer] > 0 for layer in range(layers))  # type: ignore[index]


def attention_floors(gates: EncoderGates) -> dict[tuple[str, int], int]:
    """Minimum counts that keep one head: the most probable head of the layer where
    ``P(block kept) * P(that head kept)`` is highest (1 for a unit type not gated).

    Keys are :class:`GreedySizeCorrection`'s groups: ``("head", layer)`` and
    ``("mha_layer", 0)``, whose count must reach that layer's rank among the blocks.
    """
    layers = gates.shape.num_layers
    with torch.no_grad():
        head_probs = (
            gates.gates["head"].prob_nonzero().max(dim=1).values
            if "head" in gates.gates
            else torch.ones(layers)
        )
        block_probs = (
            gates.gates["mha_layer"].prob_nonzero()
            if "mha_layer" in gates.gates
            else torch.ones(layers)
        )
        layer = int(torch.argmax(head_probs.cpu() * block_probs.cpu()))
    floors: dict[tuple[str, int], int] = {}
    if "head" in gates.gates:
        floors["head", layer] = 1
    if "mha_layer" in gates.gates:
        order = rank_descending(gates.gates["mha_layer"].log_alpha.detach()).tolist()
        floors["mha_layer", 0] = order.index(layer) + 1
    return floors


def raise_to_floors(counts: Mapping[str, int | list[int]], floors: Mapping) -> Counts:
    """``counts`` with every group raised to at least its floor."""
    raised: Counts = {
        unit: list(value) if isinstance(value, list) else value for unit, value in counts.items()
    }
    for (unit, layer), floor in floors.items():
        if unit in PER_LAYER_UNITS:
            per_layer = raised[unit]
            per_layer[layer] = max(per_layer[layer], floor)  # type: ignore[index]
        else:
            raised[unit] = max(int(raised[unit]), floor)  # type: ignore[arg-type]
    return raised


def _kept_blocks(gates: EncoderGates, counts: Mapping[str, int | list[int]]) -> list[bool]:
    layers = gates.shape.num_layers
    if "mha_layer" not in gates.gates:
        return [True] * layers
    order = rank_descending(gates.gates["mha_layer"].log_alpha.detach()).tolist()
    return _first_of(order, int(counts["mha_layer"]), layers)  # type: ignore[arg-type]


def _first_of(order: list[int], count: int, layers: int) -> list[bool]:
    """Per layer, whether it is among the first ``count`` of the block ranking ``order``."""
    kept = set(order[:count])
    return [layer in kept for layer in range(layers)]


class GreedySizeCorrection:
    """Moves group counts one unit at a time towards an exact parameter count, never
    below ``floors`` (minimum counts per ``(unit, layer)`` group; see
    :func:`attention_floors`)."""

    def __init__(
        self,
        gates: EncoderGates,
        counts: Mapping[str, int | list[int]],
        multiple: int = 1,
        floors: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        shape = gates.shape
        self.floors = dict(floors or {})
        # FFN widths and the hidden size move in steps of ``multiple`` (see _snap_widths).
        self.stride = {"ffn_neuron": multiple, "hidden": multiple}
        self.layers = shape.num_layers
        self.head_cost = ATTENTION_MATRICES * shape.head_size  # per head, per hidden dim
        # Keep probabilities of every group sorted by the same ranking the masks use, so
        # the k-th entry is the unit that the k-th kept (or first removed) slot holds.
        self.sorted_probs: dict[tuple[str, int], list[float]] = {}
        self.layer_order: dict[str, list[int]] = {}
        self.counts: dict[tuple[str, int], int] = {}
        with torch.no_grad():
            for unit, gate in gates.gates.items():
                probs, order = gate.prob_nonzero(), rank_descending(gate.log_alpha)
                ranked = torch.gather(probs, -1, order)
                if unit in PER_LAYER_UNITS:
                    for layer in range(self.layers):
                        self.sorted_probs[unit, layer] = ranked[layer].tolist()
                        self.counts[unit, layer] = int(counts[unit][layer])
                else:
                    self.sorted_probs[unit, 0] = ranked.tolist()
                    self.counts[unit, 0] = int(counts[unit])
                    if unit != "hidden":
                        self.layer_order[unit] = order.tolist()
        self.dense = {
            "head": shape.heads[0],
            "ffn_neuron": shape.ffn[0],
            "hidden": shape.hidden_size,
        }

    def _count(self, unit: str, layer: int = 0) -> int:
        return self.counts.get((unit, layer), self.dense.get(unit, self.layers))

    def _alive(self, block: str) -> list[bool]:
        if block not in self.layer_order:
            return [True] * self.layers
        return _first_of(self.layer_order[block], self.counts[block, 0], self.layers)

    def run(self, aim: float) -> dict[str, int | list[int]]:
        while True:
            state = self._state()
            error = state["hidden"] * state["per_hidden"] - aim
            step = -1 if error > 0 else 1
            best: tuple[float, float, tuple[str, int]] | None = None
            for (unit, layer), probs in self.sorted_probs.items():
                k = self.counts[unit, layer]
                moved = self._move(unit, k, step, len(probs))
                if moved is None or moved < self.floors.get((unit, layer), 0):
                    continue
                delta = abs(moved - k)
                change = self._unit_params(unit, layer, k, step, state) * delta
                new_error = abs(error + step * change)
                if new_error >= abs(error):
                    continue
                block = probs[moved:k] if step < 0 else probs[k:moved]
                prob = sum(block) / len(block)
                # Least confident decision first: lowest P when removing, highest when adding.
                rank = (prob if step < 0 else -prob, new_error)
                if best is None or rank < best[:2]:
                    best = (*rank, (unit, layer), moved)
            if best is None:
                return self._result()
            self.counts[best[2]] = best[3]

    def _move(self, unit: str, k: int, step: int, dense: int) -> int | None:
        """The count one move from ``k``: the neighbouring multiple of the unit's stride
        (the dense size counts as allowed too); None past 0 or the dense size."""
        stride = self.stride.get(unit, 1)
        if step < 0:
            moved = (k - 1) // stride * stride
            return moved if moved >= 0 else None
        if k >= dense:
            return None
        return min((k // stride + 1) * stride, dense)

    def _state(self) -> dict:
        state = {
            "mha": self._alive("mha_layer"),
            "ffn": self._alive("ffn_layer"),
            "heads": [self._count("head", i) for i in range(self.layers)],
            "neurons": [self._count("ffn_neuron", i) for i in range(self.layers)],
            "hidden": self._count("hidden"),
        }
        state["per_hidden"] = sum(
            self.head_cost * h * m + FFN_MATRICES * f * a
            for h, f, m, a in zip(
                state["heads"], state["neurons"], state["mha"], state["ffn"], strict=True
            )
        )
        return state

    def _unit_params(self, unit: str, layer: int, k: int, step: int, state: dict) -> int:
        """Parameters the next unit added (step +1) or the last one removed (-1) holds
        (for ``head`` / ``ffn_neuron`` / ``hidden``: per unit of a multi-unit move)."""
        if unit == "hidden":
            return state["per_hidden"]
        hidden = state["hidden"]
        if unit in ("mha_layer", "ffn_layer"):
            target = self.layer_order[unit][k if step > 0 else k - 1]
            if unit == "mha_layer":
                return hidden * self.head_cost * state["heads"][target]
            return hidden * FFN_MATRICES * state["neurons"][target]
        if unit == "head":
            return hidden * self.head_cost if state["mha"][layer] else 0
        return hidden * FFN_MATRICES if state["ffn"][layer] else 0

    def _result(self) -> dict[str, int | list[int]]:
        result: dict[str, int | list[int]] = {}
        for (unit, layer), count in self.counts.items():
            if unit in PER_LAYER_UNITS:
                result.setdefault(unit, [0] * self.layers)[layer] = count  # type: ignore[index]
            else:
                result[unit] = count
        return result
