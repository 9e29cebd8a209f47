"""``spruce adapt``: Structured Pruning Adapters -- a frozen base, a tiny pruned change per task."""

from __future__ import annotations

import argparse

from spruce import api
from spruce.cli import options
from spruce.pipelines.adapt import AdaptRun
from spruce.report.summary import summary

HELP = "structured pruning adapters: prune a frozen encoder or CNN per task, fuse, export"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("adapt", help=HELP, description=HELP)
    options.add_run_options(parser, AdaptRun, "adapt", skip=("data.unlabelled",))
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    run = options.run_from_args(AdaptRun, args)
    print(summary(api.adapt(run).report))
    print(f"wrote {run.out}")
    return 0
