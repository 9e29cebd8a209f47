"""PNG figures that sit beside a run's report.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def plot_learning_curve(
    losses: Sequence[tuple[int, float]],
    evaluations: Sequence[dict[str, float]],
    metric: str,
    path: Path,
    title: str = "",
) -> None:
    """Training loss (raw and smoothed) and the validation metric against the step.

    ``evaluations`` are the trainer's records (``{"step": ..., metric: ...}``)."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    if losses:
        steps, values = zip(*losses, strict=True)
        ax_loss.plot(steps, values, color="tab:blue", alpha=0.3, lw=1, label="batch")
        window = max(1, len(values) // 20)
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1])
            / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        ax_loss.plot(steps, smooth, color="tab:blue", lw=2, label=f"mean of {window}")
        ax_loss.legend()
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    if evaluations:
        steps = [e["step"] for e in evaluations]
        values = [e[metric] for e in evaluations]
        ax_metric.plot(steps, values, marker="o", color="tab:green")
        best = max(range(len(values)), key=values.__getitem__)
        ax_metric.scatter(
            [steps[best]],
            [values[best]],
            s=120,
            facecolors="none",
            edgecolors="black",
            label=f"best {values[best]:.4f}",
        )
        ax_metric.legend()
    ax_metric.set(xlabel="step", ylabel=f"validation {metric}", title=metric)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
