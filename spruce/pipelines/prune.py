"""``spruce prune``: teacher (optional) -> pruning -> fixed structure -> compaction ->
final fine-tune of the compact model -> evaluation -> export and measurement."""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field, replace
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
from spruce.pruning.phases import (
    PhaseInputs,
    PhaseResult,
    phase_config,
    phase_steps,
    pruner_for,
)
from spruce.report import plot_prune_phase, write_report
from spruce.report.latency import measure_latency_table
from spruce.train import TrainConfig, Trainer, TrainResult, classification_loss, evaluate
from spruce.train.checkpoint import Checkpointer, phase_checkpoint
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
    job = _PruneJob.begin(run)
    job.fit_teacher()
    losses = job.losses(job.student)
    auxiliary = job.auxiliary()
    phase = job.prune(losses, auxiliary)
    compact = compact_model(job.student, phase.masks)
    final = job.fine_tune(compact, phase.masks, auxiliary)
    compact.eval()
    report, tokenizer = job.report(compact, phase.masks, auxiliary)
    run = job.run
    if run.prune.measure_latency and context().is_main:  # one process, on an idle machine
        compact.cpu()
        report["latency_ms"] = measure_latency_table(
            {"dense": job.dense_reference.cpu(), "pruned": compact},
            batch_sizes=(1, 32),
            seq_len=latency_seq_len(job.dense_reference),
            threads=run.threads,
            repeats=run.prune.latency_repeats,
            runtime=run.prune.latency_runtime,
        )
    if run.out is not None and context().is_main:  # with several processes rank 0 writes
        _write_outputs(run, job.task, report, compact, tokenizer, job.dense_reference, final, start)
    context().barrier()  # --out is complete before any process leaves
    if job.checkpoint is not None:
        job.checkpoint.remove()  # --out is complete
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    return finished(compact, tokenizer, report)


@dataclass
class _Losses:
    """A phase's loss, the optimizers beside the model's and what the checkpoint saves."""

    loss: LossFn
    optimizers: list[torch.optim.Optimizer]
    modules: list[Stateful]


@dataclass
class _PruneJob:
    """One prune run's state between its stages, in the order :func:`run_prune` calls
    them (each stage draws from the seeded generators in turn, so the order is part of
    the result)."""

    run: PruneRun
    device: torch.device
    task: TaskData
    checkpoint: Checkpointer | None
    recipe: dict[str, Any]
    configuration: dict[str, Any]
    student: PreTrainedModel
    tokenizer: Any
    source: str
    loaders: dict[str, Any]
    labelled: Any  # the pruning and final phases' labelled batches
    teacher: PreTrainedModel | None = None
    dense_reference: PreTrainedModel | None = None
    dense_shape: Any = None  # the dense student's EncoderShape
    labelled_teacher: CachedTeacher | None = None
    phases: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def begin(cls, run: PruneRun) -> _PruneJob:
        """Check the settings, open the run (checkpoint, seed, data), apply the recipe
        and load the model and the batches."""
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
        # The teacher's fine-tune keeps loaders["train"], so it is what spruce finetune makes.
        labelled = (
            train_loader(task, tokenizer, run.train, run.max_length, group_by_length=True)
            if run.prune.group_by_length
            else loaders["train"]
        )
        return cls(
            run, device, task, checkpoint, recipe, configuration, student, tokenizer, source,
            loaders, labelled,
        )  # fmt: skip

    def validate_on(self, model: PreTrainedModel):
        if "validation" not in self.loaders:
            return None
        return lambda: evaluate(model, self.loaders["validation"], self.device)

    def fit_teacher(self) -> None:
        """The dense teacher: fine-tuned first (``distill``), or the given one; the
        student starts as its copy, and the dense reference is the student before
        pruning."""
        run = self.run
        if run.prune.distill:
            self.teacher = self.student
            result = Trainer(
                self.teacher,
                self.loaders["train"],
                run.train,
                evaluate=self.validate_on(self.teacher),
                device=self.device,
                progress=run.progress,
                description="teacher",
                checkpoint=phase_checkpoint(self.checkpoint, "teacher"),
            ).fit()
            self.phases["teacher"] = phase_summary(result)
            self.student = copy.deepcopy(self.teacher)
        elif run.prune.teacher:
            self.teacher = copy.deepcopy(self.student)
        self.dense_reference = copy.deepcopy(self.student).eval()
        self.dense_shape = encoder_shape(self.student.config)
        # The labelled rows repeat every epoch of both phases: the teacher runs once per row.
        self.labelled_teacher = None if self.teacher is None else CachedTeacher(self.teacher)

    def losses(self, model: PreTrainedModel) -> _Losses:
        """Task loss, or distillation from the teacher; the distiller's projection learns
        with an optimizer of its own since it is not part of the model (and is saved
        with the phase's checkpoint)."""
        if self.labelled_teacher is None:
            return _Losses(classification_loss, [], [])
        run = self.run
        layers = run.prune.distillation.teacher_layers
        distiller = LayerDistiller(
            encoder_shape(model.config).hidden_size,
            self.dense_shape.hidden_size,
            layers or default_teacher_layers(self.dense_shape.num_layers),
        ).to(self.device)
        optimizer = torch.optim.AdamW(distiller.parameters(), lr=run.train.learning_rate)
        loss_fn = distillation_loss_fn(
            self.labelled_teacher.to(self.device), distiller, run.prune.distillation
        )
        return _Losses(loss_fn, [optimizer], [distiller])

    def auxiliary(self):
        return _auxiliary_objective(
            self.run, self.task, self.student, self.teacher, self.tokenizer, self.source,
            self.labelled, self.device,
        )  # fmt: skip

    def aux_in_target(self, auxiliary) -> bool:
        """The auxiliary losses run their batches through the model itself (its
        base_model; for distill the whole classifier), outside the DDP wrapper: under
        several processes the target phases that compute them average the model's
        gradients in one all-reduce after backward instead (Trainer(wrap_ddp=False);
        LearnedMasks decides so itself from its extras, as run_first_stage does)."""
        return auxiliary is not None and self.run.transfer.coupling in ("joint", "tied")

    def prune(self, losses: _Losses, auxiliary) -> PhaseResult:
        """The sequential auxiliary stage, if any, then the pruning phase of the method."""
        run = self.run
        aux_state = [] if auxiliary is None else [auxiliary]
        aux_optimizers = [] if auxiliary is None else auxiliary.optimizers(run.train.learning_rate)
        initial_gates = None
        if run.transfer.coupling == "sequential":
            steps = _steps(run.prune.prune_epochs, run.prune.prune_max_steps, self.labelled)
            first = run_first_stage(
                self.student, auxiliary, run.train, run.prune, steps, self.device,
                run.progress, self.checkpoint,
            )  # fmt: skip
            self.phases["auxiliary_stage"] = [phase_summary(r) for r in first.result.results]
            initial_gates = first.initial_gates
            aux_optimizers = []  # the target stages of sequential coupling see no aux loss
        l0 = run.prune.method == "l0"
        inputs = PhaseInputs(
            self.student,
            self.labelled,
            run.train,
            losses.loss if l0 else joint_loss(losses.loss, auxiliary),
            self.device,
            run.progress,
            [*losses.optimizers, *aux_optimizers],
            checkpoint=self.checkpoint,
            checkpoint_modules=[*losses.modules, *aux_state],
            wrap_ddp=l0 or not self.aux_in_target(auxiliary),
        )
        options = {}
        if l0:
            # Validation while the structure changes is informative only and costs a
            # full pass per epoch, so it runs only when --eval-steps asks for it.
            evaluate_now = self.validate_on(self.student) if run.train.eval_steps else None
            options = {"extras": phase_extras(auxiliary, initial_gates), "evaluate": evaluate_now}
        phase = pruner_for(run.prune, **options).run(inputs)
        self.phases["prune"] = [phase_summary(r) for r in phase.results]
        if phase.trajectory is not None:
            self.phases["prune_trajectory"] = phase.trajectory
        return phase

    def fine_tune(self, compact: PreTrainedModel, masks, auxiliary) -> TrainResult:
        """The compact model's final fine-tune, with the same objective."""
        run = self.run
        losses = self.losses(compact)
        final_loss, aux_final = final_phase_loss(
            losses.loss, auxiliary, masks, self.dense_shape.hidden_size, run.train.learning_rate
        )
        config = phase_config(run.train, run.prune.final_epochs, run.prune.final_max_steps)
        patience = run.prune.final_patience
        if patience is None:
            patience = run.train.patience
        # --final-patience 0 means no early stopping, which a TrainConfig spells None.
        config = replace(config, patience=patience or None)
        final = Trainer(
            compact,
            self.labelled,
            config,
            loss_fn=final_loss,
            extra_optimizers=[*losses.optimizers, *aux_final],
            evaluate=self.validate_on(compact),
            device=self.device,
            progress=run.progress,
            description="final fine-tune",
            checkpoint=phase_checkpoint(self.checkpoint, "final"),
            checkpoint_modules=[*losses.modules, *([] if auxiliary is None else [auxiliary])],
            wrap_ddp=not self.aux_in_target(auxiliary),
        ).fit()
        self.phases["final"] = phase_summary(final)
        return final

    def report(self, compact: PreTrainedModel, masks, auxiliary) -> tuple[dict[str, Any], Any]:
        """The report (but latency and files) and the tokenizer the model ships with."""
        run, task, tokenizer = self.run, self.task, self.tokenizer
        split_metrics = evaluate_splits(compact, self.loaders, self.device)
        dense_metrics = None
        if self.teacher:
            dense_metrics = evaluate_splits(self.dense_reference, self.loaders, self.device)
        vocab = None
        if run.prune.trim_vocab:
            tokenizer, _, vocab = trim_vocabulary(compact, tokenizer, task_texts(task))
        record_task(compact, task, run.max_length)
        report = report_header(
            "prune", task, self.source, run.train.metric, split_metrics, run.train.seed,
            self.device,
        )  # fmt: skip
        report.update(compact_summary(compact, self.dense_reference, masks, task.num_labels))
        report.update(
            {
                "recipe": self.recipe,
                "method": run.prune.method,
                "units": list(run.prune.units),
                "target_sparsity": run.prune.target_sparsity,
                "dense_metrics": dense_metrics,
                "transfer": {
                    **run.transfer.to_report(),
                    **({} if auxiliary is None else auxiliary.summary()),
                },
                "vocab": vocab,
                "phases": self.phases,
                "config": self.configuration,
            }
        )
        return report, tokenizer


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
