"""The masked forward pass of docs/pruning-semantics.md, installed as hooks on a live model.

Hooks rather than a patched copy of the modeling code: the same mechanism works for every
family with a structure description, the model's own weights stay in place (the pruning
run trains them), and removing the hooks gives the untouched model back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from spruce.errors import SpruceError
from spruce.masks.units import UnitMasks
from spruce.models.structure import EncoderShape, describe, encoder_shape, layer_modules

MasksSource = UnitMasks | Callable[[], UnitMasks]

# Set on a model while masks are applied: two sets of hooks would multiply the masks twice.
_HANDLE_ATTRIBUTE = "_spruce_mask_handle"


@dataclass
class _Resolved:
    """The masks of one forward pass, with the kept hidden dimensions worked out once."""

    masks: UnitMasks
    kept: torch.Tensor | None  # indices of hidden dims with mask > 0; None when all are kept


class MaskHandle:
    """Installed mask hooks; ``remove()`` (or leaving the ``with`` block) takes them off."""

    def __init__(self, model: PreTrainedModel, source: MasksSource, shape: EncoderShape):
        self.model = model
        self._source = source
        self._shape = shape
        self._hooks: list[RemovableHandle] = []
        self._current: _Resolved | None = None

    @property
    def current(self) -> UnitMasks | None:
        """The masks used by the latest forward pass (None before the first one)."""
        return None if self._current is None else self._current.masks

    def refresh(self) -> _Resolved:
        masks = self._source() if callable(self._source) else self._source
        check_mask_shapes(masks, self._shape)
        kept = None
        if masks.hidden is not None and not bool((masks.hidden > 0).all()):
            kept = torch.nonzero(masks.hidden > 0).flatten()
            if kept.numel() == 0:
                raise SpruceError("the hidden mask removes every dimension", "keep at least one")
        self._current = _Resolved(masks, kept)
        return self._current

    def resolved(self) -> _Resolved:
        # Layer hooks normally find the masks the base-model pre-hook drew for this forward.
        return self._current if self._current is not None else self.refresh()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._current = None
        if getattr(self.model, _HANDLE_ATTRIBUTE, None) is self:
            delattr(self.model, _HANDLE_ATTRIBUTE)

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def apply_masks(model: PreTrainedModel, masks_source: MasksSource) -> MaskHandle:
    """Make ``model``'s forward pass the masked forward pass for ``masks_source``.

    ``masks_source`` is a fixed :class:`UnitMasks` or a zero-argument callable returning
    one; a callable is called once per forward of the base model (gates sample there) and
    its result is used by every layer of that forward. Gradients flow into the mask tensors.
    """
    if describe(model.config).family == "spruce_compact":
        raise SpruceError(
            "apply_masks works on dense transformers models, not on a compacted one",
            "prune the dense model and compact it once with the final masks",
        )
    if getattr(model, _HANDLE_ATTRIBUTE, None) is not None:
        raise SpruceError(
            "masks are already applied to this model",
            "call remove() on the existing handle (or leave its with-block) first",
        )
    shape = encoder_shape(model.config)
    handle = MaskHandle(model, masks_source, shape)
    setattr(model, _HANDLE_ATTRIBUTE, handle)
    hooks = handle._hooks
    base = model.base_model
    description = describe(model.config)

    def draw_masks(module: nn.Module, args: tuple) -> None:
        handle.refresh()

    hooks.append(base.register_forward_pre_hook(draw_masks))

    for layer in layer_modules(model):
        i = layer.index
        hooks.append(
            layer.attention_output.register_forward_pre_hook(
                _head_pre_hook(handle, i, shape.head_size)
            )
        )
        hooks.append(layer.attention_output.register_forward_hook(_block_hook(handle, i, "mha")))
        hooks.append(layer.ffn_output.register_forward_pre_hook(_neuron_pre_hook(handle, i)))
        hooks.append(layer.ffn_output.register_forward_hook(_block_hook(handle, i, "ffn")))
        for norm in (layer.attention_norm, layer.ffn_norm):
            hooks.append(norm.register_forward_hook(_norm_hook(handle, scale_by_hidden=False)))
    embedding_norm = base.get_submodule(description.embedding_norm)
    hooks.append(embedding_norm.register_forward_hook(_norm_hook(handle, scale_by_hidden=True)))
    return handle


def _head_pre_hook(handle: MaskHandle, layer: int, head_size: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        head = handle.resolved().masks.head
        if head is None:
            return None
        context = args[0]
        per_head = context.view(*context.shape[:-1], -1, head_size)
        scale = head[layer].to(context).unsqueeze(-1)
        return (per_head * scale).view(context.shape), *args[1:]

    return hook


def _neuron_pre_hook(handle: MaskHandle, layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        neuron = handle.resolved().masks.ffn_neuron
        if neuron is None:
            return None
        return args[0] * neuron[layer].to(args[0]), *args[1:]

    return hook


def _block_hook(handle: MaskHandle, layer: int, block: str) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        masks = handle.resolved().masks
        whole = masks.mha_layer if block == "mha" else masks.ffn_layer
        if whole is None and masks.hidden is None:
            return None
        if whole is not None:
            output = output * whole[layer].to(output)
        if masks.hidden is not None:
            output = output * masks.hidden.to(output)
        return output

    return hook


def _norm_hook(handle: MaskHandle, scale_by_hidden: bool) -> Callable:
    def hook(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        resolved = handle.resolved()
        hidden = resolved.masks.hidden
        if hidden is None:
            return None
        if resolved.kept is not None:
            output = layer_norm_kept(module, args[0], resolved.kept)
        return output * hidden.to(output) if scale_by_hidden else output

    return hook


def layer_norm_kept(norm: nn.LayerNorm, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``norm`` over the dimensions ``kept`` only; the other dimensions of the result are 0.

    This is what a LayerNorm sliced to the kept dimensions computes, so the masked model and
    the compacted one agree exactly.
    """
    kept = kept.to(x.device)
    weight = None if norm.weight is None else norm.weight.index_select(0, kept)
    bias = None if norm.bias is None else norm.bias.index_select(0, kept)
    normed = F.layer_norm(x.index_select(-1, kept), (kept.numel(),), weight, bias, norm.eps)
    return x.new_zeros(x.shape).index_copy(x.dim() - 1, kept, normed)


def check_mask_shapes(masks: UnitMasks, shape: EncoderShape) -> None:
    layers, heads, ffn = shape.num_layers, max(shape.heads), max(shape.ffn)
    expected = {
        "head": (layers, heads),
        "mha_layer": (layers,),
        "ffn_neuron": (layers, ffn),
        "ffn_layer": (layers,),
        "hidden": (shape.hidden_size,),
    }
    for name, value in masks.items():
        if tuple(value.shape) != expected[name]:
            raise SpruceError(
                f"mask '{name}' has shape {tuple(value.shape)}, the model needs {expected[name]}",
                "build the masks from this model's encoder_shape",
            )
