"""Pruning sweep on SST-2 / RTE with the default MiniLM (issue 3 benchmarks, docs/results.md).

Resumable: a run whose report.json exists is skipped, and one killed mid-way continues from
its checkpoint (`--resume`). Nothing else should train beside it.

    python bench/prune_sweep.py --grid sparsity     # SST-2, 1 seed, 60/80/90/95%, 4 variants
    python bench/prune_sweep.py --grid seeds        # 90%, 3 seeds, SST-2 and RTE
    python bench/prune_sweep.py --grid all          # both, most informative runs first
    python bench/prune_sweep.py --grid sparsity --table-only

Two workers, one thread each, share the 2 cores better than one worker with two threads
(small matrices scale poorly across threads): run ``--shard 0/2`` and ``--shard 1/2`` side
by side with ``OMP_NUM_THREADS=1``. Shards split the run list, so no run is done twice.

Every run: 1,000 labelled examples, AdamW lr 1e-4, batch 32. SST-2 at 64 tokens (its
phrases are short): pruning phase 10 epochs, final fine-tune 5. RTE at 128 tokens (sentence
pairs, about 4x the tokens of SST-2): pruning phase 5 epochs, final fine-tune 3, so that a
run takes about 20 minutes with one thread instead of an hour;
validation on 1,000 stratified SST-2 validation phrases (RTE: none; its validation file
is the test split). Runs skip their own latency measurement (``--no-latency``): the sweep
is meant to run beside other work, which would spoil timings. Time the finished shapes
alone afterwards with ``bench/latency_shapes.py runs/bench/prune/*/report.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path("../shared/data")
TASKS = {
    "sst2": ["--train", f"{DATA}/sst2/train.tsv", "--validation", f"{DATA}/sst2/validation.tsv",
             "--test", f"{DATA}/sst2/test.tsv", "--max-eval-samples", "1000",
             "--max-length", "64"],
    "rte": ["--train", f"{DATA}/rte/train.tsv", "--test", f"{DATA}/rte/validation.tsv",
            "--max-length", "128"],
}  # fmt: skip
PHASE_EPOCHS = {"sst2": [], "rte": ["--prune-epochs", "5", "--final-epochs", "3"]}
VARIANTS = {
    "l0": ["--method", "l0"],
    "l0-distill": ["--method", "l0", "--teacher", "{teacher}"],
    # Iterative baselines: 4 rounds of score -> prune -> fine-tune over the pruning epochs.
    "magnitude": ["--method", "magnitude", "--prune-rounds", "4"],
    "taylor": ["--method", "taylor", "--prune-rounds", "4"],
}


def runs(grid: str) -> list[tuple[str, str, str, float, int]]:
    """(name, task, variant, sparsity, seed) of every run in ``grid``."""
    if grid == "all":
        # 90% (every comparison uses it), then the seeds, then the other sparsities.
        ordered = sorted(runs("sparsity"), key=lambda run: run[3] != 0.9)
        ordered[4:4] = [run for run in runs("seeds") if run not in ordered]
        return ordered
    if grid == "sparsity":
        # 90% first: the sparsity every other comparison in the issue uses.
        return [(f"sst2-{v}-{int(s * 100)}-s0", "sst2", v, s, 0)
                for s in (0.9, 0.6, 0.8, 0.95) for v in VARIANTS]  # fmt: skip
    return [(f"{t}-{v}-90-s{seed}", t, v, 0.9, seed)
            for t in ("sst2", "rte") for v in ("l0-distill", "magnitude")
            for seed in (0, 1, 2)]  # fmt: skip


def teacher_command(task: str, seed: int, root: Path) -> list[str]:
    return ["spruce", "finetune", *TASKS[task], "--max-train-samples", "1000", "--seed",
            str(seed), "--out", str(root / "teachers" / f"{task}-s{seed}")]  # fmt: skip


def prune_command(run: tuple, root: Path) -> list[str]:
    name, task, variant, sparsity, seed = run
    teacher = str(root / "teachers" / f"{task}-s{seed}")
    options = [part.format(teacher=teacher) for part in VARIANTS[variant]]
    return ["spruce", "prune", *TASKS[task], *PHASE_EPOCHS[task], *options,
            "--max-train-samples", "1000",
            "--target-sparsity", str(sparsity), "--seed", str(seed), "--no-latency",
            "--out", str(root / name)]  # fmt: skip


def execute(command: list[str], done: Path) -> None:
    if done.exists():
        print(f"skip {done.parent.name}: already done", flush=True)
        return
    if Path(f"{done.parent}.checkpoint").is_dir():
        command = [*command, "--resume"]  # a killed run continues where it stopped
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def table(grid: str, root: Path, latency: dict[str, dict] | None = None) -> str:
    """Markdown: one row per run; the seed grid adds mean +- std, the sparsity grid a pivot.

    ``latency`` (from :func:`median_latency`) maps run names to the measured batch-32
    speed-up of each run's shape, timed alone after the sweep.
    """
    latency = latency or {}
    lines = ["| run | accuracy | encoder sparsity | params | FLOPs speed-up | measured b32 "
             "speed-up | b32 / FLOPs (range) | hidden | heads per layer | FFN per layer |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]  # fmt: skip
    groups: dict[tuple, list[float]] = {}
    for run in runs(grid):
        path = root / run[0] / "report.json"
        if not path.exists():
            lines.append(f"| {run[0]} | (not run yet) | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        groups.setdefault(run[1:4], []).append(r["metrics"]["accuracy"])
        layers = r["structure"]["layers"]
        timed = latency.get(run[0])
        measured = "(not timed) | "
        if timed:
            spread = timed["ratios_b32"]
            measured = f"{timed['b32_speedup']:.2f}x | {timed['ratio_b32']:.2f}"
            if len(spread) > 1:
                measured += f" ({min(spread):.2f}-{max(spread):.2f})"
        lines.append(
            f"| {run[0]} | {r['metrics']['accuracy']:.4f} | {r['sparsity']['encoder']:.3f} | "
            f"{r['params']['total']:,} | {r['flops']['speedup']:.2f}x | {measured} | "
            f"{r['structure']['hidden']} | {' '.join(str(x['heads']) for x in layers)} | "
            f"{' '.join(str(x['ffn']) for x in layers)} |"
        )
    if grid == "sparsity":
        lines += ["", *pivot(groups, root)]
    else:
        lines += ["", "| task / variant | accuracy mean +- std (n) |", "| --- | ---: |"]
        for (task, variant, _), values in groups.items():
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(f"| {task} {variant} | {statistics.mean(values):.4f} +- {spread:.4f}"
                         f" ({len(values)}) |")  # fmt: skip
    return "\n".join(lines)


def dense_accuracy(task: str, seed: int, root: Path) -> float | None:
    """Accuracy of the dense fine-tuned teacher, the reference every pruned run is read against."""
    path = root / "teachers" / f"{task}-s{seed}" / "report.json"
    return json.loads(path.read_text())["metrics"]["accuracy"] if path.exists() else None


def pivot(groups: dict[tuple, list[float]], root: Path) -> list[str]:
    """Accuracy by variant (rows) and sparsity (columns), with the dense model beside them."""
    sparsities = sorted({sparsity for _, _, sparsity in groups})
    dense = dense_accuracy("sst2", 0, root)
    lines = ["| variant | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
             "| --- |" + " ---: |" * len(sparsities)]  # fmt: skip
    for variant in VARIANTS:
        cells = [groups.get(("sst2", variant, s)) for s in sparsities]
        lines.append(f"| {variant} | " + " | ".join(
            f"{c[0]:.4f}" if c else "" for c in cells) + " |")  # fmt: skip
    if dense is not None:
        lines.append("| dense fine-tuned (0%) | " + " | ".join(
            f"{dense:.4f}" for _ in sparsities) + " |")  # fmt: skip
    return lines


def plot(root: Path, latency: dict[str, dict], out: Path) -> None:
    """Accuracy against sparsity per variant, and measured against FLOPs speed-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        points = []
        for name, _, run_variant, sparsity, _ in runs("sparsity"):
            path = root / name / "report.json"
            if run_variant == variant and path.exists():
                points.append((sparsity, json.loads(path.read_text())["metrics"]["accuracy"]))
        if points:
            left.plot(*zip(*sorted(points), strict=True), marker="o", label=variant)
    dense = dense_accuracy("sst2", 0, root)
    if dense is not None:
        left.axhline(dense, color="grey", linestyle="--", label="dense fine-tuned")
    left.set(xlabel="encoder sparsity", ylabel="SST-2 test accuracy",
             title="1,000 labelled examples, seed 0")  # fmt: skip
    left.legend()
    timed = [(row["flops_speedup"], row["b32_speedup"]) for name, row in latency.items()
             if (root / name / "report.json").exists()]  # fmt: skip
    if timed:
        flops, measured = zip(*timed, strict=True)
        top = max(flops) * 1.05
        right.scatter(flops, measured, label="pruned runs")
        right.plot([1, top], [1, top], color="grey", linestyle="--", label="= FLOPs speed-up")
        right.plot([1, top], [0.7, 0.7 * top], color="red", linestyle=":",
                   label="0.7 x FLOPs speed-up (target)")  # fmt: skip
        right.set(xlabel="FLOPs speed-up", ylabel="measured speed-up, batch 32, 128 tokens",
                  title="CPU, 2 threads")  # fmt: skip
        right.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def median_latency(paths: list[Path]) -> dict[str, dict]:
    """Per shape, the median over timing sessions of the measured and FLOPs speed-ups.

    On a shared 2-core machine one session's ratio moves by about 0.1 between sessions, so
    the docs quote the median of several.
    """
    sessions: dict[str, list[dict]] = {}
    loaded = {path: json.loads(path.read_text()) for path in paths}
    modes = {
        # Files written before --runtime existed say only whether they were compiled.
        path: data.get("runtime", "compiled" if data.get("compiled") else "eager")
        for path, data in loaded.items()
    }
    if len(set(modes.values())) > 1:
        sys.exit(
            "--latency mixes timings of different runtimes; combine each kind separately: "
            + ", ".join(f"{path} ({mode})" for path, mode in modes.items())
        )
    for data in loaded.values():
        for row in data["rows"]:
            sessions.setdefault(row["structure"], []).append(row)
    return {
        name: {
            "flops_speedup": rows[0]["flops_speedup"],
            "b32_speedup": statistics.median(row["b32_speedup"] for row in rows),
            "ratio_b32": statistics.median(row["ratio_b32"] for row in rows),
            "ratios_b32": [row["ratio_b32"] for row in rows],
        }
        for name, rows in sessions.items()
    }


def shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard takes K/N with 0 <= K < N, got {text!r}")
    return int(index), int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("sparsity", "seeds", "all"), required=True)
    parser.add_argument("--root", type=Path, default=Path("runs/bench/prune"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--latency",
        type=Path,
        nargs="+",
        default=[],
        help="outputs of 'bench/latency_shapes.py --size-multiple 1 --json' (one per timing "
        "session) to add to the table; with several, the median speed-up of each shape",
    )
    parser.add_argument("--plot", type=Path, help="also write accuracy and speed-up plots here")
    parser.add_argument(
        "--shard",
        type=shard,
        default=(0, 1),
        metavar="K/N",
        help="run only every N-th run of the grid, starting at the K-th",
    )
    args = parser.parse_args()
    if not args.table_only:
        index, count = args.shard
        pending = [
            run for run in runs(args.grid) if not (args.root / run[0] / "report.json").exists()
        ]
        for run in pending[index::count]:
            if run[2] == "l0-distill":
                teacher = args.root / "teachers" / f"{run[1]}-s{run[4]}"
                execute(teacher_command(run[1], run[4], args.root), teacher / "report.json")
            execute(prune_command(run, args.root), args.root / run[0] / "report.json")
    latency = median_latency(args.latency)
    print(table(args.grid, args.root, latency))
    if args.plot:
        plot(args.root, latency, args.plot)


if __name__ == "__main__":
    sys.exit(main())
