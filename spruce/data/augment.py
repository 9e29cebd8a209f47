"""Label-free augmentation of unlabelled text for distillation.

``concat`` joins each unlabelled text with another one drawn by a seeded permutation.
Limited-data corpora are often short (SST-2's training rows are parse-tree phrases of 9
words on average; its test rows are sentences of 20), and a student distilled on short
inputs alone imitates its teacher worst where the task is hardest: on long inputs whose
parts disagree. The teacher labels the joined text itself, so no label is invented.

``longest`` selection keeps the longest texts a run has steps to read: a short run reads a
few thousand of its unlabelled rows once, and reading the long ones shows the student the
teacher's behaviour where it differs most (docs/results.md, "The current default:
distilling on the longest texts").
"""

from __future__ import annotations

import datasets
import numpy as np

from spruce.errors import SpruceError

AUGMENTS = ("none", "concat")
SELECTS = ("all", "longest")


def augment_texts(texts: datasets.Dataset, augment: str, seed: int) -> datasets.Dataset:
    """``texts`` (canonical ``text_a`` rows) augmented by ``augment``; as many rows."""
    if augment == "none":
        return texts
    if augment != "concat":
        raise SpruceError(
            f"--aux-augment {augment} is not known", f"use one of {', '.join(AUGMENTS)}"
        )
    return concatenated(texts, seed)


def check_augment(augment: str, texts: datasets.Dataset) -> None:
    """Fail early (before any training) where ``augment`` cannot apply to ``texts``."""
    if augment == "concat" and "text_b" in texts.column_names:
        raise SpruceError(
            "--aux-augment concat joins single texts, and this task's rows are sentence pairs",
            "leave --aux-augment at none for sentence-pair tasks",
        )


def concatenated(texts: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Row i becomes ``text_a[i] + " " + text_a[partner[i]]``, partners a seeded
    permutation without fixed points (a text is never joined with itself)."""
    check_augment("concat", texts)
    first = texts["text_a"]
    if len(first) < 2:
        return texts
    order = np.random.default_rng(seed).permutation(len(first))
    # Each text's partner is the next one in a random cycle: a derangement by construction.
    partner = np.empty_like(order)
    partner[order] = np.roll(order, -1)
    joined = [f"{first[i]} {first[int(partner[i])]}" for i in range(len(first))]
    return datasets.Dataset.from_dict({"text_a": joined})


def select_texts(texts: datasets.Dataset, select: str, rows: int | None) -> datasets.Dataset:
    """``texts`` as ``select`` says: ``all``, or the ``rows`` longest in words (a pair
    counts both texts; ties kept in file order), in file order. ``rows`` None or at
    least ``len(texts)`` keeps every text."""
    if select not in SELECTS:
        raise SpruceError(f"--aux-select {select} is not known", f"use one of {', '.join(SELECTS)}")
    if select == "all" or rows is None or rows >= len(texts):
        return texts
    words = np.array([len(text.split()) for text in texts["text_a"]])
    if "text_b" in texts.column_names:
        words += np.array([len(text.split()) for text in texts["text_b"]])
    longest = np.argsort(-words, kind="stable")[: max(rows, 1)]
    return texts.select(np.sort(longest).tolist())
