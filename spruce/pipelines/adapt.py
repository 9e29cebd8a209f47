"""``spruce adapt``: Structured Pruning Adapters on a transformer (METHODS.md section 3).

Adapt mode: the base stays frozen; adapters, task biases and the head learn while units
are pruned (progressively by a criterion, or by learned ``l0`` masks); the result is fused
into one compact model, and the per-task file (``task.safetensors``) holds only the
task's own tensors. Fine-prune mode (``--fine-prune``, the paper's baseline): the same
pruning with every weight learning and no adapter.
"""

from __future__ import annotations

import copy
import itertools
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.adapters import AdapterConfig, find_adapters
from spruce.compact import apply_masks, compact_model
from spruce.config import section
from spruce.masks.units import UnitMasks
from spruce.models import load_classifier
from spruce.pipelines.common import (
    RunSettings,
    begin_run,
    build_loaders,
    compact_summary,
    evaluate_splits,
    latency_seq_len,
    record_task,
    report_header,
)
from spruce.pipelines.outputs import (
    onnx_check_texts,
    phase_summary,
    save_compact_model,
    write_model_views,
)
from spruce.pipelines.result import RunResult, finished
from spruce.pruning.config import PruneConfig
from spruce.pruning.phases import (
    LearnedMasks,
    PhaseInputs,
    PhaseResult,
    ScoreBased,
    phase_config,
)
from spruce.report import write_report
from spruce.report.latency import measure_latency_table
from spruce.spa.config import LEARNED, AdaptConfig
from spruce.spa.task_file import TENSORS_NAME, BaseReference, save_task
from spruce.spa.wiring import (
    ADAPT_UNITS,
    head_parameters,
    inject_transformer_adapters,
    merged_plain_copy,
    scoring_view,
    set_unit_masks,
)
from spruce.train import Trainer, TrainResult, classification_loss, evaluate
from spruce.train.checkpoint import Checkpointer, phase_checkpoint
from spruce.utils.atomic import staged_output_dir
from spruce.utils.fields import at_defaults

__all__ = ["CNN_MODELS", "AdaptConfig", "AdaptRun", "is_image_task", "run_adapt"]

CHECK_BATCHES = 4  # real batches on which the masked and the fused model are compared
# Image tasks: these model names, a .pt/.pth state dict, or .npz / class-folder data.
CNN_MODELS = ("efficientnet-lite0", "resnet18", "resnet50")


@dataclass
class AdaptRun(RunSettings):
    """One ``spruce adapt``: the shared run settings plus adapter and pruning settings."""

    adapt: AdaptConfig = section(AdaptConfig, "adapters and pruning")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapt.final_epochs is None:  # as long as a fine-tune
            self.adapt.final_epochs = self.train.epochs


def is_image_task(run: AdaptRun) -> bool:
    """CNN and image data (:mod:`spruce.pipelines.adapt_image`), or an encoder and text
    (:func:`run_adapt`): decided by the model name or the data."""
    model = str(run.model or "")
    if model in CNN_MODELS or model.endswith((".pt", ".pth")):
        return True
    train = Path(run.data.train)
    return train.suffix.lower() == ".npz" or (
        train.is_dir() and any(child.is_dir() for child in train.iterdir())
    )


def run_adapt(run: AdaptRun) -> RunResult:
    """Adapt and prune, fuse, evaluate and (with ``out``) write the outputs; returns the
    fused compact model, its tokenizer and the report."""
    start = time.perf_counter()
    settings = run.adapt.validate()
    # The report's config block, which the checkpoint's fingerprint covers too.
    configuration = run.to_config()
    default_run = at_defaults(run)
    default_run.adapt.validate()
    defaults = default_run.to_config()
    device, task, checkpoint = begin_run(run, "adapt", configuration, defaults)
    model, tokenizer, source = load_classifier(run.model, task.label_names)
    loaders = build_loaders(task, tokenizer, run.train, run.max_length)
    dense_reference = copy.deepcopy(model).eval()
    adapter = None if settings.fine_prune else settings.adapter_config()
    base = None
    if adapter is not None:
        inject_transformer_adapters(model, adapter)
        base = BaseReference.of(model, run.model, source)
    model.to(device)

    phase = _prune(run, model, loaders["train"], device, adapter is not None, checkpoint)
    masks = phase.masks.detach()
    if adapter is not None:
        set_unit_masks(model, masks)
    final = _final_fine_tune(run, model, masks, loaders, device, checkpoint)
    model.eval()
    with apply_masks(model, masks):
        masked_metrics = evaluate_splits(model, loaders, device)
    record_task(model, task, run.max_length)
    compact = compact_model(merged_plain_copy(model) if adapter else model, masks)
    split_metrics = evaluate_splits(compact, loaders, device)
    fused_diff = _fused_difference(model, compact, masks, loaders, device)

    report = report_header(
        "adapt", task, source, run.train.metric, split_metrics, run.train.seed, device
    )
    seq_len = latency_seq_len(dense_reference)
    report.update(compact_summary(compact, dense_reference, masks, task.num_labels))
    report.update(_adapter_summary(settings, adapter, model, masks, report["params"]["total"]))
    report.update(
        {
            "masked_metrics": masked_metrics,
            "fused_max_abs_diff": fused_diff,
            "phases": {
                "prune": [phase_summary(r) for r in phase.results],
                "final": phase_summary(final),
            },
            "config": configuration,
        }
    )
    if settings.measure_latency:
        report["latency_ms"] = measure_latency_table(
            {"dense": dense_reference.cpu(), "pruned": compact.cpu()},
            batch_sizes=(1, 32),
            seq_len=seq_len,
            threads=run.threads,
            repeats=settings.latency_repeats,
        )
    texts = onnx_check_texts(task)
    outcome = _Outcome(model, masks, base, adapter, compact, tokenizer, dense_reference, final)
    if run.out is not None:
        with staged_output_dir(Path(run.out), run.overwrite) as staging:
            _write_outputs(run, report, staging, outcome, texts, start)
    else:  # sizes are still measured, on files written to a scratch directory
        with tempfile.TemporaryDirectory() as scratch:
            _write_outputs(run, report, Path(scratch), outcome, texts, start)
    if checkpoint is not None:
        checkpoint.remove()  # --out is complete
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    return finished(compact, tokenizer, report)


def _adapter_summary(
    settings: AdaptConfig,
    adapter: AdapterConfig | None,
    model: PreTrainedModel,
    masks: UnitMasks,
    total_params: int,
) -> dict[str, Any]:
    """The report's adapter keys: mode, criterion, units, and what the task learned
    (adapter entries and the head; every weight in fine-prune mode) and masks."""
    unit_bits = sum(value.numel() for _, value in masks.items())
    wrappers = find_adapters(model).values()
    learned = total_params
    if adapter is not None:
        learned = sum(w.learned_parameters() for w in wrappers)
        learned += sum(p.numel() for p in head_parameters(model).values())
    return {
        "mode": settings.mode,
        "adapter": None if adapter is None else adapter.to_dict(),
        "criterion": settings.criterion,
        "units": list(ADAPT_UNITS if settings.criterion == LEARNED else ("head", "ffn_neuron")),
        "target_sparsity": settings.target_sparsity,
        "learned_params": learned,
        "mask_bits": unit_bits + sum(w.mask_bits() for w in wrappers),
    }


def _steps(epochs: float, loader: DataLoader, cap: int | None) -> int:
    """Optimizer steps of a phase: its epochs, capped by ``--max-steps``."""
    steps = max(1, math.ceil(epochs * len(loader)))
    return min(steps, cap) if cap else steps


def _prune(
    run: AdaptRun,
    model: PreTrainedModel,
    loader: DataLoader,
    device,
    adapted: bool,
    checkpoint: Checkpointer | None,
) -> PhaseResult:
    settings, cap = run.adapt, run.train.max_steps
    per_round = _steps(settings.epochs_per_round, loader, cap)
    prune = PruneConfig(
        method="l0" if settings.criterion == LEARNED else "taylor",  # taylor: see criterion=
        target_sparsity=settings.target_sparsity,
        units=ADAPT_UNITS if settings.criterion == LEARNED else None,
        prune_epochs=settings.epochs_per_round * settings.prune_rounds,
        prune_rounds=settings.prune_rounds,
        sparsity_warmup=settings.sparsity_warmup,
        sparsity_control=settings.sparsity_control,
        lr_gates=settings.lr_gates,
        lr_lambda=settings.lr_lambda,
        size_multiple=settings.size_multiple,
    ).validate()
    inputs = PhaseInputs(
        model, loader, run.train, classification_loss, device, run.progress, checkpoint=checkpoint
    )
    if settings.criterion == LEARNED:
        # One phase as long as all rounds together; hidden stays whole (shared base).
        steps = _steps(prune.prune_epochs, loader, cap)
        prune = replace(prune, prune_max_steps=steps)
        return LearnedMasks(prune).run(inputs)
    prune = replace(prune, prune_max_steps=per_round * settings.prune_rounds)
    view = scoring_view if adapted else None
    return ScoreBased(prune, settings.criterion, view).run(inputs)


def _final_fine_tune(
    run: AdaptRun,
    model: PreTrainedModel,
    masks: UnitMasks,
    loaders,
    device,
    checkpoint: Checkpointer | None,
) -> TrainResult:
    """Train with the structure fixed; the weights that score best on validation stay."""
    steps = _steps(run.adapt.final_epochs, loaders["train"], run.train.max_steps)
    config = phase_config(run.train, run.adapt.final_epochs, steps)
    config = replace(config, patience=run.train.patience)
    with apply_masks(model, masks):
        validation = loaders.get("validation")
        return Trainer(
            model,
            loaders["train"],
            config,
            evaluate=(lambda: evaluate(model, validation, device)) if validation else None,
            device=device,
            progress=run.progress,
            description="final fine-tune",
            checkpoint=phase_checkpoint(checkpoint, "final"),
        ).fit()


@torch.no_grad()
def _fused_difference(model, compact, masks: UnitMasks, loaders, device) -> float:
    """Largest |logit difference| between the masked model and the fused compact one."""
    loader = loaders.get("test") or loaders.get("validation") or loaders["train"]
    worst = 0.0
    with apply_masks(model, masks):
        for batch in itertools.islice(loader, CHECK_BATCHES):
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            difference = model(**inputs).logits - compact(**inputs).logits
            worst = max(worst, float(difference.abs().max()))
    return worst


@dataclass
class _Outcome:
    """What a run leaves behind, for the output files."""

    model: PreTrainedModel  # the adapted (or fine-pruned) full-size model
    masks: UnitMasks
    base: BaseReference | None
    adapter: AdapterConfig | None
    compact: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    dense: PreTrainedModel
    final: TrainResult


def _write_outputs(
    run: AdaptRun, report: dict, staging: Path, out: _Outcome, texts: list[str], start: float
) -> None:
    sizes = save_compact_model(staging, out.compact, out.tokenizer, out.dense)
    report["base_model_bytes"] = sizes["dense_weights"]
    report["bytes_on_disk"] = {"dense": sizes["dense"], "pruned": sizes["pruned"]}
    if out.adapter is not None:
        assert out.base is not None
        save_task(staging, out.model, out.masks, out.base, out.adapter)
        report["task_file_bytes"] = (staging / TENSORS_NAME).stat().st_size
    else:
        report["task_file_bytes"] = report["bytes_on_disk"]["pruned"]
    if run.out is None:
        return
    write_model_views(
        staging,
        report,
        out.compact,
        out.tokenizer,
        out.dense,
        out.final,
        metric=run.train.metric,
        export=run.adapt.export_onnx,
        texts=texts,
        max_length=run.max_length,
        heatmap_note=f"{report['mode']}, {report['criterion']}",
        curve_title="final fine-tune with the structure fixed",
    )
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    write_report(report, staging / "report.json")
