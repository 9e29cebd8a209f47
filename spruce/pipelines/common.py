"""Steps every training pipeline shares: data loaders, split evaluation, report header."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    check_settings,
    section,
    setting,
    to_config,
)
from spruce.data import TaskData, TaskDataConfig, load_task, make_loader, tokenize_split
from spruce.errors import SpruceError
from spruce.masks.accounting import (
    dense_encoder_params,
    encoder_params_from_masks,
    structure_from_masks,
)
from spruce.masks.units import UnitMasks
from spruce.models import DEFAULT_MODEL, TASK_METADATA_KEY, encoder_shape
from spruce.pipelines.runtime import resolve_device
from spruce.report import count_parameters
from spruce.report.flops import flops_summary
from spruce.train import TrainConfig, evaluate, seed_everything
from spruce.train.checkpoint import DEFAULT_EVERY_STEPS, Checkpointer, checkpoint_dir
from spruce.train.distributed import context
from spruce.utils.atomic import check_output_dir
from spruce.version import __version__


@dataclass
class RunSettings:
    """What every training command takes: data, optimisation, model, output, runtime.

    With ``out``, the run checkpoints into ``<out>.checkpoint`` every ``checkpoint_steps``
    steps (0: no checkpoints) and ``resume`` continues from there. The data's sampling
    seed is the training seed.
    """

    data: TaskDataConfig = section(TaskDataConfig, "data", required=True)
    train: TrainConfig = section(TrainConfig, "training")
    model: str = setting(
        DEFAULT_MODEL,
        f"pre-trained encoder: local directory or hub name (default: {DEFAULT_MODEL}, the "
        "embedded all-MiniLM-L6-v2)",
    )
    max_length: int = setting(
        128, "tokens per example after truncation", bounds=AT_LEAST_ONE, group="data"
    )
    out: Path | None = setting(
        None, "output directory (written completely or not at all)", metavar="DIR", runtime=True
    )
    overwrite: bool = setting(False, "replace an existing --out", runtime=True)
    device: str = setting("auto", "auto, cpu or cuda[:N]", group="runtime", runtime=True)
    progress: bool = setting(
        True, "no progress bar", flag="--quiet", inverse=True, group="runtime", runtime=True
    )
    threads: int | None = setting(
        None, "CPU threads for PyTorch", bounds=AT_LEAST_ONE, group="runtime", runtime=True
    )
    resume: bool = setting(
        False,
        "continue the unfinished run whose checkpoint lies beside --out (same options); the "
        "run checkpoints into DIR.checkpoint beside --out (deleted once --out is complete), "
        "and SIGINT/SIGTERM save a checkpoint at the next step and stop",
        group="checkpoints",
        runtime=True,
    )
    checkpoint_steps: int = setting(
        DEFAULT_EVERY_STEPS,
        "save a checkpoint every N training steps and at the end of each phase (0: no checkpoints)",
        bounds=NON_NEGATIVE,
        metavar="N",
        group="checkpoints",
        runtime=True,
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.data.seed != self.train.seed:
            self.data = replace(self.data, seed=self.train.seed)

    def to_config(self) -> dict[str, Any]:
        """The report's ``config`` block: every setting but where and how the run executes,
        so that ``--config report.json`` reruns it."""
        return to_config(self)


class CheckpointSettings(Protocol):
    """What :func:`open_checkpoint` reads of a run's settings: :class:`RunSettings`, or
    the configuration of a run outside it (a CNN task's)."""

    @property
    def out(self) -> str | Path | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def overwrite(self) -> bool: ...

    @property
    def resume(self) -> bool: ...

    @property
    def checkpoint_steps(self) -> int: ...


def begin_run(
    run: RunSettings,
    command: str,
    configuration: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> tuple[torch.device, TaskData, Checkpointer | None]:
    """What every training command does first, before any slow work: validate settings,
    refuse an ``--out`` that may not be written, open the checkpoint, fix threads, device
    and seed, read data. ``configuration`` is the report's ``config`` section; ``defaults``
    the same section with every optional setting at its default (see
    :func:`open_checkpoint`).

    Under ``torchrun`` each process joins the process group here; all are seeded alike
    (gates start equal), rank 0 alone prepares the checkpoint directory."""
    run.train.validate()
    if run.out is not None:
        check_output_dir(Path(run.out), run.overwrite)
    distributed = context()
    distributed.init()
    checkpoint = open_checkpoint(run, command, configuration, defaults)
    distributed.barrier()  # rank 0 may have removed a stale checkpoint
    if run.threads:
        torch.set_num_threads(run.threads)
    device = distributed.device(resolve_device(run.device))
    seed_everything(run.train.seed)
    return device, load_task(run.data), checkpoint


def open_checkpoint(
    run: CheckpointSettings,
    command: str,
    configuration: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> Checkpointer | None:
    """The run's checkpoint in ``<out>.checkpoint``: adopted with ``resume``, removed with
    ``overwrite``, otherwise refused if present (it belongs to an unfinished run). Its
    fingerprint covers the command, the model and ``configuration``; output and runtime
    settings (``--out``, ``--threads``, ``--device``, ...) may change between attempts.
    A setting the checkpoint predates is taken as its value in ``defaults`` (the layout of
    ``configuration``), so a checkpoint outlives spruce releases that add settings."""
    if run.out is None:
        return None
    if run.checkpoint_steps < 0:
        raise SpruceError(f"--checkpoint-steps must be >= 0, got {run.checkpoint_steps}")
    if run.resume and run.checkpoint_steps == 0:
        raise SpruceError(
            "--resume continues from a checkpoint, which --checkpoint-steps 0 turns off",
            "drop --checkpoint-steps 0",
        )
    directory = checkpoint_dir(run.out)
    settings = {"command": command, "model": run.model, **configuration}
    default_settings = {"command": command, "model": run.model, **(defaults or {})}
    checkpoint = Checkpointer.for_configuration(
        directory, settings, run.checkpoint_steps, default_settings
    )
    if checkpoint.exists() and run.resume:
        checkpoint.resume()
        return checkpoint
    if checkpoint.exists() and not run.overwrite:
        raise SpruceError(
            f"a checkpoint of an unfinished run exists in {directory}",
            "rerun with --resume to continue it, or --overwrite to start again",
        )
    if directory.exists() and context().is_main:  # --overwrite, or an incomplete first save
        checkpoint.remove()
    if run.resume and context().is_main:
        print(f"spruce: no checkpoint in {directory}; starting from the beginning", file=sys.stderr)
    return checkpoint if run.checkpoint_steps else None


def build_loaders(
    task: TaskData, tokenizer: PreTrainedTokenizerBase, train: TrainConfig, max_length: int
) -> dict[str, DataLoader]:
    """A shuffled (seeded) training loader and ordered validation/test loaders. With
    several processes the training loader yields this process's shard (``batch_size``
    is then per process); evaluation loaders cover the whole split."""
    loaders = {"train": train_loader(task, tokenizer, train, max_length)}
    for name in ("validation", "test"):
        split = getattr(task, name)
        if split is not None:
            loaders[name] = make_loader(
                tokenize_split(split, tokenizer, max_length), tokenizer, train.eval_batch_size
            )
    return loaders


def train_loader(
    task: TaskData,
    tokenizer: PreTrainedTokenizerBase,
    train: TrainConfig,
    max_length: int,
    group_by_length: bool = False,
) -> DataLoader:
    """The shuffled (seeded) labelled batches; ``group_by_length`` draws them by length
    (one process: with several, each draws its shard as :func:`make_loader` says)."""
    distributed = context()
    return make_loader(
        tokenize_split(task.train, tokenizer, max_length),
        tokenizer,
        train.batch_size,
        shuffle=True,
        seed=train.seed,
        num_replicas=distributed.world_size,
        rank=distributed.rank,
        group_by_length=group_by_length,
    )


def evaluate_splits(
    model: PreTrainedModel, loaders: dict[str, DataLoader], device: torch.device
) -> dict[str, dict[str, float]]:
    return {
        split: evaluate(model, loaders[split], device)
        for split in ("validation", "test")
        if split in loaders
    }


def record_task(model: PreTrainedModel, task: TaskData, max_length: int) -> None:
    """Store in the model config how it reads its task, so ``spruce eval`` needs no options."""
    setattr(
        model.config,
        TASK_METADATA_KEY,
        {
            "task": task.name,
            "text_columns": list(task.columns.text_columns),
            "label_column": task.columns.label_column,
            "max_length": max_length,
        },
    )


def report_header(
    command: str,
    task: TaskData,
    source: str,
    metric: str,
    split_metrics: dict[str, dict[str, float]],
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """The keys every report.json starts with."""
    report_split = "test" if "test" in split_metrics else "validation"
    return {
        "spruce_version": __version__,
        "command": command,
        "task": task.name,
        "model": source,
        "metric": metric,
        "metrics": split_metrics.get(report_split, {}),
        "metrics_split": report_split if split_metrics else None,
        "validation_metrics": split_metrics.get("validation"),
        "test_metrics": split_metrics.get("test"),
        "train_examples": len(task.train),
        "unlabelled_examples": len(task.unlabelled) if task.unlabelled is not None else 0,
        "source_train_examples": task.source_train_examples,
        "label_names": task.label_names,
        "text_columns": list(task.columns.text_columns),
        "seed": seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# Latency and FLOPs at 128 tokens as the pruning issue asks; tiny test models have fewer
# positions (RoBERTa-style models use two of them for padding offsets).
LATENCY_SEQ_LEN = 128


def latency_seq_len(dense: PreTrainedModel) -> int:
    return min(LATENCY_SEQ_LEN, dense.config.max_position_embeddings - 2)


def compact_summary(
    compact: PreTrainedModel, dense: PreTrainedModel, masks: UnitMasks, num_labels: int
) -> dict[str, Any]:
    """The report sections every pruned model has: ``sparsity`` (encoder weights and all
    parameters), ``params``, ``structure`` and ``flops`` of ``compact`` against ``dense``."""
    dense_shape = encoder_shape(dense.config)
    params, dense_params = count_parameters(compact), count_parameters(dense)
    encoder_kept = encoder_params_from_masks(masks, dense_shape)
    encoder_dense = dense_encoder_params(dense_shape)
    return {
        "sparsity": {
            "encoder": round(1 - encoder_kept / encoder_dense, 6),
            "total": round(1 - params["total"] / dense_params["total"], 6),
        },
        "params": {
            **params,
            "dense_total": dense_params["total"],
            "dense_encoder": dense_params["encoder"],
            "encoder_weights": encoder_kept,
            "dense_encoder_weights": encoder_dense,
        },
        "structure": structure_from_masks(masks, dense_shape),
        "flops": flops_summary(
            dense_shape, encoder_shape(compact.config), latency_seq_len(dense), num_labels
        ),
    }
