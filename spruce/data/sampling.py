"""Seeded, stratified selection of the few labelled examples a limited-data run may use."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spruce.errors import SpruceError


def stratified_sample(
    labels: Sequence[int],
    *,
    max_samples: int | None = None,
    shots_per_class: int | None = None,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Split row indices into (chosen, remainder), keeping class proportions.

    ``max_samples`` draws N rows in proportion to class frequency (largest remainder,
    every class represented when N allows); ``shots_per_class`` draws K rows of every
    class. Both deterministic in ``seed``. The remainder is what later stages may use
    as unlabelled text.
    """
    if max_samples is not None and shots_per_class is not None:
        raise SpruceError(
            "--max-train-samples and --shots-per-class cannot be combined", "pass only one of them"
        )
    for size in (max_samples, shots_per_class):
        # A negative quota would never be filled: the balancing loop below would not end.
        if size is not None and size < 1:
            raise SpruceError(
                f"a sample size of {size} was asked for",
                "ask for at least 1 example (or class shot)",
            )
    labels_array = np.asarray(labels, dtype=np.int64)
    total = len(labels_array)
    if (max_samples is None and shots_per_class is None) or total == 0:
        return list(range(total)), []
    rng = np.random.default_rng(seed)
    classes = np.unique(labels_array)
    by_class = {int(c): rng.permutation(np.flatnonzero(labels_array == c)) for c in classes}
    if shots_per_class is not None:
        quota = {}
        for c, rows in by_class.items():
            if len(rows) < shots_per_class:
                name = label_names[c] if label_names else str(c)
                raise SpruceError(
                    f"--shots-per-class {shots_per_class}: class '{name}' has only {len(rows)} "
                    "training examples",
                    f"use --shots-per-class {len(rows)} or less",
                )
            quota[c] = shots_per_class
    else:
        assert max_samples is not None
        if max_samples >= total:
            return list(range(total)), []
        quota = _proportional_quota({c: len(rows) for c, rows in by_class.items()}, max_samples)
    chosen = np.sort(np.concatenate([by_class[c][: quota[c]] for c in by_class]))
    mask = np.ones(total, dtype=bool)
    mask[chosen] = False
    return chosen.tolist(), np.flatnonzero(mask).tolist()


def _proportional_quota(counts: dict[int, int], n: int) -> dict[int, int]:
    total = sum(counts.values())
    exact = {c: n * k / total for c, k in counts.items()}
    quota = {c: int(v) for c, v in exact.items()}
    # A rare class would round to zero; with N >= number of classes every class gets one.
    if n >= len(counts):
        for c in quota:
            quota[c] = max(quota[c], 1)
    leftover = n - sum(quota.values())
    by_remainder = sorted(counts, key=lambda c: (exact[c] - int(exact[c]), -c), reverse=True)
    while leftover != 0:
        for c in by_remainder if leftover > 0 else reversed(by_remainder):
            if leftover > 0 and quota[c] < counts[c]:
                quota[c] += 1
                leftover -= 1
            elif leftover < 0 and quota[c] > 1:
                quota[c] -= 1
                leftover += 1
            if leftover == 0:
                break
    return quota
