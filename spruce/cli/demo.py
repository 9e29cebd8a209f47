"""``spruce demo``: the embedded end-to-end example on the SpamAssassin corpus."""

from __future__ import annotations

import argparse

from spruce.config.arguments import add_settings, config_from_args
from spruce.pipelines.demo import DemoSettings, format_table, run_demo

HELP = (
    "fine-tune MiniLM on 500 labelled SpamAssassin e-mails, prune it with the default "
    "recipe (distilling on the unlabelled rest) and with --recipe plain, and print the results"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    add_settings(parser, DemoSettings)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    settings = config_from_args(DemoSettings, args)
    print(format_table(run_demo(settings)))
    out = settings.out
    reports = ", ".join(
        f"{out}/{name}/report.json"
        for name in ("dense", "plain", "default")
        if (out / name / "report.json").exists()
    )
    print(f"details: {out}/summary.json, {reports}")
    return 0
