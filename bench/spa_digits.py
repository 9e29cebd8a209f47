"""CNN Structured Pruning Adapters against fine-pruning on the handwritten digits (issue: SPAs).

EfficientNet-Lite0 (shipped ImageNet weights) on scikit-learn's digits upsampled to 32x32
RGB (``examples/digits/prepare.py``; written on first use), 300 stratified labelled
training images, the 450-image test split. Each of the four channel criteria (weight,
gradient, taylor, lrp) is run with SPLoRA (rank 8, frozen base and BatchNorm) and with
fine-pruning (every weight learns), at 70% of the prunable parameters, seed 0:

* dense warm-up 2 epochs, then 3 rounds of score -> mask -> 1 epoch, then 3 final epochs
  (10 steps of batch 32 per epoch, 70 steps in all), AdamW lr 1e-3;
* data criteria score on 8 batches; about 1-2 minutes per run on 2 CPU cores.

Resumable: a run whose report.json exists is skipped, so an interrupted sweep continues
where it stopped; the markdown table goes to ``OUT_ROOT/README.md`` and stdout. Latency
is measured inside each run (median of ``--latency-repeats``, batch 1 and 32): run the
sweep alone, or treat the timings as rough. ``--max-steps N`` caps every training phase
for a quick check and writes to a separate ``OUT_ROOT-max-steps-N`` folder, so it never
poisons the real sweep.

    python bench/spa_digits.py                      # run what is missing, print the table
    python bench/spa_digits.py --only splora-lrp --max-steps 2
    python bench/spa_digits.py --table-only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CRITERIA = ("weight", "gradient", "taylor", "lrp")
RUNS = {f"{mode}-{c}": (mode, c) for mode in ("splora", "fine-prune") for c in CRITERIA}
SETTINGS = {
    "image_size": 32,
    "max_train_samples": 300,
    "seed": 0,
    "dense_epochs": 2,
    "epochs_per_round": 1,
    "rounds": 3,
    "epochs": 3,
    "batch_size": 32,
    "lr": 1e-3,
    "target_sparsity": 0.7,
    "rank": 8,
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


def run(name: str, data: Path, out_root: Path, args: argparse.Namespace) -> None:
    from spruce.vision.adapt import CNNAdaptConfig, run_cnn_adapt

    mode, criterion = RUNS[name]
    config = CNNAdaptConfig(
        train=data / "train.npz",
        test=data / "test.npz",
        out=out_root / name,
        criterion=criterion,
        adapter="splora",
        fine_prune=mode == "fine-prune",
        max_steps=args.max_steps,
        latency_repeats=args.latency_repeats,
        threads=args.threads,
        **SETTINGS,
    )
    run_cnn_adapt(config)


def table(out_root: Path) -> str:
    lines = [
        "| run | test accuracy | sparsity | params (fused / dense) | learned params "
        "| task file | latency b1 dense / fused | latency b32 dense / fused | FLOPs fused/dense "
        "| wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in RUNS:
        path = out_root / name / "report.json"
        if not path.exists():
            lines.append(f"| {name} | (not run yet) | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        lat, flops = r["latency"], r["flops"]
        lines.append(
            f"| {name} | {r['metrics']['test']['accuracy']:.4f} "
            f"| {r['sparsity']['achieved']:.3f} "
            f"| {r['params']['total'] / 1e6:.2f}M / {r['params']['dense'] / 1e6:.2f}M "
            f"| {r['learned_params']:,} | {r['task_file_bytes'] / 1024:.0f} KiB "
            f"| {lat['batch_1']['dense']:.1f} / {lat['batch_1']['fused']:.1f} ms "
            f"| {lat['batch_32']['dense']:.1f} / {lat['batch_32']['fused']:.1f} ms "
            f"| {flops['fused'] / flops['dense']:.3f} | {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=Path("runs/bench/spa_digits"))
    parser.add_argument("--data", type=Path, default=Path("runs/digits-data"))
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="subset of runs")
    parser.add_argument("--max-steps", type=int, default=None, help="cap per phase (checks)")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    out_root = args.out_root
    if args.max_steps is not None:
        out_root = out_root.with_name(f"{out_root.name}-max-steps-{args.max_steps}")
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
