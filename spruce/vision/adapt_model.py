"""Adapters inside a CNN and the training loop of one CNN task (see :mod:`spruce.vision.adapt`)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spruce.adapters import (
    AdapterConfig,
    SPAdapterLayer,
    find_adapters,
    inject_adapters,
)
from spruce.vision.efficientnet_lite import SameConv2d
from spruce.vision.masking import (
    ChannelMasks,
    _Plumbing,
)
from spruce.vision.models import classifier_of


class _SamePadding(_Plumbing):
    """TensorFlow "SAME" padding in front of an adapter around a :class:`SameConv2d`: the
    adapter calls the conv's ``_conv_forward``, which skips the padding its forward adds."""

    def __init__(self, conv: SameConv2d) -> None:
        self.kernel, self.stride = conv.kernel_size, conv.stride

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, pads = args[0], []
        for size, k, s in zip(
            reversed(x.shape[-2:]), self.kernel[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return (F.pad(x, pads), *args[1:])


def classifier_name(model: nn.Module) -> str:
    """Module name of the classifier (:func:`~spruce.vision.classifier_of`)."""
    head = classifier_of(model)
    return next(name for name, module in model.named_modules() if module is head)


def adapt_cnn(
    model: nn.Module, config: AdapterConfig, classifier: str
) -> dict[str, SPAdapterLayer]:
    """Adapters in every convolution of ``model`` (in place); ``classifier`` stays trainable
    and un-adapted, everything else is frozen. Returns the adapter layers by name."""
    config = copy.deepcopy(config)
    config.trainable = sorted({*(config.trainable or []), classifier})
    layers = inject_adapters(model, config, handled_subclasses=(SameConv2d,))
    for layer in layers.values():
        if isinstance(layer.base_layer, SameConv2d) and layer.base_layer._dynamic:
            layer.register_forward_pre_hook(_SamePadding(layer.base_layer))
    return layers


def train_mode(model: nn.Module, freeze_batchnorm: bool) -> nn.Module:
    """``model.train()``, with BatchNorm left in eval mode when it belongs to a shared base."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def learned_parameters(model: nn.Module, classifier: str, masks: ChannelMasks | None) -> int:
    """Per-task learned numbers of an adapted model: surviving adapter entries and biases
    (each layer's ``learned_parameters()``) plus the classifier's kept inputs and bias."""
    head = model.get_submodule(classifier)
    kept = int(masks.input_keep(classifier, head.in_features).sum()) if masks else head.in_features
    own = head.out_features * kept + (head.bias.numel() if head.bias is not None else 0)
    return own + sum(layer.learned_parameters() for layer in find_adapters(model).values())


def fit_cnn(model, loader, optimizer, epochs, max_steps, freeze_bn, progress, desc) -> dict:
    """Plain AdamW steps over ``epochs`` of ``loader`` (at most ``max_steps``)."""
    total = epochs * len(loader) if max_steps is None else min(epochs * len(loader), max_steps)
    stats = {"steps": 0, "loss": None, "accuracy": None}
    if total <= 0:
        return stats
    train_mode(model, freeze_bn)
    loss_sum, hits, seen = 0.0, 0, 0
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        while stats["steps"] < total:
            for images, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(labels)
                hits += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
                stats["steps"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}")
                if stats["steps"] >= total:
                    break
    model.eval()
    return {**stats, "loss": loss_sum / seen, "accuracy": hits / seen}


@torch.no_grad()
def evaluate_cnn(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Accuracy and mean cross-entropy, eval mode."""
    model.eval()
    loss, hits, seen = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        hits += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    return {"accuracy": hits / seen, "loss": loss / seen, "examples": seen}
