"""``spruce prune``: a small, fast model from a pre-trained or fine-tuned one."""

from __future__ import annotations

import argparse
import sys

from spruce import api
from spruce.cli import options
from spruce.cli.parsing import name_list, positive_float
from spruce.pipelines.prune import PruneRun
from spruce.report.summary import summary
from spruce.transfer.config import DEFAULT_AUX_WEIGHTS, aux_tasks

HELP = "structured pruning to a target sparsity, then compaction, export and measurement"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prune", help=HELP, description=HELP)
    groups = options.add_run_options(parser, PruneRun, "prune")
    _add_aux_options(groups["transfer from auxiliary tasks"])
    parser.set_defaults(handler=handle)


def _add_aux_options(group: argparse._ArgumentGroup) -> None:
    """The auxiliary tasks: a list in the config, a repeatable spec on the command line."""
    group.add_argument(
        "--aux",
        action="append",
        dest="aux_specs",
        metavar="SPEC",
        help="auxiliary task, repeatable: mlm (the unlabelled rest of --train), mlm:PATH "
        "(.txt one document per line, or a data file), task:PATH (labelled data), "
        "distill (the dense teacher's predictions on the unlabelled rest of --train: the "
        "most direct transfer from the teacher when labels are scarce; needs --teacher or "
        "--distill), distill:PATH (a file with the target's text columns; .txt for single "
        "texts)",
    )
    group.add_argument(
        "--aux-weight",
        type=positive_float,
        action="append",
        metavar="W",
        help="loss weight: one for every --aux, or one per --aux in order (default: "
        + ", ".join(f"{kind} {weight:g}" for kind, weight in DEFAULT_AUX_WEIGHTS.items())
        + ")",
    )
    group.add_argument("--aux-text-columns", type=name_list, help="text column(s) of aux files")
    group.add_argument("--aux-label-column", help="label column of --aux task files")


def handle(args: argparse.Namespace) -> int:
    if args.aux_specs:  # else the --config file's tasks, or none
        tasks = aux_tasks(
            args.aux_specs, args.aux_weight or (), args.aux_text_columns, args.aux_label_column
        )
        setattr(args, "transfer.aux", tasks)
    run = options.run_from_args(PruneRun, args)
    report = api.prune(run).report
    print(summary(report))
    print(f"wrote {run.out}")
    unused = report.get("unlabelled_examples", 0)
    if unused and not run.transfer.aux and run.progress and run.prune.recipe == "plain":
        teacher = "" if run.prune.uses_teacher else " (with --teacher or --distill)"
        print(
            f"hint: {unused:,} rows of --train were left unlabelled; --aux distill{teacher} "
            "or --aux mlm learn from them while pruning (docs/results.md, 'Transfer from "
            "auxiliary tasks')",
            file=sys.stderr,
        )
    return 0
