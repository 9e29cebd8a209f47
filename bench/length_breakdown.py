"""Accuracy by input length, and agreement with a reference model, for saved classifiers.

    python bench/length_breakdown.py --data ../shared/data/sst2/test.tsv \
        --reference runs/teacher/model --models l0=results/grid/sst2-recipe/runs/l0-s0/model \
        --out results/length-breakdown

SST-2's training rows are parse-tree phrases (9 words on average), its test rows are
sentences (20): a student distilled on phrases can match its teacher on them and still
fall behind on long sentences. This prints, per length bucket (words), each model's
accuracy, and each model's agreement with ``--reference`` (the teacher) over the file.
Writes ``breakdown.json`` and ``breakdown.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from spruce.data.readers import read_table
from spruce.models import load_saved_classifier

BUCKETS = ((0, 10), (10, 20), (20, 30), (30, 10_000))


def predictions(directory: str, texts: list[str], max_length: int) -> np.ndarray:
    model, tokenizer = load_saved_classifier(directory)
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out.append(model(**batch).logits.argmax(-1).numpy())
    return np.concatenate(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="labelled file with sentence, label")
    parser.add_argument("--reference", required=True, help="saved model to compare with")
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=DIR")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    table = read_table(args.data)
    texts, labels = list(table["sentence"]), np.array(table["label"], dtype=int)
    words = np.array([len(text.split()) for text in texts])
    named = dict(item.split("=", 1) for item in args.models)
    predicted = {"reference": predictions(args.reference, texts, args.max_length)}
    predicted.update({name: predictions(d, texts, args.max_length) for name, d in named.items()})
    result = {"buckets": [], "agreement_with_reference": {}}
    for low, high in BUCKETS:
        chosen = (words >= low) & (words < high)
        accuracy = {n: round(100 * float((p[chosen] == labels[chosen]).mean()), 1)
                    for n, p in predicted.items()}  # fmt: skip
        result["buckets"].append({"words": [low, high], "n": int(chosen.sum()), **accuracy})
    for name, values in predicted.items():
        agreement = 100 * float((values == predicted["reference"]).mean())
        result["agreement_with_reference"][name] = round(agreement, 1)
    names = list(predicted)
    lines = ["| words | n | " + " | ".join(names) + " |", "| --- " * (len(names) + 2) + "|"]
    for row in result["buckets"]:
        low, high = row["words"]
        span = f"{low}-{high - 1}" if high < 10_000 else f">= {low}"
        lines.append(f"| {span} | {row['n']} | " + " | ".join(f"{row[n]}" for n in names) + " |")
    agreement = result["agreement_with_reference"]
    cells = " | ".join(f"{agreement[n]}" for n in names)
    lines.append(f"| agreement with reference | | {cells} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "breakdown.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
