"""Entry point: ``spruce <command> ...`` and ``python -m spruce``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from spruce.cli import adapt, bank, data, demo, evaluate, finetune, grid, prune
from spruce.cli.parsing import Parser
from spruce.errors import SpruceError


def build_parser() -> Parser:
    import spruce

    parser = Parser(prog="spruce", description="Small, fast, task-specific encoders.")
    parser.add_argument("--version", action="version", version=f"spruce {spruce.__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for command in (finetune, prune, adapt, bank, evaluate, demo, data, grid):
        command.register(subparsers)
    return parser


def _quiet_libraries() -> None:
    # Load reports and per-file progress bars from transformers/datasets drown spruce's own.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import huggingface_hub
    import transformers

    huggingface_hub.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return args.handler(args)
    except SpruceError as error:
        print(f"spruce: error: {error.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spruce: interrupted; nothing was written to --out", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())
