"""``spruce demo``: the embedded end-to-end example on the SpamAssassin corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from spruce.cli.parsing import fraction, positive_float, positive_int
from spruce.pipelines.demo import DemoSettings, format_table, run_demo

HELP = (
    "fine-tune MiniLM on 500 labelled SpamAssassin e-mails, prune it with the default "
    "recipe (distilling on the unlabelled rest) and with --recipe plain, and print the results"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    defaults = DemoSettings()
    parser.add_argument(
        "--out",
        type=Path,
        default=defaults.out,
        help=f"where to write the demo's runs (default: {defaults.out}, replaced)",
    )
    parser.add_argument(
        "--labelled", type=positive_int, default=defaults.labelled, help="labelled training e-mails"
    )
    parser.add_argument("--epochs", type=positive_float, default=defaults.epochs)
    parser.add_argument("--max-steps", type=positive_int, help="cap training steps (quick runs)")
    parser.add_argument("--max-length", type=positive_int, default=defaults.max_length)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", help="pre-trained encoder (default: embedded MiniLM-L6)")
    parser.add_argument("--cache-dir", type=Path, help="where the converted corpus is kept")
    parser.add_argument("--tarball", type=Path, help="a local npm tarball of the corpus")
    parser.add_argument(
        "--prune-sparsity",
        type=fraction,
        default=defaults.prune_sparsity,
        help="encoder sparsity of the pruned rows",
    )
    parser.add_argument("--no-prune", action="store_true", help="the dense row only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    summary = run_demo(
        DemoSettings(
            out=args.out,
            labelled=args.labelled,
            seed=args.seed,
            max_length=args.max_length,
            epochs=args.epochs,
            max_steps=args.max_steps,
            cache_dir=args.cache_dir,
            tarball=args.tarball,
            device=args.device,
            progress=not args.quiet,
            model=args.model,
            prune=not args.no_prune,
            prune_sparsity=args.prune_sparsity,
        )
    )
    print(format_table(summary))
    reports = ", ".join(
        f"{args.out}/{name}/report.json"
        for name in ("dense", "plain", "default")
        if (args.out / name / "report.json").exists()
    )
    print(f"details: {args.out}/summary.json, {reports}")
    return 0
