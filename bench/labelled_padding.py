"""Padded against real tokens per row of the labelled batches, in random order and drawn
by length (``spruce prune --group-by-length``), with the loader the pipelines use.

    python bench/labelled_padding.py --train ../shared/data/sst2/train.tsv \\
        --model runs/teachers/sst2-s0/model --max-train-samples 1000 --max-length 64
"""

from __future__ import annotations

import argparse

from spruce.data import TaskDataConfig, load_task
from spruce.models import load_classifier
from spruce.pipelines.common import train_loader
from spruce.train import TrainConfig


def tokens_per_row(task, tokenizer, max_length: int, grouped: bool) -> tuple[float, float]:
    """(padded, real) tokens per row over one epoch of the labelled loader."""
    batches = list(train_loader(task, tokenizer, TrainConfig(seed=0), max_length, grouped))
    rows = sum(b["input_ids"].shape[0] for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return padded / rows, real / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--model", required=True, help="a local model folder (its tokenizer)")
    parser.add_argument("--max-train-samples", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    task = load_task(TaskDataConfig(train=args.train, max_train_samples=args.max_train_samples))
    _, tokenizer, _ = load_classifier(args.model, task.label_names)
    for grouped in (False, True):
        padded, real = tokens_per_row(task, tokenizer, args.max_length, grouped)
        order = "by length" if grouped else "random"
        print(f"{order}: {padded:.1f} padded tokens per row for {real:.1f} real")


if __name__ == "__main__":
    main()
