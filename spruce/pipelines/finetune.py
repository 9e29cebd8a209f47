"""Dense fine-tuning: the baseline every pruned model is compared with, and the teacher."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import spruce
from spruce.data import TaskData, TaskDataConfig, load_task, make_loader, tokenize_split
from spruce.models import TASK_METADATA_KEY, encoder_shape, load_classifier
from spruce.pipelines.runtime import resolve_device
from spruce.report import count_parameters, plot_learning_curve, write_report
from spruce.train import TrainConfig, Trainer, evaluate, seed_everything
from spruce.utils.atomic import check_output_dir, staged_output_dir


@dataclass
class FinetuneRun:
    """One ``spruce finetune``: what data, which model, how to train, where to write."""

    data: TaskDataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str | None = None
    max_length: int = 128
    out: Path | None = None
    overwrite: bool = False
    device: str = "auto"
    progress: bool = True
    threads: int | None = None


def run_finetune(run: FinetuneRun) -> dict[str, Any]:
    """Fine-tune, evaluate and (with ``out``) write ``model/``, ``report.json`` and the curve."""
    start = time.perf_counter()
    run.train.validate()
    if run.out is not None:
        check_output_dir(Path(run.out), run.overwrite)
    if run.threads:
        torch.set_num_threads(run.threads)
    device = resolve_device(run.device)
    seed_everything(run.train.seed)
    task = load_task(run.data)
    model, tokenizer, source = load_classifier(run.model, task.label_names)
    loaders = _loaders(task, tokenizer, run)

    def validate() -> dict[str, float]:
        return evaluate(model, loaders["validation"], device)

    trainer = Trainer(
        model,
        loaders["train"],
        run.train,
        evaluate=validate if "validation" in loaders else None,
        device=device,
        progress=run.progress,
        description=f"finetune {task.name}",
    )
    result = trainer.fit()
    split_metrics = {
        split: evaluate(model, loaders[split], device)
        for split in ("validation", "test")
        if split in loaders
    }
    report_split = "test" if "test" in split_metrics else "validation"
    setattr(
        model.config,
        TASK_METADATA_KEY,
        {
            "task": task.name,
            "text_columns": list(task.columns.text_columns),
            "label_column": task.columns.label_column,
            "max_length": run.max_length,
        },
    )
    report = {
        "spruce_version": spruce.__version__,
        "command": "finetune",
        "task": task.name,
        "model": source,
        "metric": run.train.metric,
        "metrics": split_metrics.get(report_split, {}),
        "metrics_split": report_split if split_metrics else None,
        "validation_metrics": split_metrics.get("validation"),
        "test_metrics": split_metrics.get("test"),
        "params": count_parameters(model),
        "structure": encoder_shape(model.config).to_dict(),
        "train_examples": len(task.train),
        "unlabelled_examples": len(task.unlabelled) if task.unlabelled is not None else 0,
        "source_train_examples": task.source_train_examples,
        "label_names": task.label_names,
        "text_columns": list(task.columns.text_columns),
        "seed": run.train.seed,
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "train_time_s": round(result.wall_time_s, 2),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "config": {
            "train": run.train.to_dict(),
            "data": asdict(run.data),
            "max_length": run.max_length,
        },
        "history": {"evaluations": result.evaluations, "loss": result.losses},
    }
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    if run.out is not None:
        with staged_output_dir(Path(run.out), run.overwrite) as staging:
            model.save_pretrained(staging / "model")
            tokenizer.save_pretrained(staging / "model")
            plot_learning_curve(
                result.losses,
                [(e["step"], e[run.train.metric]) for e in result.evaluations],
                run.train.metric,
                staging / "learning_curve.png",
                title=f"{task.name}: {len(task.train)} labelled examples, seed {run.train.seed}",
            )
            report["wall_time_s"] = round(time.perf_counter() - start, 2)
            write_report(report, staging / "report.json")
    return report


def _loaders(task: TaskData, tokenizer, run: FinetuneRun) -> dict[str, torch.utils.data.DataLoader]:
    cfg = run.train
    loaders = {
        "train": make_loader(
            tokenize_split(task.train, tokenizer, run.max_length),
            tokenizer,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
        )
    }
    for name in ("validation", "test"):
        split = getattr(task, name)
        if split is not None:
            loaders[name] = make_loader(
                tokenize_split(split, tokenizer, run.max_length), tokenizer, cfg.eval_batch_size
            )
    return loaders
