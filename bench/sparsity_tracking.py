"""Does the expected sparsity follow its schedule? The two sparsity controls on gates of
all-MiniLM-L6-v2's shape, without the model (seconds on a CPU).

The gates alone stand in for a pruning phase: a synthetic task rewards keeping each unit
by a random importance (scaled by ``--pull``), so the control must fight the task's wish
to keep everything, as in a real run. Schedules: the demo's (96 steps, ramp over 48 to
0.8) and SST-2's (320 steps, ramp over 160 to 0.9). Printed per control and schedule: the
worst |expected - target| from 20% of the ramp on, the expected sparsity at the end of
the ramp and of the phase, and how well the kept units match the importances (mean
importance of kept against removed heads). Writes ``tracking.csv`` and ``tracking.png``
under ``--out``.

    python bench/sparsity_tracking.py --out results/sparsity-tracking
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from spruce.masks import EncoderGates, SparsityController, make_optimizers
from spruce.models.structure import EncoderShape

MINILM = EncoderShape(6, 384, 32, (12,) * 6, (1536,) * 6)
SCHEDULES = {"demo (96 steps, 0.8)": (96, 48, 0.8), "SST-2 (320 steps, 0.9)": (320, 160, 0.9)}


def run(control: str, steps: int, ramp: int, target: float, pull: float, seed: int) -> dict:
    torch.manual_seed(seed)
    gates = EncoderGates(MINILM)
    controller = SparsityController(target, warmup_steps=ramp, control=control)
    gate_optimizer, lambda_optimizer = make_optimizers(gates, controller)
    importance = {u: torch.rand_like(g.log_alpha) for u, g in gates.gates.items()}
    trace = []
    for step in range(steps):
        controller.place(gates, step)
        masks = gates()
        task = -pull * sum((value * importance[u]).mean() for u, value in masks.items())
        (task + controller.gate_penalty(gates, step)).backward()
        for optimizer in (gate_optimizer, lambda_optimizer):
            optimizer.step()
            optimizer.zero_grad()
        stats = controller.stats()
        trace.append((step, stats["expected_sparsity"], stats["target_sparsity"]))
    gates.eval()
    kept = gates.deterministic_masks(target_sparsity=target).head > 0
    return {
        "trace": trace,
        "worst_error": max(abs(s - t) for step, s, t in trace if step >= 0.2 * ramp),
        "at_ramp_end": trace[ramp - 1][1],
        "at_end": trace[-1][1],
        "kept_importance": float(importance["head"][kept].mean()),
        "removed_importance": float(importance["head"][~kept].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/sparsity-tracking"))
    parser.add_argument("--pull", type=float, default=0.5, help="strength of the task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(SCHEDULES), figsize=(11, 3.8))
    rows = []
    for ax, (name, (steps, ramp, target)) in zip(axes, SCHEDULES.items(), strict=True):
        for control, color in (("lagrangian", "tab:blue"), ("exact", "tab:red")):
            result = run(control, steps, ramp, target, args.pull, args.seed)
            steps_, expected, targets = zip(*result["trace"], strict=True)
            ax.plot(steps_, expected, color=color, label=f"expected ({control})")
            rows.append(
                {
                    "schedule": name,
                    "control": control,
                    **{k: round(v, 4) for k, v in result.items() if k != "trace"},
                }
            )
            print(rows[-1])
        ax.plot(steps_, targets, color="black", ls="--", label="target")
        ax.set(title=name, xlabel="step", ylabel="expected encoder sparsity", ylim=(0, 1))
        ax.legend()
    fig.suptitle("Sparsity control on MiniLM-shaped gates (synthetic task)")
    fig.tight_layout()
    fig.savefig(args.out / "tracking.png", dpi=110)
    with open(args.out / "tracking.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
