"""The embedded demo: spam filtering on the SpamAssassin corpus with 500 labelled e-mails.

Rows of the demo's table: the dense fine-tuned MiniLM; MiniLM pruned to
``prune_sparsity`` of its encoder weights by ``spruce prune --recipe plain`` (the 500
labelled e-mails alone); and by the default recipe, which distils the dense model into
the pruned one on the labelled e-mails and on the unlabelled rest of the training pool.
Hard ham (legitimate mail that looks like spam) is kept out of the training pool and put
into validation and test, where it is also scored on its own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spruce.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    Bounds,
    check_settings,
    setting,
)
from spruce.data import TaskDataConfig
from spruce.data.readers import read_table
from spruce.data.spam_assassin import default_cache_dir, prepare_spam_assassin
from spruce.errors import SpruceError
from spruce.pipelines.evaluate import evaluate_saved_model
from spruce.pipelines.finetune import FinetuneRun, run_finetune
from spruce.pipelines.prune import PruneRun, run_prune
from spruce.pruning.config import PruneConfig
from spruce.report import write_report
from spruce.train import TrainConfig
from spruce.utils.atomic import staged_output_dir

HARD_HAM = "hard-ham-1"
# (validation, test) e-mails per kind; the rest of easy ham and spam is the training pool.
EVAL_SIZES = {"hard_ham": (60, None), "easy_ham": (120, 300), "spam": (120, 300)}


@dataclass
class DemoSettings:
    """What ``spruce demo`` runs (its options are these fields)."""

    out: Path = setting(
        Path("runs/demo"), "where to write the demo's runs (replaced)", metavar="DIR"
    )
    labelled: int = setting(500, "labelled training e-mails", bounds=AT_LEAST_ONE)
    seed: int = setting(0, "seeds sampling, initialisation and data order", bounds=NON_NEGATIVE)
    max_length: int = setting(128, "tokens per e-mail after truncation", bounds=AT_LEAST_ONE)
    epochs: float = setting(4.0, "fine-tuning epochs", bounds=POSITIVE)
    max_steps: int | None = setting(None, "cap training steps (quick runs)", bounds=AT_LEAST_ONE)
    cache_dir: Path | None = setting(None, "where the converted corpus is kept", metavar="DIR")
    tarball: Path | None = setting(None, "a local npm tarball of the corpus", metavar="FILE")
    device: str = setting("auto", "auto, cpu or cuda[:N]")
    progress: bool = setting(True, "no progress bar", flag="--quiet", inverse=True)
    model: str | None = setting(None, "pre-trained encoder (default: the embedded MiniLM-L6)")
    prune: bool = setting(True, "the pruned rows (--no-prune: the dense row only)")
    prune_sparsity: float = setting(
        0.9,
        "encoder sparsity of the pruned rows",
        bounds=Bounds(low=0, high=1, low_open=True, high_open=True),
    )
    prune_epochs: float = 3.0
    final_epochs: float = 2.0

    def __post_init__(self) -> None:
        check_settings(self)


def write_demo_splits(corpus: Path, dest: Path, seed: int) -> dict[str, int]:
    """train / validation / test / test_hard_ham JSONL files under ``dest``; returns sizes."""
    rows = [dict(r) for r in read_table(corpus)]
    kinds: dict[str, list[dict]] = {"hard_ham": [], "easy_ham": [], "spam": []}
    for row in rows:
        kind = "hard_ham" if row["group"] == HARD_HAM else row["label"].replace("ham", "easy_ham")
        kinds[kind].append({"text": row["text"], "label": row["label"], "group": row["group"]})
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for kind, items in kinds.items():
        if not items:
            raise SpruceError(
                f"the demo corpus {corpus} has no {kind.replace('_', ' ')} e-mails",
                "delete it and run 'spruce data spam-assassin' again",
            )
        rng.shuffle(items)
        n_val, n_test = EVAL_SIZES[kind]
        n_test = len(items) - n_val if n_test is None else n_test
        splits["validation"] += items[:n_val]
        splits["test"] += items[n_val : n_val + n_test]
        splits["train"] += items[n_val + n_test :]
    splits["test_hard_ham"] = [r for r in splits["test"] if r["group"] == HARD_HAM]
    dest.mkdir(parents=True, exist_ok=True)
    for name, items in splits.items():
        with open(dest / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item) + "\n")
    return {name: len(items) for name, items in splits.items()}


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Prepare the data, fine-tune, evaluate and return the summary (also in summary.json)."""
    corpus = prepare_spam_assassin(settings.cache_dir or default_cache_dir(), settings.tarball)
    with staged_output_dir(settings.out, overwrite=True) as staging:
        sizes = write_demo_splits(corpus, staging / "data", settings.seed)
        data = staging / "data"
        task_data = TaskDataConfig(
            train=str(data / "train.jsonl"),
            validation=str(data / "validation.jsonl"),
            test=str(data / "test.jsonl"),
            text_columns=("text",),
            label_column="label",
            max_train_samples=settings.labelled,
            seed=settings.seed,
            name="spam-assassin",
        )
        dense = run_finetune(
            FinetuneRun(
                data=task_data,
                train=_train_config(settings, settings.epochs),
                model=settings.model,
                max_length=settings.max_length,
                out=staging / "dense",
                device=settings.device,
                progress=settings.progress,
                checkpoint_steps=0,  # the demo's output is staged as a whole: nothing to resume
            )
        ).report
        hard_ham = evaluate_saved_model(
            staging / "dense", str(data / "test_hard_ham.jsonl"), device=settings.device
        )
        rows = [_row("dense MiniLM-L6", dense, hard_ham["metrics"]["accuracy"])]
        if settings.prune:
            rows += _pruned_rows(settings, task_data, staging)
        summary = {"splits": sizes, "labelled": dense["train_examples"], "rows": rows}
        write_report(summary, staging / "summary.json")
    return summary


def _train_config(settings: DemoSettings, epochs: float) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        max_steps=settings.max_steps,
        learning_rate=1e-4,
        batch_size=16,
        seed=settings.seed,
    )


def _pruned_rows(
    settings: DemoSettings, task_data: TaskDataConfig, staging: Path
) -> list[dict[str, Any]]:
    """Prune twice with the same seed: the plain recipe (labelled e-mails alone, from the
    pre-trained MiniLM) and the default one (the dense model as teacher, distilled on the
    labelled e-mails and the unlabelled rest of the training pool)."""
    rows = []
    variants = (
        ("plain", {"recipe": "plain"}, "labelled mail only (--recipe plain)"),
        ("default", {"teacher": str(staging / "dense")}, "default recipe"),
    )
    for name, recipe, label in variants:
        report = run_prune(
            PruneRun(
                data=task_data,
                train=_train_config(settings, settings.epochs),
                prune=PruneConfig(
                    target_sparsity=settings.prune_sparsity,
                    prune_epochs=settings.prune_epochs,
                    final_epochs=settings.final_epochs,
                    prune_max_steps=settings.max_steps,
                    final_max_steps=settings.max_steps,
                    export_onnx=name == "default",
                    measure_latency=False,
                    **recipe,
                ),
                max_length=settings.max_length,
                out=staging / name,
                device=settings.device,
                progress=settings.progress,
                checkpoint_steps=0,
            )
        ).report
        hard_ham = evaluate_saved_model(
            staging / name, str(staging / "data" / "test_hard_ham.jsonl"), device=settings.device
        )
        percent = f"{settings.prune_sparsity:.0%}"
        rows.append(_row(f"pruned {percent}, {label}", report, hard_ham["metrics"]["accuracy"]))
    return rows


def _row(name: str, report: dict[str, Any], hard_ham_accuracy: float) -> dict[str, Any]:
    metrics = report["metrics"]
    return {
        "model": name,
        "params_total": report["params"]["total"],
        "params_encoder": report["params"]["encoder"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "mcc": metrics["mcc"],
        "hard_ham_accuracy": hard_ham_accuracy,
        "wall_time_s": report["wall_time_s"],
    }


def format_table(summary: dict[str, Any]) -> str:
    header = ("model", "params", "encoder", "test acc", "macro-F1", "MCC", "hard-ham acc", "time")
    lines = [
        tuple(
            [
                row["model"],
                f"{row['params_total'] / 1e6:.1f}M",
                f"{row['params_encoder'] / 1e6:.1f}M",
                f"{row['accuracy']:.3f}",
                f"{row['macro_f1']:.3f}",
                f"{row['mcc']:.3f}",
                f"{row['hard_ham_accuracy']:.3f}",
                f"{row['wall_time_s']:.0f} s",
            ]
        )
        for row in summary["rows"]
    ]
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    sizes = summary["splits"]
    title = (
        f"SpamAssassin spam filter, {summary['labelled']} labelled e-mails "
        f"(test: {sizes['test']} e-mails, {sizes['test_hard_ham']} of them hard ham)"
    )
    return "\n".join([title, fmt.format(*header), *(fmt.format(*r) for r in lines)])
