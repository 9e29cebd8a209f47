"""``spruce finetune``: the dense baseline (and the teacher of later pruning runs)."""

from __future__ import annotations

import argparse

from spruce.cli import options
from spruce.pipelines import FinetuneRun, run_finetune

HELP = "fine-tune a dense encoder on a classification task"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help=HELP, description=HELP)
    options.add_model_option(parser)
    options.add_data_options(parser)
    options.add_train_options(parser)
    options.add_output_options(parser)
    options.add_checkpoint_options(parser)
    options.add_runtime_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    report = run_finetune(
        FinetuneRun(
            data=options.data_config(args),
            train=options.train_config(args),
            model=args.model,
            max_length=args.max_length,
            **options.run_options(args),
        )
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['task']}: {report['metrics_split']} {metrics} "
        f"({report['train_examples']} labelled examples, {report['wall_time_s']:.0f} s)"
    )
    print(f"wrote {args.out}/model, {args.out}/report.json, {args.out}/learning_curve.png")
    return 0
