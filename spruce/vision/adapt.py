"""Structured Pruning Adapters for CNNs: one frozen base, a small pruned change per task.

``run_cnn_adapt`` trains one task in one of two modes (METHODS.md section 3):

* **adapt** (default): SPLoRA or SPPaRA adapters in every convolution, the classifier
  trained in full (it is the task's own head), every other base tensor frozen. BatchNorm
  is frozen *and kept in eval mode* while training: its running statistics belong to the
  shared base, and letting one task's batches move them would change the base under every
  other task (and its affine parameters are base tensors too). The task's own per-channel
  shift lives in the adapters' biases instead.
* **fine-prune**: no adapters; every weight (BatchNorm included, in train mode) learns --
  the paper's baseline.

Pruning is progressive: ``rounds`` times, score the channels on a plain merged copy with
the current masks, extend the channel plan to ``target * round / rounds`` of the prunable
parameters, mask it on the live model (:mod:`spruce.vision.masking`) and fine-tune
``epochs_per_round``; then a final fine-tune of ``epochs``. At the end the merged copy is
pruned physically with the same plan (the fused model, saved as safetensors + JSON and
ONNX), and in adapt mode the task alone is saved as ``task.safetensors`` + ``task.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from spruce.adapters import (
    AdapterConfig,
    SPAdapterLayer,
    adapter_state,
    find_adapters,
    inject_adapters,
    load_adapter_state,
)
from spruce.errors import SpruceError
from spruce.report.writer import write_report
from spruce.train.seeding import seed_everything
from spruce.utils.atomic import check_output_dir, staged_output_dir
from spruce.vision.channels import CHANNEL_CRITERIA
from spruce.vision.data import load_images
from spruce.vision.efficientnet_lite import SameConv2d
from spruce.vision.masking import (
    ChannelMasks,
    ChannelPlan,
    PlanStep,
    _Plumbing,
    active_masks,
    apply_channel_plan,
    extend_plan,
    fuse_pruned,
)
from spruce.vision.models import classifier_of, input_normalization, load_cnn
from spruce.vision.pruner import prunable_parameter_count, replay_pruning

TASK_WEIGHTS, TASK_META = "task.safetensors", "task.json"
MODEL_WEIGHTS, MODEL_META, MODEL_ONNX = "model.safetensors", "model.json", "model.onnx"
_PLAIN_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, nn.Linear.forward)


# ----- adapters in a CNN ------------------------------------------------------------------
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
    for name, module in model.named_modules():
        custom = isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, SameConv2d)
        if custom and type(module).forward not in _PLAIN_FORWARDS:
            raise SpruceError(
                f"'{name}' is a {type(module).__name__} with its own forward, which an adapter "
                "would bypass",
                "use a model built from plain nn.Conv*d layers (or EfficientNet-Lite)",
            )
    layers = inject_adapters(model, config)
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


# ----- the per-task file ------------------------------------------------------------------
def save_task(model: nn.Module, directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the task's own tensors (no base tensor) and its channel plan.

    ``task.safetensors``: every adapter's task state (kept factor rows/columns, kept bias,
    bit-packed masks) under ``adapter.``, the classifier's kept input columns and bias
    under ``classifier.``. ``task.json``: ``meta`` (must name ``classifier``) plus the plan.
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
    save_file(tensors, str(directory / TASK_WEIGHTS))
    plan = masks.plan if masks else ChannelPlan()
    text = json.dumps({"format": "spruce-cnn-task/1", **meta, "plan": plan.to_json()})
    (directory / TASK_META).write_text(text + "\n", encoding="utf-8")
    return directory / TASK_WEIGHTS


@torch.no_grad()
def load_task(model: nn.Module, directory: str | Path) -> ChannelMasks:
    """Switch an adapted model (same base, same adapters) to the task saved in ``directory``:
    its masks, adapter tensors and classifier. Returns the masks now in place."""
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
    return masks


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


# ----- measurements -----------------------------------------------------------------------
@torch.no_grad()
def cnn_latency_ms(model: nn.Module, batch_size: int, image_size: int, repeats: int = 10) -> float:
    """Median wall-clock ms of one eval-mode forward pass (3 warm-up calls first)."""
    model.eval()
    images = torch.randn(batch_size, 3, image_size, image_size)
    for _ in range(3):
        model(images)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000.0, 4)


@torch.no_grad()
def cnn_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one image (2 per multiply-accumulate, convolutions and linear layers only)."""
    macs = [0]

    def count(module: nn.Module, args: tuple, out: Tensor) -> None:
        per_output = module.weight[0].numel()  # in/groups * kernel, or in_features
        macs[0] += out[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * macs[0]


def _fit(model, loader, optimizer, epochs, max_steps, freeze_bn, progress, desc) -> dict:
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


# ----- the pipeline -----------------------------------------------------------------------
@dataclass
class CNNAdaptConfig:
    """One task: data, schedule, pruning and adapter settings (see the module docstring).

    ``target_sparsity`` is the fraction of the prunable conv/linear parameters (classifier
    excluded, as :func:`~spruce.vision.prunable_parameter_count` counts them) to remove;
    ``rank`` an int, or a float fraction of each layer's output width; ``max_steps`` caps
    every training phase (quick checks).
    """

    train: str | Path
    out: str | Path
    model: str = "efficientnet-lite0"
    validation: str | Path | None = None
    test: str | Path | None = None
    image_size: int = 32
    max_train_samples: int | None = None
    seed: int = 0
    dense_epochs: int = 1
    epochs_per_round: int = 1
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    criterion: str = "weight"
    target_sparsity: float = 0.7
    rounds: int = 3
    adapter: str = "splora"
    rank: int | float = 8
    scaling: float = 1.0
    fine_prune: bool = False
    max_steps: int | None = None
    score_batches: int = 8
    latency_repeats: int = 10
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> CNNAdaptConfig:
        if self.criterion not in CHANNEL_CRITERIA:
            raise SpruceError(
                f"unknown channel criterion '{self.criterion}'",
                f"use one of {', '.join(CHANNEL_CRITERIA)}",
            )
        if self.adapter not in ("splora", "sppara"):
            raise SpruceError(f"CNN adapter '{self.adapter}' is not known", "use splora or sppara")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise SpruceError(f"target sparsity {self.target_sparsity} is outside [0, 1)")
        counts = {
            "rounds": self.rounds,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
        }
        for name, value in counts.items():
            if value < 1:
                raise SpruceError(f"{name} must be at least 1, got {value}")
        for name in ("dense_epochs", "epochs_per_round", "epochs"):
            if getattr(self, name) < 0:
                raise SpruceError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise SpruceError(f"lr must be positive, got {self.lr}")
        self.adapter_config().validate()
        return self

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(kind=self.adapter, rank=self.rank, scaling=self.scaling)


def _prune_rounds(config, model, score_loader, example, head, fit, phases):
    """``config.rounds`` of score -> extend the plan -> mask -> fine-tune (not after the last)."""
    plan, rounds = ChannelPlan(), []
    for r in range(1, config.rounds + 1):
        target = config.target_sparsity * r / config.rounds
        criterion = CHANNEL_CRITERIA[config.criterion]()
        step: PlanStep = extend_plan(
            model, plan, score_loader, criterion, target, example, [head],
            max_batches=config.score_batches,
        )  # fmt: skip
        plan = step.plan
        apply_channel_plan(model, plan)
        rounds.append(
            {"round": r, "target_sparsity": target, "sparsity": round(step.sparsity, 6),
             "channels_removed": plan.channels_removed}
        )  # fmt: skip
        if r < config.rounds:
            phases.append({"phase": f"round {r}", **fit(config.epochs_per_round, f"round {r}")})
    return step, rounds


def run_cnn_adapt(config: CNNAdaptConfig) -> dict[str, Any]:
    """Train, prune, fuse and report one task; writes ``config.out`` atomically.

    Outputs: ``report.json``; the fused compact CNN (``model.safetensors`` + ``model.json``,
    rebuilt by :func:`load_compact`; ``model.onnx``); in adapt mode the task alone
    (``task.safetensors`` + ``task.json``, switched in by :func:`load_task`) and
    ``adapter_config.json``. Sparsity is counted on the merged model, i.e. with the
    adapters' per-task conv biases that the fused model carries.
    """
    config.validate()
    out = Path(config.out)
    check_output_dir(out, config.overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    start = time.perf_counter()
    mean, std = input_normalization(config.model)
    read = {"size": config.image_size, "mean": mean, "std": std}
    train = load_images(
        config.train, max_train_samples=config.max_train_samples, seed=config.seed, **read
    )
    splits = {s: getattr(config, s) for s in ("validation", "test") if getattr(config, s)}
    eval_loaders = {
        s: DataLoader(load_images(p, **read), batch_size=max(config.batch_size, 64))
        for s, p in splits.items()
    }
    num_classes = len(train.class_names)
    model = load_cnn(config.model, num_classes)
    dense = copy.deepcopy(model).eval()
    head = classifier_name(model)
    adapt = not config.fine_prune
    if adapt:
        adapt_cnn(model, config.adapter_config(), head)
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    score_loader = DataLoader(train, batch_size=config.batch_size)
    example = next(iter(score_loader))[0][:1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    def fit(epochs: int, desc: str) -> dict:
        return _fit(
            model, loader, optimizer, epochs, config.max_steps, adapt, config.progress, desc
        )

    phases = [{"phase": "dense", **fit(config.dense_epochs, "dense")}]
    step, rounds = _prune_rounds(config, model, score_loader, example, head, fit, phases)
    phases.append({"phase": "final", **fit(config.epochs, "final")})
    plan = step.plan

    fused, history = fuse_pruned(model, plan, example, [head])
    fused.eval()
    with torch.no_grad():
        batch = next(iter(score_loader))[0][:8]
        masked_diff = float((model.eval()(batch) - fused(batch)).abs().max())
    metrics = {s: evaluate_cnn(fused, loader_) for s, loader_ in eval_loaders.items()}
    ignored = [dense.get_submodule(head)]
    dense_prunable = step.base_parameters  # the merged copy's, adapter biases included
    fused_prunable = prunable_parameter_count(fused, [fused.get_submodule(head)])
    added_biases = [
        n
        for n, m in fused.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd)
        and m.bias is not None
        and dense.get_submodule(n).bias is None
    ]
    meta = {
        "model": config.model,
        "num_classes": num_classes,
        "class_names": train.class_names,
        "image_size": config.image_size,
        "mean": list(mean),
        "std": list(std),
        "classifier": head,
    }
    adapter_dict = config.adapter_config().to_dict() if adapt else None
    report: dict[str, Any] = {
        "mode": "adapt" if adapt else "fine-prune",
        "criterion": config.criterion,
        "adapter": adapter_dict,
        "model": config.model,
        "train_examples": len(train),
        "metrics": metrics,
        "sparsity": {
            "target": config.target_sparsity,
            "achieved": round(1 - fused_prunable / dense_prunable, 6),
            "prunable_dense": dense_prunable,
            "prunable_fused": fused_prunable,
            "rounds": rounds,
        },
        "params": {
            "total": sum(p.numel() for p in fused.parameters()),
            "dense": sum(p.numel() for p in dense.parameters()),
            "prunable_base": prunable_parameter_count(dense, ignored),
        },
        "learned_params": (
            learned_parameters(model, head, active_masks(model))
            if adapt
            else sum(p.numel() for p in fused.parameters())
        ),
        "base_model_bytes": len(save({k: v.contiguous() for k, v in dense.state_dict().items()})),
        "masked_vs_fused_max_abs_diff": masked_diff,
        "training": phases,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    with staged_output_dir(out, config.overwrite) as staging:
        save_compact(fused, staging, {**meta, "history": history, "added_biases": added_biases})
        report["onnx_max_abs_diff"] = export_cnn_onnx(
            fused, staging / MODEL_ONNX, config.image_size
        )
        if adapt:
            save_task(model, staging, {**meta, "adapter": adapter_dict})
            config.adapter_config().save_pretrained(staging)
        task_file = staging / (TASK_WEIGHTS if adapt else MODEL_WEIGHTS)
        report["task_file_bytes"] = task_file.stat().st_size
        report["latency"] = {
            f"batch_{b}": {
                name: cnn_latency_ms(net, b, config.image_size, config.latency_repeats)
                for name, net in (("dense", dense), ("fused", fused))
            }
            for b in (1, 32)
        }
        report["latency"].update(image_size=config.image_size, threads=torch.get_num_threads())
        report["flops"] = {
            "dense": cnn_flops(dense, config.image_size),
            "fused": cnn_flops(fused, config.image_size),
            "image_size": config.image_size,
            "convention": "2 FLOPs per multiply-accumulate; conv and linear layers only",
        }
        report["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_report(report, staging / "report.json")
    return report
