"""Classification metrics by name, so a task picks its primary one with ``--metric``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "macro_f1": lambda y, p: f1_score(y, p, average="macro", zero_division=0),
    "mcc": lambda y, p: matthews_corrcoef(y, p),
}


def compute_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Every metric in :data:`METRICS`, rounded to what a report can meaningfully show."""
    y, p = np.asarray(labels), np.asarray(predictions)
    with warnings.catch_warnings():
        # A one-class evaluation subset (e.g. only hard ham) is legitimate: MCC is 0 there.
        warnings.simplefilter("ignore", UserWarning)
        return {name: round(float(fn(y, p)), 6) for name, fn in METRICS.items()}
