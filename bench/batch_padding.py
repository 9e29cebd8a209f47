"""Padded against real tokens per row of the batches a ``spruce prune`` run trains on, with
the loaders the pipelines use: the labelled batches in random order and drawn by length
(``--group-by-length``), and the ``distill`` stream's unlabelled text prepared each way
(every row joined in pairs, ``--aux-augment concat``; the longest rows the run reads,
``--aux-select longest``), with its rows and words per row, in random order and drawn by
length as the stream draws it.

    python bench/batch_padding.py --train ../shared/data/sst2/train.tsv \\
        --model runs/teachers/sst2-s0/model --max-train-samples 1000 --max-length 64 --steps 320

``--steps`` is the number of target steps a run serves (pruning plus final fine-tune: 320
for SST-2's default with 1,000 labels), which bounds what ``--aux-select longest`` keeps.
The student (and for the unlabelled text the teacher) pays for every padded token.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import numpy as np

from spruce.data import TaskDataConfig, load_task, make_loader, tokenize_split
from spruce.data.augment import augment_texts, select_texts
from spruce.models import load_classifier
from spruce.pipelines.common import train_loader
from spruce.train import TrainConfig

DISTILL_TEXTS = {"all rows, joined in pairs": ("all", "concat"), "longest": ("longest", "none")}


def tokens_per_row(batches: Iterable[dict]) -> tuple[float, float]:
    """(padded, real) tokens per row over ``batches``."""
    batches = list(batches)
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
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=320, help="target steps of the run")
    parser.add_argument("--aux-ratio", type=int, default=1, help="unlabelled batches a step")
    args = parser.parse_args()
    task = load_task(TaskDataConfig(train=args.train, max_train_samples=args.max_train_samples))
    _, tokenizer, _ = load_classifier(args.model, task.label_names)
    config = TrainConfig(seed=0, batch_size=args.batch_size)
    for grouped in (False, True):
        loader = train_loader(task, tokenizer, config, args.max_length, grouped)
        padded, real = tokens_per_row(loader)
        order = "by length" if grouped else "random"
        print(f"labelled, {order}: {padded:.1f} padded tokens per row for {real:.1f} real")
    unlabelled = task.unlabelled.select_columns(["text_a"])
    for name, (select, augment) in DISTILL_TEXTS.items():
        texts = select_texts(unlabelled, select, args.steps * args.aux_ratio * args.batch_size)
        texts = augment_texts(texts, augment, seed=0)
        encoded = tokenize_split(texts, tokenizer, args.max_length)
        words = np.mean([len(text.split()) for text in texts["text_a"]])
        print(f"unlabelled, {name}: {len(texts)} rows of {words:.1f} words")
        for grouped in (False, True):
            loader = make_loader(
                encoded, tokenizer, args.batch_size, shuffle=True, seed=0, group_by_length=grouped
            )
            padded, real = tokens_per_row(loader)
            order = "by length (the stream's)" if grouped else "random"
            print(f"  {order}: {padded:.1f} padded tokens per row for {real:.1f} real")


if __name__ == "__main__":
    main()
