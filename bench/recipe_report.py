"""One Markdown row per `spruce prune` report: accuracy beside the dense teacher's, how
closely the pruning phase followed its schedule, and where the wall time went.

    python bench/recipe_report.py results/grid/sst2-recipe/runs/*/report.json

Columns: test (or validation) accuracy; the dense model's (the recipe's teacher, when
the run had one); the exact encoder sparsity; the worst |expected - target| sparsity from
20% of the ramp on, and the expected sparsity when the ramp ended and when the phase
ended (from ``phases.prune_trajectory``); seconds in the teacher, pruning and final
phases, and the whole run's wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def tracking(report: dict[str, Any]) -> tuple[str, str, str]:
    """(worst error after 20% of the ramp, expected at the ramp's end, at the end)."""
    trajectory = report["phases"].get("prune_trajectory")
    if not trajectory:
        return "", "", ""
    targets, expected = trajectory["target"], trajectory["sparsity"]
    final_target = max(targets)
    ramp_end = next(i for i, t in enumerate(targets) if t >= final_target - 1e-9)
    ramp_steps = trajectory["step"][ramp_end]
    worst = max(
        abs(s - t)
        for step, s, t in zip(trajectory["step"], expected, targets, strict=True)
        if step >= 0.2 * ramp_steps
    )
    return f"{worst:.3f}", f"{expected[ramp_end]:.3f}", f"{expected[-1]:.3f}"


def seconds(report: dict[str, Any], phase: str) -> str:
    value = report["phases"].get(phase)
    if isinstance(value, list):
        return f"{sum(p['train_time_s'] for p in value):.0f}"
    return f"{value['train_time_s']:.0f}" if value else ""


def row(path: Path) -> str:
    report = json.loads(path.read_text())
    metric = report.get("metric", "accuracy")
    dense = (report.get("dense_metrics") or {}).get(report["metrics_split"], {})
    cells = [
        path.parent.name,
        f"{100 * report['metrics'][metric]:.2f}",
        f"{100 * dense[metric]:.2f}" if metric in dense else "",
        f"{report['sparsity']['encoder']:.3f}",
        *tracking(report),
        seconds(report, "teacher"),
        seconds(report, "prune"),
        seconds(report, "final"),
        f"{report['wall_time_s']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| run | accuracy | dense | encoder sparsity | worst tracking error | expected at "
        "ramp end | at phase end | teacher s | prune s | final s | wall s |"
    )
    print("| --- |" + " ---: |" * 10)
    for path in args.reports:
        if "sparsity" in json.loads(path.read_text()):  # prune reports only
            print(row(path))


if __name__ == "__main__":
    main()
