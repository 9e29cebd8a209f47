"""What a CNN task leaves on disk: the per-task file, the fused compact model, its ONNX."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spruce.adapters import adapter_state, find_adapters, load_adapter_state
from spruce.compact.onnx_export import export_graph
from spruce.errors import SpruceError
from spruce.spa.task_file import read_task_files, with_prefix, write_task_files
from spruce.units.channel_groups import replay_pruning
from spruce.units.channel_masks import (
    ChannelMasks,
    ChannelPlan,
    active_masks,
    apply_channel_plan,
)
from spruce.vision.models import load_cnn

TASK_WEIGHTS, TASK_META = "task.safetensors", "task.json"
TASK_FORMAT = "spruce-cnn-task/1"
MODEL_WEIGHTS, MODEL_META, MODEL_ONNX = "model.safetensors", "model.json", "model.onnx"


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers with running statistics, by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    }


def _kept_outputs(masks: ChannelMasks | None, name: str, size: int) -> torch.Tensor:
    return masks.output_keep(name, size) if masks else torch.ones(size, dtype=torch.bool)


def task_statistics(model: nn.Module) -> int:
    """How many BatchNorm running-statistic numbers the task file holds: a mean and a
    variance per kept channel (see :mod:`spruce.pipelines.adapt_image` for why a task owns them)."""
    masks = active_masks(model)
    return sum(
        2 * int(_kept_outputs(masks, name, bn.num_features).sum())
        for name, bn in batchnorm_layers(model).items()
    )


def save_task(model: nn.Module, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the task's own tensors (no base tensor) and its channel plan.

    ``task.safetensors``: every adapter's task state (kept factor rows/columns, kept bias,
    bit-packed masks) under ``adapter.``, the classifier's kept input columns and bias
    under ``classifier.``, and every BatchNorm's running mean and variance of the kept
    channels under ``batchnorm.`` (the affine parameters are the base's).
    ``task.json``: ``meta`` (must name ``classifier``) plus the plan.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    masks = active_masks(model)
    name = meta["classifier"]
    head = model.get_submodule(name)
    keep = masks.input_keep(name, head.in_features) if masks else torch.ones(head.in_features) > 0
    tensors = {f"adapter.{k}": v.contiguous() for k, v in adapter_state(model).items()}
    tensors["classifier.weight"] = head.weight.detach()[:, keep].contiguous()
    if head.bias is not None:
        tensors["classifier.bias"] = head.bias.detach().clone()
    for bn_name, bn in batchnorm_layers(model).items():
        kept = _kept_outputs(masks, bn_name, bn.num_features)
        tensors[f"batchnorm.{bn_name}.running_mean"] = bn.running_mean[kept].contiguous()
        tensors[f"batchnorm.{bn_name}.running_var"] = bn.running_var[kept].contiguous()
    plan = masks.plan if masks else ChannelPlan()
    text = json.dumps({"format": TASK_FORMAT, **meta, "plan": plan.to_json()})
    write_task_files(directory, tensors, text)
    return directory / TASK_WEIGHTS


@dataclass
class CNNTask:
    """A task file read into memory, split by what each part is loaded into: a bank keeps
    these per task so that switching tasks reads no file."""

    directory: Path
    meta: dict[str, Any]
    plan: ChannelPlan
    adapter: dict[str, torch.Tensor]
    classifier: dict[str, torch.Tensor]
    statistics: dict[str, torch.Tensor]

    @property
    def classifier_name(self) -> str:
        return str(self.meta["classifier"])


def is_cnn_task(directory: str | Path) -> bool:
    """Whether ``directory`` holds a CNN task (rather than a text one): decided by the
    ``format`` in its ``task.json``, so that one command can take either kind."""
    try:
        meta = json.loads((Path(directory) / TASK_META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith("spruce-cnn-task/")


def read_task(directory: str | Path) -> CNNTask:
    """Read the files :func:`save_task` wrote, checking only what needs no model."""
    directory = Path(directory)
    meta, tensors = read_task_files(directory)
    meta_path = directory / TASK_META
    if not isinstance(meta, dict) or meta.get("format") != TASK_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SpruceError(
            f"{meta_path} is not a {TASK_FORMAT} task file (format {found!r})",
            "write the task again with this version of spruce adapt",
        )
    weight = tensors.get("classifier.weight")
    if not isinstance(meta.get("classifier"), str) or weight is None or weight.dim() != 2:
        raise SpruceError(
            f"{meta_path} names no classifier, or {TASK_WEIGHTS} lacks its weight",
            "write the task again with spruce adapt",
        )

    plan = ChannelPlan.from_json(meta.get("plan", []))
    parts = (with_prefix(tensors, p) for p in ("adapter.", "classifier.", "batchnorm."))
    return CNNTask(directory, meta, plan, *parts)


@torch.no_grad()
def apply_task(model: nn.Module, task: CNNTask) -> ChannelMasks:
    """Switch an adapted model (same base, same adapters) to ``task``: its masks, adapter
    tensors, classifier and BatchNorm statistics; the base's tensors are only read.
    Returns the masks now in place."""
    name = task.classifier_name
    # The classifier is the task's own, of its number of classes: replaced before the
    # plan is masked, so that the masks' hooks sit on the layer that computes.
    head = _task_classifier(model, name, task.classifier["weight"].shape[0])
    masks = apply_channel_plan(model, task.plan)
    load_adapter_state(model, task.adapter)
    keep = masks.input_keep(name, head.in_features)
    weight, bias = task.classifier["weight"], task.classifier.get("bias")
    if weight.shape != (head.out_features, int(keep.sum())):
        raise SpruceError(
            f"the task's classifier has shape {tuple(weight.shape)}, the model's kept part is "
            f"{(head.out_features, int(keep.sum()))}",
            "load a task trained on the same base model",
        )
    if (bias is None) != (head.bias is None):
        raise SpruceError(
            f"the task's classifier {'lacks' if bias is None else 'has'} a bias, the model's "
            f"{'has' if bias is None else 'lacks'} one",
            "load a task trained on the same base model",
        )
    head.weight.zero_()
    head.weight[:, keep] = weight.to(head.weight)
    if head.bias is not None:
        head.bias.copy_(bias)
    _load_statistics(model, masks, task.statistics, task.directory)
    return masks


def load_task(model: nn.Module, directory: str | Path) -> ChannelMasks:
    """:func:`apply_task` of the task saved in ``directory``, read for this one switch
    (:class:`~spruce.vision.CNNTaskBank` reads each task once and keeps it)."""
    return apply_task(model, read_task(directory))


def _task_classifier(model: nn.Module, name: str, classes: int) -> nn.Linear:
    try:
        head = model.get_submodule(name)
    except AttributeError:
        head = None
    if not isinstance(head, nn.Linear):
        raise SpruceError(
            f"the task's classifier '{name}' is not a linear layer of the model",
            "load a task trained on the same base model",
        )
    if head.out_features != classes:
        new = nn.Linear(head.in_features, classes, bias=head.bias is not None).to(head.weight)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        head = new
    return head


def _load_statistics(
    model: nn.Module, masks: ChannelMasks, statistics: dict[str, torch.Tensor], directory: Path
) -> None:
    for name, bn in batchnorm_layers(model).items():
        kept = masks.output_keep(name, bn.num_features)
        for stat, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            value = statistics.get(f"{name}.{stat}")
            if value is None or value.shape != (int(kept.sum()),):
                raise SpruceError(
                    f"{directory / TASK_WEIGHTS} holds no {stat} of BatchNorm '{name}' "
                    "for its kept channels",
                    "load a task trained on this base with this version of spruce "
                    "(re-run spruce adapt to write one)",
                )
            # Removed channels' statistics never reach an output (their masks zero them).
            buffer = getattr(bn, stat)
            buffer.fill_(fill)
            buffer[kept] = value.to(buffer)


# ----- the compact model ------------------------------------------------------------------
def save_compact(model: nn.Module, directory: Path, meta: dict[str, Any]) -> Path:
    """``model.safetensors`` + ``model.json``: ``meta`` needs ``model``, ``num_classes``,
    ``image_size``, ``history`` and ``added_biases`` for :func:`load_compact`."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_WEIGHTS))
    meta = {"format": "spruce-cnn-compact/1", **meta}
    (directory / MODEL_META).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return directory / MODEL_WEIGHTS


def added_biases(adapted: nn.Module) -> list[str]:
    """Layers whose fused form carries a bias its base layer lacks: fusion keeps every
    adapter's per-task bias, so :func:`load_compact` must add these before loading."""
    return [
        name
        for name, layer in find_adapters(adapted).items()
        if getattr(layer.base_layer, "bias", None) is None
    ]


def save_fused(
    adapted: nn.Module,
    fused: nn.Module,
    history: list[list],
    directory: str | Path,
    meta: dict[str, Any],
) -> Path:
    """:func:`save_compact` of ``fused`` (:func:`~spruce.units.channel_masks.fuse_pruned` of
    ``adapted``, which gave ``history``) with what :func:`load_compact` needs to rebuild it."""
    meta = {**meta, "history": history, "added_biases": added_biases(adapted)}
    return save_compact(fused, Path(directory), meta)


def load_compact(directory: str | Path) -> nn.Module:
    """Rebuild a saved compact CNN: the dense architecture, the biases the adapters added,
    the recorded channel removal (:func:`~spruce.vision.replay_pruning`), then the weights."""
    directory = Path(directory)
    if not (directory / MODEL_META).is_file():
        raise SpruceError(f"{directory} holds no {MODEL_META}", "pass an output folder of a run")
    meta = json.loads((directory / MODEL_META).read_text(encoding="utf-8"))
    model = load_cnn(meta["model"], int(meta["num_classes"]))
    for name in meta["added_biases"]:
        conv = model.get_submodule(name)
        conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0]))
    size = int(meta["image_size"])
    with torch.enable_grad():  # torch-pruning traces through autograd
        replay_pruning(model, torch.zeros(1, 3, size, size), meta["history"])
    model.load_state_dict(load_file(str(directory / MODEL_WEIGHTS)), strict=True)
    return model.eval()


def export_cnn_onnx(model: nn.Module, path: Path, image_size: int) -> float:
    """Export ``model`` (dynamic batch axis) and return onnxruntime's largest absolute
    difference from PyTorch on a batch of a different size than the traced one."""
    import onnxruntime

    model.eval()
    example = (torch.zeros(2, 3, image_size, image_size),)
    axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    export_graph(model, example, path, ["pixel_values"], axes)
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": images.numpy()})
    with torch.no_grad():
        reference = model(images).numpy()
    return float(np.abs(logits - reference).max())
