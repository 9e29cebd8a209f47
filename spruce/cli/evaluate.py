"""``spruce eval``: metrics of a saved model on a labelled file."""

from __future__ import annotations

import argparse
import json

from spruce.cli.parsing import name_list, positive_int
from spruce.pipelines import evaluate_saved_model

HELP = "evaluate a model saved by spruce on labelled data"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help=HELP, description=HELP)
    parser.add_argument("--model", required=True, help="a spruce --out directory or its model/")
    parser.add_argument("--data", required=True, help="labelled data (.csv, .tsv, .jsonl, ...)")
    parser.add_argument("--text-columns", type=name_list, metavar="A[,B]")
    parser.add_argument("--label-column", metavar="NAME")
    parser.add_argument("--max-samples", type=positive_int, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = evaluate_saved_model(
        args.model,
        args.data,
        text_columns=args.text_columns,
        label_column=args.label_column,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        print(f"{result['task']} on {result['data']} ({result['examples']} examples): {metrics}")
    return 0
