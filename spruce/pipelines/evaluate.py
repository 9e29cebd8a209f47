"""Evaluate a saved spruce model on a labelled file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spruce.data.columns import resolve_columns, to_canonical
from spruce.data.readers import read_table
from spruce.data.sampling import stratified_sample
from spruce.data.tokenization import make_loader, tokenize_split
from spruce.models import TASK_METADATA_KEY, load_saved_classifier
from spruce.pipelines.runtime import resolve_device
from spruce.train import evaluate


def evaluate_saved_model(
    model_dir: str | Path,
    data: str,
    *,
    text_columns: tuple[str, ...] | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 128,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of the model in ``model_dir`` on ``data``; columns default to those it was
    trained with."""
    model, tokenizer = load_saved_classifier(model_dir)
    meta = getattr(model.config, TASK_METADATA_KEY)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    table = read_table(data, split="test")
    spec = resolve_columns(
        table,
        text_columns or tuple(meta["text_columns"]),
        label_column
        or (meta["label_column"] if meta["label_column"] in table.column_names else None),
        data,
    )
    canonical = to_canonical(table, spec, label_names, data)
    if max_samples is not None and max_samples < len(canonical):
        keep, _ = stratified_sample(canonical["label"], max_samples=max_samples, seed=seed)
        canonical = canonical.select(keep)
    target = resolve_device(device)
    loader = make_loader(
        tokenize_split(canonical, tokenizer, meta["max_length"]), tokenizer, batch_size
    )
    metrics = evaluate(model.to(target), loader, target)
    return {"task": meta["task"], "data": str(data), "examples": len(canonical), "metrics": metrics}
