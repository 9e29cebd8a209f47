"""CNN Structured Pruning Adapters against fine-pruning on the handwritten digits (issue: SPAs).

EfficientNet-Lite0 (shipped ImageNet weights) on scikit-learn's digits upsampled to 32x32
RGB (``examples/digits/prepare.py``; written on first use). 300 of its 1,347 training
images are held out as a validation split; 300 stratified labelled images of the rest
train, the 450-image test split scores. Each of the four channel criteria (weight,
gradient, taylor, lrp) is run with SPLoRA (rank 8 and 32, frozen base; BatchNorm
statistics the task's own) and with fine-pruning (every weight learns), at 70% of the
prunable parameters, seed 0, for each learning rate of its mode:

* dense warm-up 2 epochs, then 3 rounds of score -> mask -> 1 epoch, then 6 final epochs
  (10 steps of batch 32 per epoch, 100 steps in all), AdamW;
* data criteria score on 8 batches; about 1-2 minutes per run on 2 CPU cores.

Each mode's learning rate is the one with the best validation accuracy averaged over the
four criteria (adapters take larger steps than full fine-tuning, as in the SST-2 grids);
the main table holds its runs' test accuracy. Resumable: a run whose report.json exists
is skipped, so an interrupted sweep continues where it stopped; the markdown tables go to
``OUT_ROOT/README.md`` and stdout. ``--latency`` times each run's dense and fused models
(median of ``--latency-repeats``, batch 1 and 32): run the sweep alone then. ``--max-steps
N`` caps every training phase for a quick check and writes to a separate
``OUT_ROOT-max-steps-N`` folder, so it never poisons the real sweep; ``--target-sparsity
X`` likewise writes to ``OUT_ROOT-sparsity-X`` (0: how far each mode gets without pruning).

    python bench/spa_digits.py                      # run what is missing, print the tables
    python bench/spa_digits.py --only splora-lrp-lr0.01 --max-steps 2
    python bench/spa_digits.py --table-only
    python bench/spa_digits.py --target-sparsity 0 --only splora-weight-lr0.003 \\
        splora-r32-weight-lr0.003 fine-prune-weight-lr0.003
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CRITERIA = ("weight", "gradient", "taylor", "lrp")
# Mode -> its settings and the learning rates tried (rank 32 after rank 8 had shown 3e-2
# to diverge).
MODES = {"splora": {"rank": 8}, "splora-r32": {"rank": 32}, "fine-prune": {"fine_prune": True}}
LEARNING_RATES = {
    "splora": (3e-3, 1e-2, 3e-2),
    "splora-r32": (3e-3, 1e-2),
    "fine-prune": (1e-3, 3e-3, 1e-2),
}
RUNS = {
    f"{mode}-{c}-lr{lr:g}": (mode, c, lr)
    for mode, rates in LEARNING_RATES.items()
    for lr in rates
    for c in CRITERIA
}
VALIDATION_IMAGES = 300
SETTINGS = {
    "image_size": 32,
    "max_train_samples": 300,
    "seed": 0,
    "dense_epochs": 2,
    "epochs_per_round": 1,
    "rounds": 3,
    "epochs": 6,
    "batch_size": 32,
    "target_sparsity": 0.7,
    "score_batches": 8,
}


def prepare_data(folder: Path) -> Path:
    """The 32x32 digits split, written once by the example's own script."""
    if not (folder / "train.npz").exists():
        path = REPO / "examples/digits/prepare.py"
        spec = importlib.util.spec_from_file_location("digits_prepare", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.prepare_digits(folder, size=SETTINGS["image_size"], overwrite=True)
    return folder


def tuning_split(folder: Path) -> Path:
    """``folder/tuning/{train,validation}.npz``: the training images less a stratified
    validation split of :data:`VALIDATION_IMAGES` (for choosing each mode's learning rate
    without looking at the test split)."""
    from sklearn.model_selection import train_test_split

    target = folder / "tuning"
    if (target / "validation.npz").exists():
        return target
    with np.load(folder / "train.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    rows = np.arange(len(arrays["labels"]))
    train_rows, validation_rows = train_test_split(
        rows, test_size=VALIDATION_IMAGES, stratify=arrays["labels"], random_state=0
    )
    target.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("train", train_rows), ("validation", validation_rows)):
        chosen = np.sort(chosen)
        temp = target / f"{split}.tmp.npz"
        np.savez_compressed(
            temp, images=arrays["images"][chosen], labels=arrays["labels"][chosen],
            label_names=arrays["label_names"],
        )  # fmt: skip
        temp.replace(target / f"{split}.npz")  # validation last: its presence marks done
    return target


def run(name: str, data: Path, out_root: Path, args: argparse.Namespace) -> None:
    from spruce.pipelines.adapt_image import CNNAdaptConfig, run_cnn_adapt

    mode, criterion, lr = RUNS[name]
    tuning = tuning_split(data)
    sparsity = {} if args.target_sparsity is None else {"target_sparsity": args.target_sparsity}
    config = CNNAdaptConfig(
        train=tuning / "train.npz",
        validation=tuning / "validation.npz",
        test=data / "test.npz",
        out=out_root / name,
        criterion=criterion,
        adapter="splora",
        lr=lr,
        max_steps=args.max_steps,
        measure_latency=args.latency,
        latency_repeats=args.latency_repeats,
        threads=args.threads,
        **{**SETTINGS, **MODES[mode], **sparsity},
    )
    run_cnn_adapt(config)


def _reports(out_root: Path) -> dict[str, dict]:
    return {
        name: json.loads((out_root / name / "report.json").read_text())
        for name in RUNS
        if (out_root / name / "report.json").exists()
    }


def chosen_rates(reports: dict[str, dict]) -> dict[str, float]:
    """Per mode, the learning rate with the best mean validation accuracy over the
    criteria (among rates whose four runs are all done)."""
    chosen = {}
    for mode, rates in LEARNING_RATES.items():
        means = {}
        for lr in rates:
            runs = [reports.get(f"{mode}-{c}-lr{lr:g}") for c in CRITERIA]
            if all(runs):
                means[lr] = statistics.mean(r["metrics"]["validation"]["accuracy"] for r in runs)
        if means:
            chosen[mode] = max(means, key=means.get)
    return chosen


def _latency(r: dict, batch: int) -> str:
    if "latency" not in r:
        return "-"
    lat = r["latency"][f"batch_{batch}"]
    return f"{lat['dense']:.1f} / {lat['fused']:.1f} ms"


def table(out_root: Path) -> str:
    reports = _reports(out_root)
    lines = [
        "Validation accuracy by learning rate (mean over the four criteria; per criterion):",
        "",
        "| mode | learning rate | mean | " + " | ".join(CRITERIA) + " |",
        "| --- | ---: | ---: |" + " ---: |" * len(CRITERIA),
    ]
    for mode, rates in LEARNING_RATES.items():
        for lr in rates:
            accs = [reports.get(f"{mode}-{c}-lr{lr:g}") for c in CRITERIA]
            cells = [f"{r['metrics']['validation']['accuracy']:.3f}" if r else "-" for r in accs]
            done = [r["metrics"]["validation"]["accuracy"] for r in accs if r]
            mean = f"{statistics.mean(done):.3f}" if len(done) == len(CRITERIA) else "-"
            lines.append(f"| {mode} | {lr:g} | {mean} | " + " | ".join(cells) + " |")
    chosen = chosen_rates(reports)
    lines += [
        "",
        "Test accuracy at each mode's chosen learning rate:",
        "",
        "| run | lr | test accuracy | sparsity | params (fused / dense) | learned params "
        "| task file | latency b1 dense / fused | latency b32 dense / fused | FLOPs fused/dense "
        "| wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in LEARNING_RATES:
        for c in CRITERIA:
            lr = chosen.get(mode)
            r = reports.get(f"{mode}-{c}-lr{lr:g}") if lr else None
            if r is None:
                lines.append(f"| {mode}-{c} | | (not run yet) | | | | | | | | |")
                continue
            flops = r["flops"]
            lines.append(
                f"| {mode}-{c} | {lr:g} | {r['metrics']['test']['accuracy']:.4f} "
                f"| {r['sparsity']['achieved']:.3f} "
                f"| {r['params']['total'] / 1e6:.2f}M / {r['params']['dense'] / 1e6:.2f}M "
                f"| {r['learned_params']:,} | {r['task_file_bytes'] / 1024:.0f} KiB "
                f"| {_latency(r, 1)} | {_latency(r, 32)} "
                f"| {flops['fused'] / flops['dense']:.3f} | {r['wall_time_s']:.0f} s |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=Path("runs/bench/spa_digits"))
    parser.add_argument("--data", type=Path, default=Path("runs/digits-data"))
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="subset of runs")
    parser.add_argument("--max-steps", type=int, default=None, help="cap per phase (checks)")
    parser.add_argument(
        "--target-sparsity", type=float, default=None,
        help="other than 0.7: written to OUT_ROOT-sparsity-X (0: what adapting alone reaches)",
    )  # fmt: skip
    parser.add_argument("--latency", action="store_true", help="time dense and fused models")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    out_root = args.out_root
    if args.max_steps is not None:
        out_root = out_root.with_name(f"{out_root.name}-max-steps-{args.max_steps}")
    if args.target_sparsity is not None:
        out_root = out_root.with_name(f"{out_root.name}-sparsity-{args.target_sparsity:g}")
    if not args.table_only:
        data = prepare_data(args.data)
        for name in args.only or RUNS:
            if (out_root / name / "report.json").exists():
                print(f"skip {name}: already done", flush=True)
                continue
            print(f"run {name} -> {out_root / name}", flush=True)
            run(name, data, out_root, args)
    text = table(out_root)
    if out_root.is_dir():
        (out_root / "README.md").write_text(
            f"# SPLoRA vs fine-pruning on digits\n\n{text}\n", encoding="utf-8"
        )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
