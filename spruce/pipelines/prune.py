"""``spruce prune``: teacher (optional) -> pruning -> fixed structure -> compaction ->
final fine-tune of the compact model -> evaluation -> export and measurement."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from spruce.compact import compact_model
from spruce.compact.vocab import trim_vocabulary
from spruce.config import section
from spruce.data import TaskData
from spruce.errors import SpruceError
from spruce.models import encoder_shape, load_classifier, load_saved_classifier
from spruce.pipelines.common import (
    RunSettings,
    begin_run,
    build_loaders,
    compact_summary,
    evaluate_splits,
    latency_seq_len,
    record_task,
    report_header,
    train_loader,
)
from spruce.pipelines.outputs import (
    onnx_check_texts,
    phase_summary,
    save_compact_model,
    task_texts,
    write_model_views,
)
from spruce.pipelines.recipe import plan_teacher, resolve_recipe
from spruce.pipelines.result import RunResult, finished
from spruce.pruning.config import PruneConfig
from spruce.pruning.phases import PhaseInputs, phase_config, phase_steps, pruner_for
from spruce.report import plot_prune_phase, write_report
from spruce.report.latency import measure_latency_table
from spruce.train import TrainConfig, Trainer, classification_loss, evaluate
from spruce.train.checkpoint import phase_checkpoint
from spruce.train.distillation import (
    LayerDistiller,
    default_teacher_layers,
    distillation_loss_fn,
)
from spruce.train.distributed import context
from spruce.train.loop import LossFn
from spruce.train.resume import Stateful
from spruce.train.teacher_cache import CachedTeacher
from spruce.transfer.config import TransferConfig
from spruce.transfer.coupling import (
    check_compatible,
    check_distill_texts,
    final_phase_loss,
    joint_loss,
    phase_extras,
    run_first_stage,
)
from spruce.transfer.objective import build_objective
from spruce.utils.atomic import staged_output_dir
from spruce.utils.fields import at_defaults


@dataclass
class PruneRun(RunSettings):
    """One ``spruce prune``: the shared run settings plus what and how to prune."""

    prune: PruneConfig = section(PruneConfig, "pruning")
    transfer: TransferConfig = section(TransferConfig, "transfer from auxiliary tasks")


def run_prune(run: PruneRun) -> RunResult:
    """Prune, compact, fine-tune, evaluate and (with ``out``) write the outputs; returns
    the compact model, its tokenizer (trimmed with ``trim_vocab``) and the report."""
    start = time.perf_counter()
    run.prune.validate()
    run.transfer.validate()
    check_compatible(run.transfer, plan_teacher(run.prune))
    # The report's config block, which the checkpoint's fingerprint covers too.
    configuration = run.to_config()
    defaults = at_defaults(run).to_config()
    device, task, checkpoint = begin_run(run, "prune", configuration, defaults)
    prune, transfer, recipe = resolve_recipe(run.prune, run.transfer, run.model, task)
    run = replace(run, prune=prune, transfer=transfer)
    if "note" in recipe and context().is_main:
        print(f"note: {recipe['note']}", file=sys.stderr)
    check_distill_texts(run.transfer, task)
    student, tokenizer, source = _initial_model(run, task, recipe)
    loaders = build_loaders(task, tokenizer, run.train, run.max_length)
    # The pruning and final phases' labelled batches; the teacher's fine-tune keeps
    # loaders["train"], so it is the model `spruce finetune` makes.
    labelled = (
        train_loader(task, tokenizer, run.train, run.max_length, group_by_length=True)
        if run.prune.group_by_length
        else loaders["train"]
    )

    def validate_on(model: PreTrainedModel):
        if "validation" not in loaders:
            return None
        return lambda: evaluate(model, loaders["validation"], device)

    phases: dict[str, Any] = {}
    teacher = None
    if run.prune.distill:
        teacher = student
        result = Trainer(
            teacher,
            loaders["train"],
            run.train,
            evaluate=validate_on(teacher),
            device=device,
            progress=run.progress,
            description="teacher",
            checkpoint=phase_checkpoint(checkpoint, "teacher"),
        ).fit()
        phases["teacher"] = phase_summary(result)
        student = copy.deepcopy(teacher)
    elif run.prune.teacher:
        teacher = copy.deepcopy(student)
    dense_reference = copy.deepcopy(student).eval()
    dense_shape = encoder_shape(student.config)
    # The labelled rows repeat every epoch of both phases: the teacher runs once per row.
    labelled_teacher = None if teacher is None else CachedTeacher(teacher)

    def objective(
        model: PreTrainedModel,
    ) -> tuple[LossFn, list[torch.optim.Optimizer], list[Stateful]]:
        """Task loss, or distillation from the teacher; the distiller's projection learns
        with an optimizer of its own since it is not part of the model (and is saved
        with the phase's checkpoint)."""
        if labelled_teacher is None:
            return classification_loss, [], []
        layers = run.prune.distillation.teacher_layers
        distiller = LayerDistiller(
            encoder_shape(model.config).hidden_size,
            dense_shape.hidden_size,
            layers or default_teacher_layers(dense_shape.num_layers),
        ).to(device)
        optimizer = torch.optim.AdamW(distiller.parameters(), lr=run.train.learning_rate)
        loss_fn = distillation_loss_fn(
            labelled_teacher.to(device), distiller, run.prune.distillation
        )
        return loss_fn, [optimizer], [distiller]

    base_loss, extra_optimizers, distillers = objective(student)
    auxiliary = _auxiliary_objective(
        run, task, student, teacher, tokenizer, source, labelled, device
    )
    aux_state: list[Stateful] = [] if auxiliary is None else [auxiliary]
    aux_optimizers = [] if auxiliary is None else auxiliary.optimizers(run.train.learning_rate)
    # The auxiliary losses run their batches through the model itself (model.base_model;
    # for distill the whole classifier), outside the DDP wrapper: under several processes
    # the target phases that compute them average the model's gradients in one all-reduce
    # after backward instead (Trainer(wrap_ddp=False); LearnedMasks decides so itself
    # from its extras, as run_first_stage does).
    aux_in_target = auxiliary is not None and run.transfer.coupling in ("joint", "tied")
    initial_gates = None
    if run.transfer.coupling == "sequential":
        first = run_first_stage(
            student,
            auxiliary,
            run.train,
            run.prune,
            _steps(run.prune.prune_epochs, run.prune.prune_max_steps, labelled),
            device,
            run.progress,
            checkpoint,
        )
        phases["auxiliary_stage"] = [phase_summary(r) for r in first.result.results]
        initial_gates = first.initial_gates
        aux_optimizers = []  # the target stages of sequential coupling see no auxiliary loss
    inputs = PhaseInputs(
        student,
        labelled,
        run.train,
        base_loss if run.prune.method == "l0" else joint_loss(base_loss, auxiliary),
        device,
        run.progress,
        [*extra_optimizers, *aux_optimizers],
        checkpoint=checkpoint,
        checkpoint_modules=[*distillers, *aux_state],
        # l0 decides from its extras; the others share one structure with any joint loss
        wrap_ddp=run.prune.method == "l0" or not aux_in_target,
    )
    if run.prune.method == "l0":
        # Validation while the structure changes is informative only and costs a full
        # pass per epoch, so it runs only when --eval-steps asks for it.
        evaluate_now = validate_on(student) if run.train.eval_steps else None
        pruner = pruner_for(
            run.prune, extras=phase_extras(auxiliary, initial_gates), evaluate=evaluate_now
        )
    else:
        pruner = pruner_for(run.prune)
    phase = pruner.run(inputs)
    phases["prune"] = [phase_summary(r) for r in phase.results]
    if phase.trajectory is not None:
        phases["prune_trajectory"] = phase.trajectory
    masks = phase.masks
    compact = compact_model(student, masks)

    final_loss, final_extra, final_distillers = objective(compact)
    final_loss, aux_final = final_phase_loss(
        final_loss, auxiliary, masks, dense_shape.hidden_size, run.train.learning_rate
    )
    final_extra = [*final_extra, *aux_final]
    final_config = phase_config(run.train, run.prune.final_epochs, run.prune.final_max_steps)
    final_patience = run.prune.final_patience
    if final_patience is None:
        final_patience = run.train.patience
    # --final-patience 0 means no early stopping, which a TrainConfig spells None.
    final_config = replace(final_config, patience=final_patience or None)
    final = Trainer(
        compact,
        labelled,
        final_config,
        loss_fn=final_loss,
        extra_optimizers=final_extra,
        evaluate=validate_on(compact),
        device=device,
        progress=run.progress,
        description="final fine-tune",
        checkpoint=phase_checkpoint(checkpoint, "final"),
        checkpoint_modules=[*final_distillers, *aux_state],
        wrap_ddp=not aux_in_target,
    ).fit()
    phases["final"] = phase_summary(final)
    compact.eval()
    split_metrics = evaluate_splits(compact, loaders, device)
    dense_metrics = evaluate_splits(dense_reference, loaders, device) if teacher else None

    vocab = None
    if run.prune.trim_vocab:
        tokenizer, _, vocab = trim_vocabulary(compact, tokenizer, task_texts(task))
    record_task(compact, task, run.max_length)

    report = report_header(
        "prune", task, source, run.train.metric, split_metrics, run.train.seed, device
    )
    seq_len = latency_seq_len(dense_reference)
    report.update(compact_summary(compact, dense_reference, masks, task.num_labels))
    report.update(
        {
            "recipe": recipe,
            "method": run.prune.method,
            "units": list(run.prune.units),
            "target_sparsity": run.prune.target_sparsity,
            "dense_metrics": dense_metrics,
            "transfer": {
                **run.transfer.to_report(),
                **({} if auxiliary is None else auxiliary.summary()),
            },
            "vocab": vocab,
            "phases": phases,
            "config": configuration,
        }
    )
    main = context().is_main
    if run.prune.measure_latency and main:  # one process measures, on an idle machine
        compact.cpu()
        report["latency_ms"] = measure_latency_table(
            {"dense": dense_reference.cpu(), "pruned": compact},
            batch_sizes=(1, 32),
            seq_len=seq_len,
            threads=run.threads,
            repeats=run.prune.latency_repeats,
            runtime=run.prune.latency_runtime,
        )
    if run.out is not None and main:  # with several processes rank 0 writes
        _write_outputs(run, task, report, compact, tokenizer, dense_reference, final, start)
    context().barrier()  # --out is complete before any process leaves
    if checkpoint is not None:
        checkpoint.remove()  # --out is complete
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    return finished(compact, tokenizer, report)


def _steps(epochs: float, max_steps: int | None, loader) -> int:
    """Trainer steps of a phase (as :class:`~spruce.train.Trainer` counts them)."""
    return phase_steps(phase_config(TrainConfig(), epochs, max_steps), loader)


def _auxiliary_objective(run, task, student, teacher, tokenizer, source, labelled, device):
    """Heads and data of the auxiliary tasks, when the coupling uses them; ``distill``
    learns from the run's dense teacher at the distillation temperature."""
    if not run.transfer.active:
        return None
    # linear-decay runs over both target phases; final early stopping may end it sooner.
    steps = _steps(run.prune.prune_epochs, run.prune.prune_max_steps, labelled) + _steps(
        run.prune.final_epochs, run.prune.final_max_steps, labelled
    )
    auxiliary = build_objective(
        run.transfer,
        task,
        student,
        tokenizer,
        source,
        run.train.batch_size,
        run.max_length,
        run.train.seed,
        teacher=teacher,
        distillation=run.prune.distillation,
        steps=steps,
    ).to(device)
    auxiliary.total_steps = steps
    return auxiliary


def _initial_model(run: PruneRun, task: TaskData, recipe: dict[str, Any]):
    if not run.prune.teacher:
        return load_classifier(run.model, task.label_names)
    # --model as its own teacher may be any saved classifier; --teacher a spruce output.
    spruce_only = recipe.get("teacher") != "model"
    model, tokenizer = load_saved_classifier(run.prune.teacher, spruce_only=spruce_only)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != task.label_names:
        raise SpruceError(
            f"--teacher {run.prune.teacher} was trained on labels {names}, the data has "
            f"{task.label_names}",
            "use a teacher fine-tuned on the same task",
        )
    # CoFi prunes the fine-tuned model itself: the student starts as a copy of the teacher.
    return model, tokenizer, str(run.prune.teacher)


def _write_outputs(run, task, report, compact, tokenizer, dense_reference, final, start) -> None:
    with staged_output_dir(Path(run.out), run.overwrite) as staging:
        sizes = save_compact_model(staging, compact, tokenizer, dense_reference)
        report["bytes_on_disk"] = {"dense": sizes["dense"], "pruned": sizes["pruned"]}
        write_model_views(
            staging,
            report,
            compact,
            tokenizer,
            dense_reference,
            final,
            metric=run.train.metric,
            export=run.prune.export_onnx,
            texts=onnx_check_texts(task),
            max_length=run.max_length,
            curve_title="final fine-tune of the compact model",
        )
        trajectory = report["phases"].get("prune_trajectory")
        if trajectory:
            plot_prune_phase(
                trajectory,
                staging / "prune_phase.png",
                title=f"{report['task']}: pruning phase ({run.prune.method}, "
                f"{run.prune.sparsity_control if run.prune.method == 'l0' else 'by construction'})",
            )
        report["wall_time_s"] = round(time.perf_counter() - start, 2)
        write_report(report, staging / "report.json")
