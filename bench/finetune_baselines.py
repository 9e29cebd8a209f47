"""Dense fine-tuning baselines on SST-2 and RTE with the default MiniLM (docs/results.md).

Resumable: a run whose report.json exists is skipped, so an interrupted sweep continues
where it stopped. Run one sweep at a time: two trainings on 2 cores slow each other 4-8x.

    python bench/finetune_baselines.py                # run what is missing, print the table
    python bench/finetune_baselines.py --table-only   # just the table
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path("../shared/data")

RUNS = {
    "sst2-1000": ["--train", f"{DATA}/sst2/train.tsv", "--validation",
                  f"{DATA}/sst2/validation.tsv", "--test", f"{DATA}/sst2/test.tsv",
                  "--max-train-samples", "1000", "--seed", "0"],
    "sst2-5000": ["--train", f"{DATA}/sst2/train.tsv", "--validation",
                  f"{DATA}/sst2/validation.tsv", "--test", f"{DATA}/sst2/test.tsv",
                  "--max-train-samples", "5000", "--seed", "0"],
    "rte-1000": ["--train", f"{DATA}/rte/train.tsv", "--test", f"{DATA}/rte/validation.tsv",
                 "--max-train-samples", "1000", "--seed", "0"],
}  # fmt: skip


def command(name: str, out_root: Path) -> list[str]:
    return ["spruce", "finetune", *RUNS[name], "--out", str(out_root / name)]


def table(out_root: Path) -> str:
    lines = [
        "| run | labelled | test split | accuracy | macro-F1 | MCC | best step / steps "
        "| wall time |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in RUNS:
        path = out_root / name / "report.json"
        if not path.exists():
            lines.append(f"| {name} | (not run yet) | | | | | | |")
            continue
        r = json.loads(path.read_text())
        m = r["metrics"]
        lines.append(
            f"| {name} | {r['train_examples']} | {r['metrics_split']} | {m['accuracy']:.4f} | "
            f"{m['macro_f1']:.4f} | {m['mcc']:.4f} | {r['best_step'] or 'last'} / {r['steps']} | "
            f"{r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=Path("runs/bench/finetune"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="subset of runs")
    args = parser.parse_args()
    if not args.table_only:
        for name in args.only or RUNS:
            if (args.out_root / name / "report.json").exists():
                print(f"skip {name}: already done", flush=True)
                continue
            cmd = command(name, args.out_root)
            print("$", shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
    print(table(args.out_root))


if __name__ == "__main__":
    sys.exit(main())
