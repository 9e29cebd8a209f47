"""``spruce finetune``: the dense baseline (and the teacher of later pruning runs)."""

from __future__ import annotations

import argparse

from spruce import api
from spruce.cli import options
from spruce.pipelines import FinetuneRun
from spruce.report.summary import summary

HELP = "fine-tune a dense encoder on a classification task"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("finetune", help=HELP, description=HELP)
    options.add_run_options(parser, FinetuneRun, "finetune", skip=("data.unlabelled",))
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    run = options.run_from_args(FinetuneRun, args)
    print(summary(api.finetune(run).report))
    print(f"wrote {run.out}/model, {run.out}/report.json, {run.out}/learning_curve.png")
    return 0
