"""One hard-concrete gate per prunable unit type of an encoder, producing ``UnitMasks``.

Training mode samples every gate once per call (one structure per step, shared by the
batch, as CoFi does). Eval mode and :meth:`EncoderGates.deterministic_masks` give the
fixed structure:

1. **Per-group rounding (CoFi).** Each gate *group* keeps its rounded expected number of
   units -- ``round(sum P(z > 0))`` -- choosing the largest ``log_alpha``. Groups: the
   heads of one layer, the FFN units of one layer, the ``mha_layer`` gates over all
   layers, the ``ffn_layer`` gates over all layers, the hidden dimensions.
2. **Greedy size correction (ours).** Rounding every group and multiplying rounded
   counts does not reproduce the expected size: with hesitant gates (a symmetric group
   sitting at P = 0.7) every layer rounds the same way and the error compounds to
   several points of sparsity. So, while it brings the exact parameter count closer to
   the aim, we move one unit at a time -- removing the kept unit with the *lowest* keep
   probability, or adding the removed unit with the *highest*, among the group
   boundaries whose move reduces the error. Each group still keeps a top-``log_alpha``
   prefix, so the result is a valid CoFi-style selection. It stops when no single move
   helps, i.e. within half the smallest available move of the aim (one FFN unit,
   ``2 * D_kept`` parameters, when FFN units are gated). On a 4-layer toy, rounding alone
   missed the expected sparsity by up to 8.8 points; corrected, by under 0.05.
3. **One head at least (ours).** If the result keeps no attention head, the model
   cannot read its input (see ``spruce/masks/correction.py``): one head is kept and
   step 2 runs again with it pinned.

The aim is the gates' own expected size by default (what was learned), or an explicit
``target_sparsity`` (pass the run's target for the final structure: it then lands on
the target even if the gates stopped short of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spruce.errors import SpruceError
from spruce.masks.accounting import dense_encoder_params, expected_encoder_params
from spruce.masks.correction import (
    GreedySizeCorrection,
    attention_floors,
    raise_to_floors,
    reads_input,
)
from spruce.masks.hard_concrete import INIT_MEAN, HardConcreteGate
from spruce.masks.units import PER_LAYER_UNITS, UNIT_TYPES, UnitMasks
from spruce.models.structure import EncoderShape


def gate_shape(unit: str, shape: EncoderShape) -> tuple[int, ...]:
    """Shape of the gate tensor for ``unit`` (the ``UnitMasks`` field shape)."""
    layers = shape.num_layers
    return {
        "head": (layers, shape.heads[0]),
        "mha_layer": (layers,),
        "ffn_neuron": (layers, shape.ffn[0]),
        "ffn_layer": (layers,),
        "hidden": (shape.hidden_size,),
    }[unit]


def shape_from_dict(data: Mapping) -> EncoderShape:
    """Inverse of :meth:`EncoderShape.to_dict`."""
    layers = data["layers"]
    return EncoderShape(
        num_layers=int(data["num_layers"]),
        hidden_size=int(data["hidden_size"]),
        head_size=int(data["head_size"]),
        heads=tuple(int(x["heads"]) for x in layers),
        ffn=tuple(int(x["ffn"]) for x in layers),
    )


class EncoderGates(nn.Module):
    """Hard-concrete gates for the ``units`` of an encoder of ``shape``."""

    def __init__(
        self,
        shape: EncoderShape,
        units: Sequence[str] = UNIT_TYPES,
        *,
        init_mean: float | Mapping[str, float] = INIT_MEAN,
        size_multiple: int = 1,
    ) -> None:
        super().__init__()
        if int(size_multiple) < 1:
            raise SpruceError(
                f"size_multiple must be a positive integer, got {size_multiple}",
                "use 1 for no rounding, or 8 / 16 for CPU-friendly widths",
            )
        self.size_multiple = int(size_multiple)
        units = tuple(units)
        unknown = sorted(set(units) - set(UNIT_TYPES))
        if unknown or not units or len(set(units)) != len(units):
            raise SpruceError(
                f"cannot build gates for unit types {list(units)}",
                f"choose distinct ones of: {', '.join(UNIT_TYPES)}",
            )
        if len(set(shape.heads)) != 1 or len(set(shape.ffn)) != 1:
            # Gate tensors are rectangular [L, H] / [L, F]; an already pruned model with
            # uneven layers would need padded gates that the accounting ignores.
            raise SpruceError(
                "gates need every layer to have the same number of heads and FFN units",
                "prune the original dense model rather than an already pruned one",
            )
        self.shape = shape
        if isinstance(init_mean, int | float):
            means = {u: float(init_mean) for u in units}
        else:
            means = {u: float(init_mean.get(u, INIT_MEAN)) for u in units}
        self.init_mean = means
        # Keep UNIT_TYPES order whatever order the caller used: stable state_dict keys.
        self.gates = nn.ModuleDict(
            {
                u: HardConcreteGate(gate_shape(u, shape), init_mean=means[u])
                for u in UNIT_TYPES
                if u in units
            }
        )
        self._cache: tuple[tuple, UnitMasks] | None = None  # see deterministic_masks

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(self.gates.keys())

    @property
    def config(self) -> dict:
        """JSON-serializable description; :meth:`from_config` rebuilds the module."""
        return {
            "units": list(self.units),
            "shape": self.shape.to_dict(),
            "init_mean": self.init_mean,
            "size_multiple": self.size_multiple,
        }

    @classmethod
    def from_config(cls, config: Mapping) -> EncoderGates:
        return cls(
            shape_from_dict(config["shape"]),
            config["units"],
            init_mean=config.get("init_mean", INIT_MEAN),
            size_multiple=config.get("size_multiple", 1),
        )

    def set_shift(self, value: float) -> None:
        """Shift every gate's log_alpha by ``value`` (see :class:`HardConcreteGate`)."""
        for gate in self.gates.values():
            gate.shift.fill_(float(value))
            gate._offset = None

    def set_offset(self, offset: torch.Tensor | None) -> None:
        """This step's zero-valued offset carrying the shift's implicit gradient."""
        for gate in self.gates.values():
            gate._offset = offset

    @property
    def shift(self) -> float:
        return float(next(iter(self.gates.values())).shift) if self.gates else 0.0

    def probs(self) -> dict[str, torch.Tensor]:
        """``P(z > 0)`` per gated unit type (differentiable)."""
        return {u: gate.prob_nonzero() for u, gate in self.gates.items()}

    # -- masks --------------------------------------------------------------------------

    def forward(self) -> UnitMasks:
        """Sampled masks while training, the deterministic structure in eval mode."""
        if self.training:
            return UnitMasks(**{u: gate.sample() for u, gate in self.gates.items()})
        return self.deterministic_masks()

    def masks(self) -> UnitMasks:
        return self()

    def deterministic_masks(
        self, target_sparsity: float | None = None, *, correct: bool = True
    ) -> UnitMasks:
        """The fixed structure (see the module doc). ``correct=False`` gives plain
        per-group rounding, CoFi's rule. Cached until a gate's ``log_alpha`` changes."""
        log_alphas = [gate.effective_log_alpha().detach() for gate in self.gates.values()]
        # The cache compares values, not version counters: ``p.data.fill_()`` and the
        # like change a parameter without bumping its version. An eval-mode forward per
        # batch then costs a few comparisons instead of a greedy search.
        if self._cache is not None:
            (old_target, old_correct, old_values), masks = self._cache
            if (old_target, old_correct) == (target_sparsity, correct) and all(
                a.shape == b.shape and a.device == b.device and torch.equal(a, b)
                for a, b in zip(old_values, log_alphas, strict=True)
            ):
                return _clone(masks)
        rounded = self.rounded_counts()
        if self.size_multiple > 1:
            rounded = self._snap_widths(rounded)
        if target_sparsity is None:
            aim = float(expected_encoder_params(self).detach())
        else:
            aim = (1.0 - float(target_sparsity)) * dense_encoder_params(self.shape)
        counts = self._corrected(rounded, aim, {}, correct)
        if not reads_input(self, counts):
            floors = attention_floors(self)
            counts = self._corrected(raise_to_floors(rounded, floors), aim, floors, correct)
        masks = self._masks_from_counts(counts)
        self._cache = ((target_sparsity, correct, [x.clone() for x in log_alphas]), masks)
        return _clone(masks)

    def _corrected(
        self, counts: dict, aim: float, floors: dict, correct: bool = True
    ) -> dict[str, int | list[int]]:
        if not correct:
            return counts
        return GreedySizeCorrection(self, counts, self.size_multiple, floors).run(aim)

    def rounded_counts(self) -> dict[str, int | list[int]]:
        """Per-group rounded expected number of kept units (CoFi's deterministic rule)."""
        counts: dict[str, int | list[int]] = {}
        with torch.no_grad():
            for unit, gate in self.gates.items():
                expected = gate.expected_num_nonzero(per_row=unit in PER_LAYER_UNITS)
                rounded = torch.floor(expected + 0.5).long()  # half up, not to even
                counts[unit] = rounded.tolist() if unit in PER_LAYER_UNITS else int(rounded)
        return counts

    def _snap_widths(self, counts: dict[str, int | list[int]]) -> dict[str, int | list[int]]:
        """FFN widths and the hidden size rounded to the nearest ``size_multiple`` (or left
        at the dense size): matrix products with such widths run markedly faster on CPUs."""
        snapped = dict(counts)
        if "ffn_neuron" in snapped:
            dense = self.shape.ffn[0]
            snapped["ffn_neuron"] = [
                _snap(k, self.size_multiple, dense)
                for k in snapped["ffn_neuron"]  # type: ignore[union-attr]
            ]
        if "hidden" in snapped:
            snapped["hidden"] = _snap(
                int(snapped["hidden"]), self.size_multiple, self.shape.hidden_size
            )
        return snapped

    def _masks_from_counts(self, counts: Mapping[str, int | list[int]]) -> UnitMasks:
        values = {
            unit: gate.deterministic(counts[unit], per_row=unit in PER_LAYER_UNITS)
            for unit, gate in self.gates.items()
        }
        # A removed block removes its heads / FFN units too: zero them so that every
        # mask > 0 in the result is a unit that really remains (compaction reads them).
        for block, units in (("mha_layer", "head"), ("ffn_layer", "ffn_neuron")):
            if block in values and units in values:
                values[units] = values[units] * (values[block] > 0).unsqueeze(1)
        return UnitMasks(**values)


def _snap(count: int, multiple: int, dense: int) -> int:
    """``count`` rounded half up to a multiple of ``multiple``, or ``dense`` if closer."""
    snapped = min(((count + multiple // 2) // multiple) * multiple, dense)
    return dense if abs(dense - count) < abs(snapped - count) else snapped


def _clone(masks: UnitMasks) -> UnitMasks:
    return UnitMasks(**{name: value.clone() for name, value in masks.items()})
