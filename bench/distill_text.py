"""What the ``distill`` stream reads from the unlabelled text, for each way of preparing it:
rows, words per row, and padded against real tokens per row over one pass of the loader
the pipelines use (batches drawn by length).

    python bench/distill_text.py --train ../shared/data/sst2/train.tsv \\
        --model runs/teachers/sst2-s0/model --max-train-samples 1000 --max-length 64 --steps 320

``--steps`` is the number of target steps a run serves (pruning plus final fine-tune: 320
for SST-2's default with 1,000 labels), which bounds what ``--aux-select longest`` keeps.
The student and the teacher pay for every padded token of these batches, so padded tokens
per row times rows read is the unlabelled side's share of the work.
"""

from __future__ import annotations

import argparse

import numpy as np

from spruce.data import TaskDataConfig, load_task
from spruce.data.augment import augment_texts, select_texts
from spruce.models import load_classifier
from spruce.transfer.data import text_stream

WAYS = {"all rows, joined in pairs (concat)": ("all", "concat"), "longest": ("longest", "none")}


def describe(texts, tokenizer, max_length: int, batch_size: int) -> dict[str, float]:
    """Rows, words per row, and padded / real tokens per row over one pass."""
    stream = text_stream(texts, tokenizer, batch_size, max_length, seed=0)
    batches = list(stream.loader)
    rows = sum(b["input_ids"].shape[0] for b in batches)
    return {
        "rows": len(texts),
        "words": float(np.mean([len(t.split()) for t in texts["text_a"]])),
        "padded": sum(b["input_ids"].numel() for b in batches) / rows,
        "real": sum(int(b["attention_mask"].sum()) for b in batches) / rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--model", required=True, help="a local model folder (its tokenizer)")
    parser.add_argument("--max-train-samples", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=320, help="target steps of the run")
    args = parser.parse_args()
    task = load_task(TaskDataConfig(train=args.train, max_train_samples=args.max_train_samples))
    _, tokenizer, _ = load_classifier(args.model, task.label_names)
    unlabelled = task.unlabelled.select_columns(["text_a"])
    for name, (select, augment) in WAYS.items():
        texts = select_texts(unlabelled, select, args.steps * args.batch_size)
        texts = augment_texts(texts, augment, seed=0)
        row = describe(texts, tokenizer, args.max_length, args.batch_size)
        print(
            f"{name}: {row['rows']} rows of {row['words']:.1f} words, "
            f"{row['padded']:.1f} padded tokens per row for {row['real']:.1f} real"
        )


if __name__ == "__main__":
    main()
