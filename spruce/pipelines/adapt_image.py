"""Structured Pruning Adapters for CNNs: one frozen base, a small pruned change per task.

``run_cnn_adapt`` trains one task in one of two modes (METHODS.md section 3):

* **adapt** (default): SPLoRA or SPPaRA adapters in every convolution, the classifier
  trained in full (it is the task's own head), every other base tensor frozen. BatchNorm's
  affine parameters are base tensors and stay frozen, but its running statistics are the
  *task's own*: BatchNorm normalises training batches with their own statistics and the
  running ones are recomputed on the task's images after every phase
  (:func:`~spruce.spa.cnn_model.recalibrate_batchnorm`), then saved in the task file. Why: with
  the base's ImageNet statistics frozen, pruning shifts every layer's inputs away from
  the statistics that normalise them, and the digits benchmark's adapted models ended at
  chance (0.10-0.16 test accuracy); with their own statistics they train like the
  fine-pruned ones. They cost two numbers per kept channel.
* **fine-prune**: no adapters; every weight (BatchNorm included) learns -- the paper's
  baseline.

Pruning is progressive: ``rounds`` times, score the channels on a plain merged copy with
the current masks, extend the channel plan to ``target * round / rounds`` of the prunable
parameters, mask it on the live model (:mod:`spruce.units.channel_masks`) and fine-tune
``epochs_per_round``; then a final fine-tune of ``epochs``. At the end the merged copy is
pruned physically with the same plan (the fused model, saved as safetensors + JSON and
ONNX), and in adapt mode the task alone is saved as ``task.safetensors`` + ``task.json``.

Every training phase (``dense``, ``round N``, ``final``) runs on the shared
:class:`~spruce.train.Trainer`, so a run checkpoints into ``<out>.checkpoint/`` and resumes
exactly as the text pipelines do (:mod:`spruce.train.checkpoint`): every
``checkpoint_steps`` steps and at the end of each phase, the weights (adapters, masks,
BatchNorm statistics), the optimizer shared by all phases, the data order and every
generator; each round's channel plan is stored with the phases trained under it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn
from torch.utils.data import DataLoader

from spruce.errors import SpruceError
from spruce.models.loading import DEFAULT_MODEL
from spruce.pipelines.adapt import AdaptRun
from spruce.pipelines.cnn_config import CNNAdaptConfig
from spruce.pipelines.common import open_checkpoint
from spruce.pipelines.result import RunResult
from spruce.pruning.rounds import ScoreRounds
from spruce.report.cnn_measure import cnn_flops, cnn_latency_ms
from spruce.report.writer import write_report
from spruce.spa.cnn_model import (
    adapt_cnn,
    classifier_name,
    evaluate_cnn,
    image_batches,
    learned_parameters,
    recalibrate_batchnorm,
    train_phase,
)
from spruce.spa.cnn_task import (
    MODEL_ONNX,
    MODEL_WEIGHTS,
    TASK_WEIGHTS,
    export_cnn_onnx,
    save_fused,
    save_task,
    task_statistics,
)
from spruce.train import TrainConfig
from spruce.train.checkpoint import Checkpointer, phase_checkpoint
from spruce.train.seeding import seed_everything
from spruce.units.channel_groups import prunable_parameter_count
from spruce.units.channel_masks import ChannelUnits, PlanStep, active_masks, fuse_pruned
from spruce.utils.atomic import check_output_dir, staged_output_dir
from spruce.utils.fields import at_defaults
from spruce.vision.data import ImageDataset, load_images
from spruce.vision.models import input_normalization, load_cnn


def _prune_rounds(
    config: CNNAdaptConfig,
    model: nn.Module,
    score_loader: DataLoader,
    example: torch.Tensor,
    head: str,
    fit: Callable[[int, str], dict],
    phases: list[dict],
    checkpoint: Checkpointer | None,
) -> tuple[PlanStep, list[dict]]:
    """``config.rounds`` of score -> extend the plan -> mask -> fine-tune (not after the
    last), by the schedule the encoders use (:class:`ScoreRounds`) over the CNN's channel
    groups; the last plan stays masked on ``model``."""
    units = ChannelUnits(model, score_loader, example, [head], config.score_batches)
    schedule = ScoreRounds(config.criterion, config.target_sparsity, config.rounds)

    def train_round(r: int) -> None:
        phases.append({"phase": f"round {r}", **fit(config.epochs_per_round, f"round {r}")})

    steps, _ = schedule.run(units, train_round, checkpoint)
    rounds = [
        {"round": r, "target_sparsity": schedule.target(r), "sparsity": round(step.sparsity, 6),
         "channels_removed": step.plan.channels_removed}
        for r, step in enumerate(steps, start=1)
    ]  # fmt: skip
    return steps[-1], rounds


def _check_training_classes(train: ImageDataset, config: CNNAdaptConfig) -> None:
    """At least two classes among the training images, as for the text tasks: with one
    the loss is zero from the start and every metric is trivially perfect."""
    present = sorted(set(train.labels))
    if len(present) >= 2:
        return
    only = train.class_names[present[0]]
    if config.max_train_samples is not None and len(train.class_names) > 1:
        raise SpruceError(
            f"the sampled training set holds a single class ('{only}')",
            "raise --max-train-samples",
        )
    raise SpruceError(
        f"{config.train} holds images of a single class ('{only}')",
        "classification needs at least two classes: add a class folder (or labels)",
    )


def run_image_adapt(run: AdaptRun) -> RunResult:
    """``spruce adapt`` (and ``spruce.adapt``) on an image task: the run settings as a
    CNN task's; returns the fused compact CNN (no tokenizer) and the report."""
    config = image_adapt_config(run)
    report, fused = _adapt_cnn(config, {"command": "adapt", "config": run.to_config()})
    return RunResult(fused.cpu().eval(), None, report)


def image_adapt_config(run: AdaptRun) -> CNNAdaptConfig:
    """The CNN task settings of an adapt run whose model or data are images."""
    adapt = run.adapt
    if adapt.criterion == "l0":
        raise SpruceError(
            "--criterion l0 learns masks of transformer units, not CNN channels",
            "use weight, gradient, taylor or lrp for CNNs",
        )
    if adapt.adapter == "splopa":
        raise SpruceError("splopa adapts linear layers only", "use splora or sppara for CNNs")
    # The encoders' default model means "no choice made" here: the CNN default applies.
    model = run.model if run.model not in (None, DEFAULT_MODEL) else "efficientnet-lite0"
    # The encoders' default learning rate (1e-4) is too small for a CNN's fresh classifier.
    lr = run.train.learning_rate
    lr = lr if lr != TrainConfig().learning_rate else 1e-3
    return CNNAdaptConfig(
        train=run.data.train,
        validation=run.data.validation,
        test=run.data.test,
        out=run.out,
        model=model,
        image_size=adapt.image_size,
        max_train_samples=run.data.max_train_samples,
        seed=run.train.seed,
        epochs_per_round=max(1, round(adapt.epochs_per_round)),
        epochs=max(1, round(adapt.final_epochs or run.train.epochs)),
        batch_size=run.train.batch_size,
        lr=lr,
        criterion=adapt.criterion,
        target_sparsity=adapt.target_sparsity,
        rounds=adapt.prune_rounds,
        adapter=adapt.adapter,
        rank=adapt.rank,
        scaling=adapt.scaling,
        fine_prune=adapt.fine_prune,
        max_steps=run.train.max_steps,
        export_onnx=adapt.export_onnx,
        measure_latency=adapt.measure_latency,
        latency_repeats=adapt.latency_repeats,
        threads=run.threads,
        overwrite=run.overwrite,
        progress=run.progress,
        resume=run.resume,
        checkpoint_steps=run.checkpoint_steps,
    ).validate()


def run_cnn_adapt(config: CNNAdaptConfig) -> dict[str, Any]:
    """Train, prune, fuse and report one task; writes ``config.out`` atomically; returns
    the report."""
    return _adapt_cnn(config)[0]


def _adapt_cnn(
    config: CNNAdaptConfig, header: dict[str, Any] | None = None
) -> tuple[dict[str, Any], nn.Module]:
    """Train, prune, fuse and report one task; writes ``config.out`` atomically.

    Outputs: ``report.json``; the fused compact CNN (``model.safetensors`` + ``model.json``,
    rebuilt by :func:`load_compact`; ``model.onnx``); in adapt mode the task alone
    (``task.safetensors`` + ``task.json``, switched in by :func:`load_task`) and
    ``adapter_config.json``. Sparsity is counted on the merged model, i.e. with the
    adapters' per-task conv biases that the fused model carries. The run checkpoints into
    ``<out>.checkpoint`` (removed once ``out`` is complete) and continues it with
    ``resume`` (see the module docstring). ``header`` (an ``spruce adapt`` run's command and
    config block, which reruns it) replaces the report's ``config``, the CNN settings then
    going under ``cnn_config``.
    """
    config.validate()
    out = Path(config.out)
    check_output_dir(out, config.overwrite)
    defaults = at_defaults(config).fingerprinted()
    checkpoint = open_checkpoint(config, "adapt", config.fingerprinted(), defaults)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    start = time.perf_counter()
    task = _read_task(config)
    run = _train_and_prune(config, task, checkpoint)
    fused, history = fuse_pruned(run.model, run.step.plan, run.example, [run.head])
    fused.eval()
    report = _report(config, task, run, fused)
    if header is not None:
        report = {**header, **{k: v for k, v in report.items() if k != "config"}}
        report["cnn_config"] = config.to_dict()
    meta = {
        "model": config.model,
        "num_classes": len(task.train.class_names),
        "class_names": task.train.class_names,
        "image_size": config.image_size,
        "mean": list(task.mean),
        "std": list(task.std),
        "classifier": run.head,
    }
    with staged_output_dir(out, config.overwrite) as staging:
        _write_outputs(config, report, run, fused, history, meta, staging)
        report["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_report(report, staging / "report.json")
    if checkpoint is not None:
        checkpoint.remove()  # --out is complete
    return report, fused


@dataclass
class _ImageTask:
    """A task's images: the training set, the evaluation loaders and the normalisation."""

    train: ImageDataset
    eval_loaders: dict[str, DataLoader]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class _Trained:
    """What training and pruning leave: the live model under its plan and what it took."""

    model: nn.Module
    dense: nn.Module
    head: str
    adapt: bool
    step: PlanStep
    rounds: list[dict]
    phases: list[dict]
    score_loader: DataLoader
    example: torch.Tensor


def _read_task(config: CNNAdaptConfig) -> _ImageTask:
    mean, std = input_normalization(config.model)
    read = {"size": config.image_size, "mean": mean, "std": std}
    train = load_images(
        config.train, max_train_samples=config.max_train_samples, seed=config.seed, **read
    )
    _check_training_classes(train, config)
    splits = {s: getattr(config, s) for s in ("validation", "test") if getattr(config, s)}
    # Each split numbered by the training data's classes: read on its own, a test folder
    # without one class would number the classes after it differently.
    eval_loaders = {
        s: DataLoader(
            load_images(p, class_names=train.class_names, **read),
            batch_size=max(config.batch_size, 64),
        )
        for s, p in splits.items()
    }
    return _ImageTask(train, eval_loaders, mean, std)


def _train_and_prune(
    config: CNNAdaptConfig, task: _ImageTask, checkpoint: Checkpointer | None
) -> _Trained:
    """Dense phase, pruning rounds, final phase: every phase on the shared Trainer."""
    model = load_cnn(config.model, len(task.train.class_names))
    dense = copy.deepcopy(model).eval()
    head = classifier_name(model)
    adapt = not config.fine_prune
    if adapt:
        adapt_cnn(model, config.adapter_config(), head)
    loader = DataLoader(
        task.train,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),  # saved with each checkpoint
        collate_fn=image_batches,
    )
    score_loader = DataLoader(task.train, batch_size=config.batch_size)
    example = next(iter(score_loader))[0][:1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    def fit(epochs: int, phase: str) -> dict:
        steps = epochs * len(loader)
        if config.max_steps is not None:
            steps = min(steps, config.max_steps)
        result = train_phase(
            model,
            loader,
            optimizer,
            steps,
            progress=config.progress,
            description=phase,
            checkpoint=phase_checkpoint(checkpoint, phase),
        )
        # Scoring, evaluation and fusion run in eval mode: on running statistics that
        # match the weights just trained (a resumed run redoes this identically).
        recalibrate_batchnorm(model, score_loader)
        return result

    phases = [{"phase": "dense", **fit(config.dense_epochs, "dense")}]
    step, rounds = _prune_rounds(
        config, model, score_loader, example, head, fit, phases, checkpoint
    )
    phases.append({"phase": "final", **fit(config.epochs, "final")})
    return _Trained(model, dense, head, adapt, step, rounds, phases, score_loader, example)


def _report(
    config: CNNAdaptConfig, task: _ImageTask, run: _Trained, fused: nn.Module
) -> dict[str, Any]:
    model, dense, head, adapt = run.model, run.dense, run.head, run.adapt
    with torch.no_grad():
        batch = next(iter(run.score_loader))[0][:8]
        masked_diff = float((model.eval()(batch) - fused(batch)).abs().max())
    metrics = {s: evaluate_cnn(fused, loader_) for s, loader_ in task.eval_loaders.items()}
    dense_prunable = run.step.base_parameters  # the merged copy's, adapter biases included
    fused_prunable = prunable_parameter_count(fused, [fused.get_submodule(head)])
    return {
        "mode": "adapt" if adapt else "fine-prune",
        "criterion": config.criterion,
        "adapter": config.adapter_config().to_dict() if adapt else None,
        "model": config.model,
        "train_examples": len(task.train),
        "metrics": metrics,
        "sparsity": {
            "target": config.target_sparsity,
            "achieved": round(1 - fused_prunable / dense_prunable, 6),
            "prunable_dense": dense_prunable,
            "prunable_fused": fused_prunable,
            "rounds": run.rounds,
        },
        "params": {
            "total": sum(p.numel() for p in fused.parameters()),
            "dense": sum(p.numel() for p in dense.parameters()),
            "prunable_base": prunable_parameter_count(dense, [dense.get_submodule(head)]),
        },
        "learned_params": (
            learned_parameters(model, head, active_masks(model))
            if adapt
            else sum(p.numel() for p in fused.parameters())
        ),
        # Not learned by gradient but the task's own too (BatchNorm means and variances).
        "task_statistics": task_statistics(model) if adapt else None,
        "base_model_bytes": len(save({k: v.contiguous() for k, v in dense.state_dict().items()})),
        "masked_vs_fused_max_abs_diff": masked_diff,
        "training": run.phases,
        "config": config.to_dict(),
    }


def _write_outputs(
    config: CNNAdaptConfig,
    report: dict[str, Any],
    run: _Trained,
    fused: nn.Module,
    history: list[list],
    meta: dict[str, Any],
    staging: Path,
) -> None:
    save_fused(run.model, fused, history, staging, meta)
    if config.export_onnx:
        report["onnx_max_abs_diff"] = export_cnn_onnx(
            fused, staging / MODEL_ONNX, config.image_size
        )
    if run.adapt:
        save_task(run.model, staging, {**meta, "adapter": report["adapter"]})
        config.adapter_config().save_pretrained(staging)
    task_file = staging / (TASK_WEIGHTS if run.adapt else MODEL_WEIGHTS)
    report["task_file_bytes"] = task_file.stat().st_size
    if config.measure_latency:
        report["latency"] = {
            f"batch_{b}": {
                name: cnn_latency_ms(net, b, config.image_size, config.latency_repeats)
                for name, net in (("dense", run.dense), ("fused", fused))
            }
            for b in (1, 32)
        }
        report["latency"].update(image_size=config.image_size, threads=torch.get_num_threads())
    report["flops"] = {
        "dense": cnn_flops(run.dense, config.image_size),
        "fused": cnn_flops(fused, config.image_size),
        "image_size": config.image_size,
        "convention": "2 FLOPs per multiply-accumulate; conv and linear layers only",
    }
