"""SPLoPA: a block-prunable adapter built from shared low-rank prototypes (SPA paper).

The weight W (out x in) of a Linear layer is cut into blocks of ``bo x bi`` (the block
size must divide it). A block mask (buffer, ``out/bo x in/bi``, 0/1) prunes whole blocks:
the forward pass uses ``M * (W + delta)``. The adapter of block b is a combination of
``K = num_prototypes`` low-rank prototypes shared by all blocks of the layer::

    delta_b = scaling * sum_k c[b, k] * U_k @ V_k      U_k: bo x r, V_k: r x bi

(a parameterized-hypercomplex-multiplication style product: ``sum_k kron(c_k, P_k)``), so
a task pays K numbers per kept block plus the prototypes. The coefficients start at zero
(adapted == base at initialization); the prototypes start random so that the
coefficients get gradients at once.

Block and channel pruning combine: a block is *kept* when its mask bit is set and it
still has a kept output row and a kept input column. A row (column) of blocks that keeps
no block computes nothing, so its output (input) channels are treated as pruned too --
outputs there are 0, bias included -- and :meth:`fused` drops them. Otherwise block
pruning does not shrink the matrix: the fused layer holds the masked dense weight.

Per-task learned numbers: ``kept_blocks * K + K * r * (bo + bi) + kept bias``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from spruce.adapters.base import SPAdapterLayer, scatter_kept
from spruce.adapters.config import block_shape, resolve_rank
from spruce.errors import SpruceError


class SPLoPALayer(SPAdapterLayer):
    """Block-prunable prototype adapter for ``nn.Linear``."""

    kind = "splopa"
    mask_buffers = ("in_mask", "out_mask", "block_mask")

    def __init__(
        self,
        base_layer: nn.Module,
        block_size: int | tuple[int, int] = (32, 32),
        num_prototypes: int = 16,
        rank: int | float = 1,
        scaling: float = 1.0,
    ):
        if not isinstance(base_layer, nn.Linear):
            raise SpruceError(
                f"SPLoPA adapts nn.Linear layers only, not {type(base_layer).__name__}",
                "use kind 'splora' or 'sppara' for convolutions",
            )
        super().__init__(base_layer, scaling)
        bo, bi = block_shape(block_size)
        if self.out_features % bo or self.in_features % bi:
            raise SpruceError(
                f"block size {bo}x{bi} does not divide the {self.out_features}x"
                f"{self.in_features} weight",
                f"choose a block size whose sides divide {self.out_features} and "
                f"{self.in_features}",
            )
        if isinstance(num_prototypes, bool) or not (
            isinstance(num_prototypes, int) and num_prototypes >= 1
        ):
            raise SpruceError(f"num_prototypes must be an int >= 1, got {num_prototypes!r}")
        self.block_size = (bo, bi)
        self.num_prototypes = num_prototypes
        self.rank = resolve_rank(rank, bo, bi)
        like = {"device": self.bias.device, "dtype": self.bias.dtype}
        grid = (self.out_features // bo, self.in_features // bi)
        self.register_buffer("block_mask", torch.ones(grid, **like))
        k, r = num_prototypes, self.rank
        u_bound, v_bound = 1.0 / math.sqrt(r), 1.0 / math.sqrt(bi)
        self.proto_U = nn.Parameter(torch.empty(k, bo, r, **like).uniform_(-u_bound, u_bound))
        self.proto_V = nn.Parameter(torch.empty(k, r, bi, **like).uniform_(-v_bound, v_bound))
        self.coefficients = nn.Parameter(torch.zeros(*grid, k, **like))

    def set_block_mask(self, block_mask: Tensor) -> None:
        """Replace the block mask (0/1, ``out/bo x in/bi``)."""
        if self.merged:
            raise SpruceError("cannot change the block mask of a merged adapter", "unmerge()")
        value = torch.as_tensor(block_mask).detach().to(self.block_mask)
        if value.shape != self.block_mask.shape:
            raise SpruceError(
                f"block mask has shape {tuple(value.shape)}, the layer's blocks form "
                f"{tuple(self.block_mask.shape)}"
            )
        if not bool(((value == 0) | (value == 1)).all()):
            raise SpruceError("block mask must hold only 0 and 1")
        self.block_mask.copy_(value)

    def kept_blocks(self) -> Tensor:
        """Boolean block grid: mask bit set, and some kept output row and input column."""
        bo, bi = self.block_size
        rows = (self.out_mask > 0.5).view(-1, bo).any(1)
        cols = (self.in_mask > 0.5).view(-1, bi).any(1)
        return (self.block_mask > 0.5) & rows[:, None] & cols[None, :]

    def effective_masks(self) -> tuple[Tensor, Tensor]:
        bo, bi = self.block_size
        kept = self.kept_blocks()
        rows = kept.any(1).repeat_interleave(bo).to(self.out_mask)
        cols = kept.any(0).repeat_interleave(bi).to(self.in_mask)
        return self.in_mask * cols, self.out_mask * rows

    def _dense_block_mask(self) -> Tensor:
        bo, bi = self.block_size
        return self.block_mask.repeat_interleave(bo, 0).repeat_interleave(bi, 1)

    def base_weight(self) -> Tensor:
        return self.base_layer.weight * self._dense_block_mask()

    def delta_weight(self) -> Tensor:
        prototypes = self.proto_U @ self.proto_V  # K x bo x bi
        blocks = torch.einsum("ijk,kab->iajb", self.coefficients, prototypes)
        delta = blocks.reshape(self.out_features, self.in_features)
        return self.scaling * delta * self._dense_block_mask()

    def adapter_learned_parameters(self, in_keep: Tensor, out_keep: Tensor) -> int:
        prototypes = self.proto_U.numel() + self.proto_V.numel()
        return int(self.kept_blocks().sum()) * self.num_prototypes + prototypes

    def adapter_state(self, in_keep: Tensor, out_keep: Tensor) -> dict[str, Tensor]:
        return {
            "coefficients": self.coefficients[self.kept_blocks()],
            "proto_U": self.proto_U,
            "proto_V": self.proto_V,
        }

    def load_adapter_state(
        self, state: dict[str, Tensor], in_keep: Tensor, out_keep: Tensor
    ) -> None:
        values = state["coefficients"]
        self.coefficients.copy_(
            scatter_kept(self.coefficients, self.kept_blocks(), values, "coefficients")
        )
        for name in ("proto_U", "proto_V"):
            target = getattr(self, name)
            if state[name].shape != target.shape:
                raise SpruceError(
                    f"task state '{name}' has shape {tuple(state[name].shape)}, the layer's "
                    f"is {tuple(target.shape)}",
                    "load a task state saved with the same block size, prototypes and rank",
                )
            target.copy_(state[name])

    def extra_repr(self) -> str:
        kept = int(self.kept_blocks().sum())
        return (
            f"{super().extra_repr()}, blocks={kept}/{self.block_mask.numel()}, "
            f"block_size={self.block_size}, prototypes={self.num_prototypes}, rank={self.rank}"
        )
