"""Adapters inside a CNN and the training phases of one image task (see
:mod:`spruce.pipelines.adapt_image`)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from spruce.adapters import (
    AdapterConfig,
    SPAdapterLayer,
    find_adapters,
    inject_adapters,
)
from spruce.train import TrainConfig, Trainer
from spruce.train.resume import TrainerCheckpoint
from spruce.units.channel_masks import (
    ChannelMasks,
    _Plumbing,
)
from spruce.vision.efficientnet_lite import SameConv2d
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


def learned_parameters(model: nn.Module, classifier: str, masks: ChannelMasks | None) -> int:
    """Per-task learned numbers of an adapted model: surviving adapter entries and biases
    (each layer's ``learned_parameters()``) plus the classifier's kept inputs and bias."""
    head = model.get_submodule(classifier)
    kept = int(masks.input_keep(classifier, head.in_features).sum()) if masks else head.in_features
    own = head.out_features * kept + (head.bias.numel() if head.bias is not None else 0)
    return own + sum(layer.learned_parameters() for layer in find_adapters(model).values())


def image_batches(items: list[tuple[Tensor, int]]) -> dict[str, Tensor]:
    """``collate_fn`` of a CNN's training loader: the Trainer takes batches as dicts."""
    images, labels = default_collate(items)
    return {"images": images, "labels": labels}


class PhaseTally:
    """Cross-entropy of a CNN phase and what the report says of it: the mean loss and the
    accuracy over the phase's training batches.

    It is the Trainer's ``loss_fn`` (:meth:`loss`) and a step callback at once; its sums
    are part of the phase's checkpoint, so a resumed phase reports the same numbers as an
    uninterrupted one.
    """

    def __init__(self) -> None:
        self.loss_sum, self.hits, self.seen = 0.0, 0, 0
        self._batch = (0, 0)  # correct predictions and size of the batch being trained on

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        labels = batch["labels"]
        logits = model(batch["images"])
        self._batch = (int((logits.argmax(1) == labels).sum()), len(labels))
        accuracy = (self.hits + self._batch[0]) / (self.seen + self._batch[1])
        return F.cross_entropy(logits, labels), {"acc": accuracy}

    def __call__(self, trainer: Trainer, step: int, stats: dict[str, float]) -> None:
        hits, size = self._batch
        self.loss_sum += stats["loss"] * size
        self.hits += hits
        self.seen += size

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "hits": self.hits, "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.hits, self.seen = state["loss_sum"], state["hits"], state["seen"]

    def summary(self, steps: int) -> dict[str, Any]:
        loss, accuracy = self.loss_sum / self.seen, self.hits / self.seen
        return {"steps": steps, "loss": loss, "accuracy": accuracy}


def _constant(step: int) -> float:
    return 1.0


def train_phase(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    progress: bool,
    description: str,
    checkpoint: TrainerCheckpoint | None = None,
) -> dict[str, Any]:
    """``steps`` steps of cross-entropy on ``loader`` (batches from :func:`image_batches`)
    through the shared :class:`~spruce.train.Trainer`, so that a ``checkpoint`` makes the
    phase resumable and a stop signal saves first.

    ``optimizer`` carries over from phase to phase (its moments included) at a constant
    learning rate, without gradient clipping: the CNN recipe, not the encoders' linear
    warm-up/decay per phase. Returns the phase's summary and leaves ``model`` in eval mode.
    """
    if steps <= 0:
        return {"steps": 0, "loss": None, "accuracy": None}
    tally = PhaseTally()
    trainer = Trainer(
        model,
        loader,
        TrainConfig(max_steps=steps, max_grad_norm=0.0, patience=None),
        loss_fn=tally.loss,
        callbacks=[tally],
        keep_best=False,  # nothing is evaluated while a CNN phase trains
        progress=progress,
        description=description,
        checkpoint=checkpoint,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _constant),
    )
    result = trainer.fit()
    model.eval()  # channels are scored, and the model evaluated, in eval mode
    return tally.summary(result.steps)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader) -> None:
    """Recompute every BatchNorm's running statistics as the plain average of its batch
    statistics over ``loader`` (``(images, labels)`` batches), without dropout or
    stochastic depth, leaving the model in eval mode.

    Why: BatchNorm normalises training batches with their own statistics, but evaluation,
    scoring and the fused model use the running ones, which trail the weights by their
    momentum. EfficientNet-Lite's is TensorFlow's 0.01, so after the few dozen steps of a
    small task they are still mostly ImageNet's and, once pruning has shifted every
    layer's inputs, wrong: the digits benchmark's fine-pruned models went from chance
    (0.10) to 0.68 test accuracy with this alone."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    model.eval()  # dropout and stochastic depth off
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches below
        layer.train()
    try:
        for images, _ in loader:
            model(images)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()


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
