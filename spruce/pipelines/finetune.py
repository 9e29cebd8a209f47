"""Dense fine-tuning: the baseline every pruned model is compared with, and the teacher."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from spruce.models import encoder_shape, load_classifier
from spruce.pipelines.common import (
    RunSettings,
    begin_run,
    build_loaders,
    evaluate_splits,
    record_task,
    report_header,
)
from spruce.pipelines.result import RunResult, finished
from spruce.report import count_parameters, plot_learning_curve, write_report
from spruce.train import Trainer, evaluate
from spruce.train.checkpoint import phase_checkpoint
from spruce.train.distributed import context
from spruce.utils.atomic import staged_output_dir
from spruce.utils.fields import at_defaults


@dataclass
class FinetuneRun(RunSettings):
    """One ``spruce finetune``: the shared run settings, nothing more."""


def run_finetune(run: FinetuneRun) -> RunResult:
    """Fine-tune, evaluate and (with ``out``) write ``model/``, ``report.json`` and the
    curve; returns the fine-tuned model, its tokenizer and the report."""
    start = time.perf_counter()
    # The report's config block, which the checkpoint's fingerprint covers too.
    configuration = run.to_config()
    defaults = at_defaults(run).to_config()
    device, task, checkpoint = begin_run(run, "finetune", configuration, defaults)
    model, tokenizer, source = load_classifier(run.model, task.label_names)
    loaders = build_loaders(task, tokenizer, run.train, run.max_length)

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
        checkpoint=phase_checkpoint(checkpoint, "finetune"),
    )
    result = trainer.fit()
    split_metrics = evaluate_splits(model, loaders, device)
    record_task(model, task, run.max_length)
    report = report_header(
        "finetune", task, source, run.train.metric, split_metrics, run.train.seed, device
    )
    report.update(
        {
            "params": count_parameters(model),
            "structure": encoder_shape(model.config).to_dict(),
            "steps": result.steps,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "train_time_s": round(result.wall_time_s, 2),
            "config": configuration,
            "history": {"evaluations": result.evaluations, "loss": result.losses},
        }
    )
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    if run.out is not None and context().is_main:  # with several processes rank 0 writes
        with staged_output_dir(Path(run.out), run.overwrite) as staging:
            model.save_pretrained(staging / "model")
            tokenizer.save_pretrained(staging / "model")
            plot_learning_curve(
                result.losses,
                result.evaluations,
                run.train.metric,
                staging / "learning_curve.png",
                title=f"{task.name}: {len(task.train)} labelled examples, seed {run.train.seed}",
            )
            report["wall_time_s"] = round(time.perf_counter() - start, 2)
            write_report(report, staging / "report.json")
    context().barrier()
    if checkpoint is not None:
        checkpoint.remove()  # --out is complete
    return finished(model, tokenizer, report)
