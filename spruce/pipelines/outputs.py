"""The files every compact model leaves in ``--out``, written by ``spruce prune`` and
``spruce adapt`` alike: the model folder, its size beside the dense one, the ONNX export
with its check against PyTorch, the structure heat-map and the learning curve."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spruce.compact import check_onnx, export_onnx, save_pruned
from spruce.compact.vocab import directory_bytes
from spruce.data import TaskData
from spruce.models import encoder_shape
from spruce.report import plot_learning_curve
from spruce.report.structure_plot import plot_structure_heatmap
from spruce.train.loop import TrainResult

# Texts fed to the exported ONNX model to compare it with PyTorch.
ONNX_CHECK_TEXTS = 16


def task_texts(task: TaskData, unlabelled: bool = True) -> Iterator[str | tuple[str, str]]:
    """The task's texts, split by split (pairs as tuples)."""
    splits = [task.train, task.validation, task.test]
    if unlabelled:
        splits.append(task.unlabelled)
    for split in splits:
        if split is None:
            continue
        if "text_b" in split.column_names:
            yield from zip(split["text_a"], split["text_b"], strict=True)
        else:
            yield from split["text_a"]


def onnx_check_texts(task: TaskData) -> list[str]:
    """First texts of the task (the first side of a pair): inputs of the ONNX check."""
    texts = itertools.islice(task_texts(task, unlabelled=False), ONNX_CHECK_TEXTS)
    return [text if isinstance(text, str) else text[0] for text in texts]


def save_compact_model(
    staging: Path,
    compact: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dense: PreTrainedModel,
) -> dict[str, int]:
    """Save ``compact`` to ``staging/model``; its bytes on disk beside the dense model's
    (``dense``: the whole saved folder, ``dense_weights``: its safetensors files only)."""
    save_pruned(compact, tokenizer, staging / "model")
    with tempfile.TemporaryDirectory() as scratch:
        dense.save_pretrained(scratch)
        dense_bytes = directory_bytes(scratch)
        weight_bytes = sum(path.stat().st_size for path in Path(scratch).glob("*.safetensors"))
    return {
        "dense": dense_bytes,
        "pruned": directory_bytes(staging / "model"),
        "dense_weights": weight_bytes,
    }


def write_model_views(
    staging: Path,
    report: dict[str, Any],
    compact: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dense: PreTrainedModel,
    final: TrainResult,
    *,
    metric: str,
    export: bool,
    texts: list[str],
    max_length: int,
    heatmap_note: str = "",
    curve_title: str,
) -> None:
    """``model.onnx`` (when ``export``; the largest difference from PyTorch goes into
    ``report["onnx"]``), ``structure.png`` and ``learning_curve.png`` of the final phase."""
    if export:
        path = export_onnx(compact, tokenizer, staging / "model.onnx")
        report["onnx"] = {"max_abs_diff": check_onnx(path, compact, tokenizer, texts, max_length)}
    shape = encoder_shape(dense.config)
    plot_structure_heatmap(
        report["structure"],
        {"hidden": shape.hidden_size, "layers": shape.to_dict()["layers"]},
        staging / "structure.png",
        title=f"{report['task']}: {report['sparsity']['encoder']:.0%} encoder sparsity"
        + (f" ({heatmap_note})" if heatmap_note else ""),
    )
    plot_learning_curve(
        final.losses,
        final.evaluations,
        metric,
        staging / "learning_curve.png",
        title=f"{report['task']}: {curve_title}",
    )


def phase_summary(result: TrainResult) -> dict[str, Any]:
    """A training phase as the report records it."""
    return {
        "steps": result.steps,
        "best_step": result.best_step,
        "train_time_s": round(result.wall_time_s, 2),
        "evaluations": result.evaluations,
    }
