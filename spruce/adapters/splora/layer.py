"""SPLoRA: a channel-prunable low-rank adapter (Hedegaard et al., arXiv 2211.10155).

Linear layer W (out x in): ``delta = scaling * B @ A`` with A (r x in), B (out x r).
Convolution: the same low-rank matrix acts on the kernel's centre tap only (a parallel 1x1
convolution folded into the kernel), so it fuses into one convolution. For ``groups > 1``
the adapter is per group -- A (groups x r x in/groups), B (groups x out/groups x r) --
so the delta keeps the block-diagonal structure of a grouped weight and never links
channels of different groups.

A starts like ``nn.Linear``'s weight (uniform, bound 1/sqrt(fan_in)), B at zero: at
initialization the adapted layer equals its base exactly, yet B gets gradients at once.

Per-task learned numbers after pruning: the columns of A of kept input channels and the
rows of B of kept output channels, ``r * (kept_in + kept_out)``, plus the kept bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spruce.adapters.base import SPAdapterLayer, scatter_kept
from spruce.adapters.config import resolve_rank


class SPLoRALayer(SPAdapterLayer):
    """Low-rank, channel-prunable adapter for ``nn.Linear`` and ``nn.Conv{1,2,3}d``."""

    kind = "splora"

    def __init__(self, base_layer: nn.Module, rank: int | float = 8, scaling: float = 1.0):
        super().__init__(base_layer, scaling)
        groups = self.groups
        fan_in, fan_out = self.in_features // groups, self.out_features // groups
        self.rank = resolve_rank(rank, fan_out, fan_in)
        like = {"device": self.bias.device, "dtype": self.bias.dtype}
        bound = 1.0 / math.sqrt(fan_in)
        self.lora_A = nn.Parameter(
            torch.empty(groups, self.rank, fan_in, **like).uniform_(-bound, bound)
        )
        self.lora_B = nn.Parameter(torch.zeros(groups, fan_out, self.rank, **like))

    def delta_matrix(self) -> Tensor:
        """``scaling * B @ A`` per group, stacked to (out x in/groups)."""
        product = torch.bmm(self.lora_B, self.lora_A)  # groups x out/groups x in/groups
        return self.scaling * product.reshape(self.out_features, -1)

    def delta_weight(self) -> Tensor:
        return self.at_centre(self.delta_matrix())

    def unmerged_forward(self, x: Tensor) -> Tensor:
        if self.is_conv:
            return super().unmerged_forward(x)
        # Linear: x A^T B^T costs r * (in + out) per token instead of forming B A.
        low_rank = F.linear(F.linear(x, self.lora_A[0]), self.lora_B[0])
        return F.linear(x, self.base_weight(), self.bias) + self.scaling * low_rank

    # A as (r x in) over global input channels, B as (out x r): one column of A per input
    # channel and one row of B per output channel, whatever the groups.
    def _global_A(self) -> Tensor:
        return self.lora_A.permute(1, 0, 2).reshape(self.rank, self.in_features)

    def _global_B(self) -> Tensor:
        return self.lora_B.reshape(self.out_features, self.rank)

    def adapter_learned_parameters(self, in_keep: Tensor, out_keep: Tensor) -> int:
        return self.rank * (int(in_keep.sum()) + int(out_keep.sum()))

    def adapter_state(self, in_keep: Tensor, out_keep: Tensor) -> dict[str, Tensor]:
        return {"lora_A": self._global_A()[:, in_keep], "lora_B": self._global_B()[out_keep]}

    def load_adapter_state(
        self, state: dict[str, Tensor], in_keep: Tensor, out_keep: Tensor
    ) -> None:
        a_values = state["lora_A"].transpose(0, 1)  # kept columns as rows, to scatter them
        a_global = scatter_kept(self._global_A().T, in_keep, a_values, "lora_A").T
        a_shape = (self.rank, self.groups, self.in_features // self.groups)
        self.lora_A.copy_(a_global.reshape(a_shape).permute(1, 0, 2))
        b_global = scatter_kept(self._global_B(), out_keep, state["lora_B"], "lora_B")
        self.lora_B.copy_(b_global.view_as(self.lora_B))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling}"
