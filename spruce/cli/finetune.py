"""``spruce finetune``: the dense baseline (and the teacher of later pruning runs)."""

from __future__ import annotations

import argparse

from spruce import api
from spruce.cli import options
from spruce.pipelines import FinetuneRun

HELP = "fine-tune a dense encoder on a classification task"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help=HELP, description=HELP)
    options.add_run_options(parser, FinetuneRun, "finetune", skip=("data.unlabelled",))
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    run = options.run_from_args(FinetuneRun, args)
    report = api.finetune(run).report
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['task']}: {report['metrics_split']} {metrics} "
        f"({report['train_examples']} labelled examples, {report['wall_time_s']:.0f} s)"
    )
    print(f"wrote {run.out}/model, {run.out}/report.json, {run.out}/learning_curve.png")
    return 0
