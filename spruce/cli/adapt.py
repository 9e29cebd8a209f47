"""``spruce adapt``: Structured Pruning Adapters -- a frozen base, a tiny pruned change per task."""

from __future__ import annotations

import argparse

from spruce import api
from spruce.cli import options
from spruce.pipelines.adapt import AdaptRun, is_image_task

HELP = "structured pruning adapters: prune a frozen encoder or CNN per task, fuse, export"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("adapt", help=HELP, description=HELP)
    options.add_run_options(parser, AdaptRun, "adapt", skip=("data.unlabelled",))
    parser.set_defaults(handler=handle)


def _print_image_task(run: AdaptRun, report: dict) -> None:
    split = "test" if "test" in report["metrics"] else next(iter(report["metrics"]), None)
    accuracy = report["metrics"].get(split, {}).get("accuracy") if split else None
    shown = f"{split} accuracy {accuracy:.4f}; " if accuracy is not None else ""
    print(
        f"{report['model']} ({report['mode']}, {report['criterion']}): {shown}parameter "
        f"sparsity {report['sparsity']['achieved']:.1%}; learned "
        f"{report['learned_params']:,} numbers, task file {report['task_file_bytes']:,} bytes"
    )


def handle(args: argparse.Namespace) -> int:
    run = options.run_from_args(AdaptRun, args)
    report = api.adapt(run).report
    if is_image_task(run):
        _print_image_task(run, report)
        print(f"wrote {run.out}")
        return 0
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['task']} ({report['mode']}, {report['criterion']}): "
        f"{report['metrics_split']} {metrics}; encoder sparsity "
        f"{report['sparsity']['encoder']:.1%}; learned {report['learned_params']:,} numbers, "
        f"task file {report['task_file_bytes']:,} bytes (base {report['base_model_bytes']:,})"
    )
    print(f"wrote {run.out}")
    return 0
