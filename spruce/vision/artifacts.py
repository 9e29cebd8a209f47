"""What a CNN task leaves on disk: the per-task file, the fused compact model, its ONNX."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spruce.adapters import (
    adapter_state,
    load_adapter_state,
)
from spruce.errors import SpruceError
from spruce.utils.atomic import usual_permissions
from spruce.vision.masking import (
    ChannelMasks,
    ChannelPlan,
    active_masks,
    apply_channel_plan,
)
from spruce.vision.models import load_cnn
from spruce.vision.pruner import replay_pruning

TASK_WEIGHTS, TASK_META = "task.safetensors", "task.json"
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
    variance per kept channel (see :mod:`spruce.vision.adapt` for why a task owns them)."""
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
    save_file(tensors, str(directory / TASK_WEIGHTS))
    plan = masks.plan if masks else ChannelPlan()
    text = json.dumps({"format": "spruce-cnn-task/1", **meta, "plan": plan.to_json()})
    (directory / TASK_META).write_text(text + "\n", encoding="utf-8")
    return directory / TASK_WEIGHTS


@torch.no_grad()
def load_task(model: nn.Module, directory: str | Path) -> ChannelMasks:
    """Switch an adapted model (same base, same adapters) to the task saved in ``directory``:
    its masks, adapter tensors, classifier and BatchNorm statistics. Returns the masks now
    in place."""
    directory = Path(directory)
    if not (directory / TASK_META).is_file() or not (directory / TASK_WEIGHTS).is_file():
        raise SpruceError(f"{directory} holds no {TASK_META} and {TASK_WEIGHTS}", "save_task first")
    meta = json.loads((directory / TASK_META).read_text(encoding="utf-8"))
    tensors = load_file(str(directory / TASK_WEIGHTS))
    masks = apply_channel_plan(model, ChannelPlan.from_json(meta.get("plan", [])))
    adapters = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    load_adapter_state(model, adapters)
    name = meta["classifier"]
    head = model.get_submodule(name)
    keep = masks.input_keep(name, head.in_features)
    weight = tensors["classifier.weight"]
    if weight.shape != (head.out_features, int(keep.sum())):
        raise SpruceError(
            f"the task's classifier has shape {tuple(weight.shape)}, the model's kept part is "
            f"{(head.out_features, int(keep.sum()))}",
            "load a task trained on the same base model with the same number of classes",
        )
    head.weight.zero_()
    head.weight[:, keep] = weight.to(head.weight)
    if head.bias is not None:
        head.bias.copy_(tensors["classifier.bias"])
    _load_statistics(model, masks, tensors, directory)
    return masks


def _load_statistics(
    model: nn.Module, masks: ChannelMasks, tensors: dict[str, torch.Tensor], directory: Path
) -> None:
    for name, bn in batchnorm_layers(model).items():
        kept = masks.output_keep(name, bn.num_features)
        for stat, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            value = tensors.get(f"batchnorm.{name}.{stat}")
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
    handle, temp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(handle)
    usual_permissions(temp)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                model,
                (torch.zeros(2, 3, image_size, image_size),),
                temp,
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": images.numpy()})
    with torch.no_grad():
        reference = model(images).numpy()
    return float(np.abs(logits - reference).max())
