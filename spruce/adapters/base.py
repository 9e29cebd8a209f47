"""What every Structured Pruning Adapter layer has in common (method B, METHODS.md section 3).

An adapter layer wraps a frozen ``nn.Linear`` / ``nn.Conv{1,2,3}d`` of weight W, learns a
change ``delta`` of W (the adapter kind decides its form) and a per-task bias b, and is
pruned by float 0/1 channel masks held as buffers::

    y = out_mask * (F(x * in_mask; W + delta) + b)

``in_mask`` runs over input features (input channels of a convolution), ``out_mask`` over
output features. One frozen base is shared by every task; a task is its masks, its bias and
its adapter tensors, which is all that :meth:`SPAdapterLayer.task_state` stores.

**Grouped convolutions.** Group g maps input channels ``g*I/G ... (g+1)*I/G - 1`` to
output channels ``g*O/G ...``. Any masks work in :meth:`forward`; :meth:`fused` needs masks
that leave a valid grouped convolution: every group either keeps nothing (no inputs and no
outputs: the group is dropped) or keeps the same number of inputs and the same number of
outputs as every other surviving group. For a depthwise convolution (one input channel per
group) this means ``in_mask == out_mask`` channel by channel (times the channel multiplier).
Masks stay free while training; the check happens when fusing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spruce.errors import SpruceError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
MaskLike = Tensor | Sequence[float] | None


def scatter_kept(like: Tensor, keep: Tensor, values: Tensor, name: str) -> Tensor:
    """A zero tensor shaped like ``like`` with ``values`` written where ``keep`` is true."""
    out = torch.zeros_like(like)
    expected = out[keep].shape
    if values.shape != expected:
        raise SpruceError(
            f"task state '{name}' has shape {tuple(values.shape)}, the masks ask for "
            f"{tuple(expected)}",
            "load a task state saved from a layer with the same base and adapter settings",
        )
    out[keep] = values.to(out)
    return out


def pack_mask(mask: Tensor) -> Tensor:
    """0/1 mask -> uint8 tensor of packed bits (8 mask entries per byte)."""
    bits = mask.detach().flatten().cpu().numpy() > 0.5
    return torch.from_numpy(np.packbits(bits))


def unpack_mask(packed: Tensor, like: Tensor, name: str) -> Tensor:
    """Inverse of :func:`pack_mask`, shaped, typed and placed like the buffer ``like``."""
    count = like.numel()
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise SpruceError(
            f"task state '{name}' does not fit a mask of {count} entries",
            "load a task state saved from a layer with the same base and adapter settings",
        )
    bits = np.unpackbits(packed.cpu().numpy(), count=count)
    return torch.from_numpy(bits).to(like).reshape(like.shape)


class SPAdapterLayer(nn.Module):
    """A frozen base layer plus a learned, prunable change; subclasses define the change."""

    kind: str = ""
    #: Mask buffers saved (bit-packed) in the task state; subclasses may add their own.
    mask_buffers: tuple[str, ...] = ("in_mask", "out_mask")

    def __init__(self, base_layer: nn.Module, scaling: float = 1.0) -> None:
        super().__init__()
        if isinstance(base_layer, SPAdapterLayer) or not isinstance(base_layer, ADAPTABLE):
            raise SpruceError(
                f"cannot wrap {type(base_layer).__name__} in an adapter",
                "adapters wrap nn.Linear, nn.Conv1d, nn.Conv2d or nn.Conv3d layers",
            )
        self.base_layer = base_layer.requires_grad_(False)
        weight = base_layer.weight
        self.is_conv = not isinstance(base_layer, nn.Linear)
        self.groups = base_layer.groups if self.is_conv else 1
        self.out_features = weight.shape[0]
        self.in_features = weight.shape[1] * self.groups
        self.scaling = float(scaling)
        self.merged = False
        like = {"device": weight.device, "dtype": weight.dtype}
        self.register_buffer("in_mask", torch.ones(self.in_features, **like))
        self.register_buffer("out_mask", torch.ones(self.out_features, **like))
        # The bias is per task: it starts from the base's and is learned with the adapter.
        base_bias = base_layer.bias
        bias = (
            base_bias.detach().clone()
            if base_bias is not None
            else torch.zeros(self.out_features, **like)
        )
        self.bias = nn.Parameter(bias)

    # ----- what a subclass provides -------------------------------------------------------
    def delta_weight(self) -> Tensor:
        """The adapter's change of the base weight (same shape as it), scaling included."""
        raise NotImplementedError

    def adapter_learned_parameters(self, in_keep: Tensor, out_keep: Tensor) -> int:
        """Adapter numbers that survive the (effective, boolean) channel masks."""
        raise NotImplementedError

    def adapter_state(self, in_keep: Tensor, out_keep: Tensor) -> dict[str, Tensor]:
        """The adapter tensors restricted to what survives the masks."""
        raise NotImplementedError

    def load_adapter_state(
        self, state: dict[str, Tensor], in_keep: Tensor, out_keep: Tensor
    ) -> None:
        """Inverse of :meth:`adapter_state`; entries of pruned channels become zero."""
        raise NotImplementedError

    def base_weight(self) -> Tensor:
        """The base weight as the forward pass uses it (block pruning masks it)."""
        return self.base_layer.weight

    def effective_masks(self) -> tuple[Tensor, Tensor]:
        """(in_mask, out_mask) actually applied; block pruning can remove more channels."""
        return self.in_mask, self.out_mask

    def unmerged_forward(self, x: Tensor) -> Tensor:
        """F(x; W + delta) + b; a subclass may compute it more cheaply."""
        return self.apply_weight(x, self.base_weight() + self.delta_weight(), self.bias)

    # ----- shared machinery ---------------------------------------------------------------
    def set_masks(self, in_mask: MaskLike = None, out_mask: MaskLike = None) -> None:
        """Replace the channel masks (0/1 values; ``None`` leaves a mask as it is)."""
        for name, value in (("in_mask", in_mask), ("out_mask", out_mask)):
            if value is None:
                continue
            buffer = getattr(self, name)
            value = torch.as_tensor(value).detach().to(buffer).flatten()
            if value.numel() != buffer.numel():
                raise SpruceError(
                    f"{name} has {value.numel()} entries but the layer has {buffer.numel()}"
                )
            if not bool(((value == 0) | (value == 1)).all()):
                raise SpruceError(f"{name} must hold only 0 and 1")
            buffer.copy_(value)

    def channel_view(self, mask: Tensor) -> Tensor:
        """Shape a per-channel vector to broadcast over the channel axis of activations."""
        if not self.is_conv:
            return mask
        return mask.view(-1, *([1] * (self.base_layer.weight.dim() - 2)))

    def apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The base layer's operation (stride, padding, ... included) with another weight."""
        if self.is_conv:
            return self.base_layer._conv_forward(x, weight, bias)
        return F.linear(x, weight, bias)

    def at_centre(self, matrix: Tensor) -> Tensor:
        """A weight-shaped tensor: ``matrix`` (out x in/groups) at the kernel centre tap,
        zero elsewhere -- a parallel 1x1 convolution folded into the kernel."""
        weight = self.base_layer.weight
        if not self.is_conv:
            return matrix
        centre = tuple(k // 2 for k in weight.shape[2:])
        delta = matrix.new_zeros(weight.shape)
        delta[(slice(None), slice(None), *centre)] = matrix
        return delta

    def adapted_weight(self) -> Tensor:
        """W + delta as the forward pass uses it (W already holds delta when merged)."""
        weight = self.base_weight()
        return weight if self.merged else weight + self.delta_weight()

    def forward(self, x: Tensor) -> Tensor:
        in_mask, out_mask = self.effective_masks()
        x = x * self.channel_view(in_mask)
        # The bias goes into the layer's own op: at initialization the output is then
        # bit-for-bit the base layer's.
        if self.merged:
            y = self.apply_weight(x, self.base_weight(), self.bias)
        else:
            y = self.unmerged_forward(x)
        return y * self.channel_view(out_mask)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the delta into the base weight in place; forward then skips the adapter."""
        if not self.merged:
            self.base_layer.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact up to float rounding)."""
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight())
            self.merged = False

    def group_of_output(self) -> Tensor:
        """Group index of every output channel."""
        per_group = self.out_features // self.groups
        return torch.arange(self.out_features, device=self.out_mask.device) // per_group

    def entry_keep(self, in_keep: Tensor, out_keep: Tensor) -> Tensor:
        """Boolean (out x in/groups): which entries of a weight-like matrix survive."""
        in_by_group = in_keep.view(self.groups, -1)
        return out_keep[:, None] & in_by_group[self.group_of_output()]

    def keep(self) -> tuple[Tensor, Tensor]:
        """Effective masks as booleans."""
        in_mask, out_mask = self.effective_masks()
        return in_mask > 0.5, out_mask > 0.5

    @torch.no_grad()
    def fused(self) -> nn.Module:
        """A new plain layer computing this one on the kept channels only.

        It holds the kept rows and columns of W + delta and the kept bias entries; it takes
        the kept input channels (in order) and returns the kept output channels.
        """
        in_keep, out_keep = self.keep()
        weight = self.adapted_weight()[out_keep]
        bias = self.bias[out_keep]
        groups = self.groups
        if groups == 1:
            weight = weight[:, in_keep]
        else:
            weight, groups = self._fused_grouped(weight, in_keep, out_keep)
        kept_out, kept_in = weight.shape[0], weight.shape[1] * groups
        if self.is_conv:
            base = self.base_layer
            layer = CONV_CLASSES[weight.dim() - 2](
                kept_in, kept_out, base.kernel_size, base.stride, base.padding,
                base.dilation, groups, True, base.padding_mode, device="meta",
            )  # fmt: skip
        else:
            layer = nn.Linear(kept_in, kept_out, device="meta")
        layer.weight = nn.Parameter(weight.detach().clone())
        layer.bias = nn.Parameter(bias.detach().clone())
        return layer

    def _fused_grouped(self, rows: Tensor, in_keep: Tensor, out_keep: Tensor) -> tuple[Tensor, int]:
        """Kept input columns of each kept row, picked within the row's own group."""
        in_by_group = in_keep.view(self.groups, -1)
        kept_in = in_by_group.sum(1)
        kept_out = out_keep.view(self.groups, -1).sum(1)
        alive = kept_out > 0
        valid = (
            bool((kept_in[~alive] == 0).all())
            and int(alive.sum()) > 0
            and kept_in[alive].unique().numel() == 1
            and kept_out[alive].unique().numel() == 1
            and int(kept_in[alive][0]) > 0
        )
        if not valid:
            raise SpruceError(
                f"the masks of this grouped convolution (groups={self.groups}) do not leave "
                f"a valid grouped convolution: kept inputs per group {kept_in.tolist()}, "
                f"kept outputs per group {kept_out.tolist()}",
                "keep the same number of inputs and outputs in every group that survives and "
                "drop a group's inputs with its outputs (depthwise: in_mask == out_mask)",
            )
        per_group = int(kept_in[alive][0])
        columns = torch.zeros(self.groups, per_group, dtype=torch.long, device=rows.device)
        columns[alive] = in_by_group[alive].nonzero()[:, 1].view(-1, per_group)
        index = columns[self.group_of_output()[out_keep]]
        index = index.view(*index.shape, *([1] * (rows.dim() - 2))).expand(-1, -1, *rows.shape[2:])
        return rows.gather(1, index), int(alive.sum())

    def learned_parameters(self) -> int:
        """Per-task learned numbers after pruning: surviving adapter entries + kept bias.

        Masks are not counted here; they cost :meth:`mask_bits` bits.
        """
        in_keep, out_keep = self.keep()
        return self.adapter_learned_parameters(in_keep, out_keep) + int(out_keep.sum())

    def mask_bits(self) -> int:
        """Bits needed to store this task's masks."""
        return sum(getattr(self, name).numel() for name in self.mask_buffers)

    def task_state(self) -> dict[str, Tensor]:
        """Only the task's own tensors: packed masks, kept bias, surviving adapter entries."""
        in_keep, out_keep = self.keep()
        state = {name: pack_mask(getattr(self, name)) for name in self.mask_buffers}
        state["bias"] = self.bias.detach()[out_keep].clone()
        state.update(
            {k: v.detach().clone() for k, v in self.adapter_state(in_keep, out_keep).items()}
        )
        return state

    @torch.no_grad()
    def load_task_state(self, state: dict[str, Tensor]) -> None:
        """Restore a :meth:`task_state` into a layer with the same base and settings."""
        if self.merged:
            raise SpruceError("cannot load a task into a merged adapter", "unmerge() first")
        missing = [n for n in (*self.mask_buffers, "bias") if n not in state]
        if missing:
            raise SpruceError(f"task state lacks {', '.join(missing)}")
        for name in self.mask_buffers:
            buffer = getattr(self, name)
            buffer.copy_(unpack_mask(state[name], buffer, name))
        in_keep, out_keep = self.keep()
        self.bias.copy_(scatter_kept(self.bias, out_keep, state["bias"], "bias"))
        self.load_adapter_state(state, in_keep, out_keep)

    def extra_repr(self) -> str:
        in_keep, out_keep = self.keep()
        return (
            f"kind={self.kind}, in={int(in_keep.sum())}/{self.in_features}, "
            f"out={int(out_keep.sum())}/{self.out_features}, merged={self.merged}"
        )
