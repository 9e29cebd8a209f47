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


# Trajectory columns that are not losses (the rest of a pruning trajectory's columns are).
_CONTROL_COLUMNS = (
    "step", "sparsity", "target", "soft_sparsity", "shift", "lambda1", "lambda2", "aux_w"
)  # fmt: skip


def plot_prune_phase(trajectory: dict[str, list], path: Path, title: str = "") -> None:
    """The pruning phase from a report's trajectory columns: expected against target
    sparsity (and the control: the shift or the multipliers), and every loss."""
    steps = trajectory.get("step", [])
    fig, (ax_size, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_size.plot(steps, trajectory.get("target", []), color="black", ls="--", label="target")
    ax_size.plot(steps, trajectory.get("sparsity", []), color="tab:red", label="expected")
    if "soft_sparsity" in trajectory:  # PDP: the soft masks' size beside the threshold's
        soft = _values(trajectory["soft_sparsity"])
        ax_size.plot(steps, soft, color="tab:orange", lw=1, label="soft masks")
    ax_size.set(xlabel="step", ylabel="encoder sparsity", title="sparsity", ylim=(0, 1))
    ax_size.legend(loc="upper left")
    control = [c for c in ("shift", "lambda1", "lambda2") if c in trajectory]
    if control:
        ax_control = ax_size.twinx()
        for name, color in zip(control, ("tab:gray", "tab:purple", "tab:olive"), strict=False):
            ax_control.plot(steps, _values(trajectory[name]), color=color, lw=1, label=name)
        ax_control.set_ylabel(" / ".join(control))
        ax_control.legend(loc="lower right")
    losses = {name: values for name, values in trajectory.items() if name not in _CONTROL_COLUMNS}
    for name, values in losses.items():
        ax_loss.plot(steps, _values(values), lw=1, label=name)
    ax_loss.set(xlabel="step", ylabel="loss", title="losses")
    if losses:
        ax_loss.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _values(column: Sequence[float | None]) -> list[float]:
    return [float("nan") if value is None else value for value in column]
