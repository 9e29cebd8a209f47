"""SPPaRA: a channel-prunable parallel residual adapter (Rebuffi et al. 2018; SPA paper).

A pointwise (1x1) convolution P (out x in/groups) runs in parallel with the frozen
convolution. Being pointwise, it equals P placed at the kernel's centre tap, so
``delta = scaling * P at the centre`` (for a 1x1 base it is simply added) and it fuses into
one convolution. P starts at zero: the adapted layer equals its base at initialization.

Per-task learned numbers after pruning: the entries of P whose output and input channel
are both kept (within a group), ``sum_g kept_out_g * kept_in_g``, plus the kept bias.
Convolutions only: a "parallel 1x1" beside a Linear layer would be a full dense matrix,
no cheaper than fine-tuning it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spruce.adapters.base import SPAdapterLayer, scatter_kept
from spruce.errors import SpruceError


class SPPaRALayer(SPAdapterLayer):
    """Parallel pointwise adapter for ``nn.Conv{1,2,3}d`` (grouped and depthwise too)."""

    kind = "sppara"

    def __init__(self, base_layer: nn.Module, scaling: float = 1.0):
        if isinstance(base_layer, nn.Linear):
            raise SpruceError(
                "SPPaRA adapts convolutions only, not nn.Linear",
                "use kind 'splora' for Linear layers (or restrict target_modules to convs)",
            )
        super().__init__(base_layer, scaling)
        weight = self.base_layer.weight
        self.para_weight = nn.Parameter(torch.zeros(weight.shape[:2], **_like(weight)))

    def delta_weight(self) -> Tensor:
        return self.at_centre(self.scaling * self.para_weight)

    def adapter_learned_parameters(self, in_keep: Tensor, out_keep: Tensor) -> int:
        return int(self.entry_keep(in_keep, out_keep).sum())

    def adapter_state(self, in_keep: Tensor, out_keep: Tensor) -> dict[str, Tensor]:
        # Flat: with groups, the kept columns can differ from group to group.
        return {"para_weight": self.para_weight[self.entry_keep(in_keep, out_keep)]}

    def load_adapter_state(
        self, state: dict[str, Tensor], in_keep: Tensor, out_keep: Tensor
    ) -> None:
        keep = self.entry_keep(in_keep, out_keep)
        values = state["para_weight"]
        self.para_weight.copy_(scatter_kept(self.para_weight, keep, values, "para_weight"))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scaling={self.scaling}"


def _like(t: Tensor) -> dict:
    return {"device": t.device, "dtype": t.dtype}
