"""Entry point: ``spruce <command> ...`` and ``python -m spruce``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from spruce.api import quiet_libraries
from spruce.cli import adapt, bank, data, demo, evaluate, finetune, grid, prune
from spruce.cli.parsing import Parser
from spruce.errors import SpruceError
from spruce.train.checkpoint import checkpoint_dir
from spruce.train.distributed import context
from spruce.train.interrupt import (
    Interrupted,
    can_handle_signals,
    raise_interrupted,
    restore_handler,
)
from spruce.version import __version__


def build_parser() -> Parser:
    parser = Parser(prog="spruce", description="Small, fast, task-specific encoders.")
    parser.add_argument("--version", action="version", version=f"spruce {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for command in (finetune, prune, adapt, bank, evaluate, demo, data, grid):
        command.register(subparsers)
    parser.commands = subparsers.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors become one line on stderr and exit code 2, a stop
    signal one line and 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM stops like Ctrl-C (outputs are cleaned up, a checkpoint is kept); inside a
    # checkpointed training phase the trainer takes it over and saves first.
    installed = can_handle_signals()
    previous = signal.signal(signal.SIGTERM, raise_interrupted) if installed else None
    distributed = context()  # under torchrun: WORLD_SIZE, RANK, LOCAL_RANK
    stdout = sys.stdout
    if not distributed.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone prints the summary
    try:
        with quiet_libraries():
            if getattr(args, "config", None) is not None:
                args = _with_config_file(parser, argv, args)
            return args.handler(args)
    except SpruceError as error:
        print(f"spruce: error: {error.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"spruce: {_interrupted(error, args)}", file=sys.stderr)
        return error.exit_code if isinstance(error, Interrupted) else 130
    finally:
        if installed:
            restore_handler(signal.SIGTERM, previous)
        distributed.destroy()
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout


def _with_config_file(parser: Parser, argv: Sequence[str] | None, args) -> argparse.Namespace:
    """Parse again with the --config file's settings as the command's defaults, so that
    the options given beside it override them."""
    parser.commands[args.command].set_defaults(**args.config_defaults(args.config))
    return parser.parse_args(argv)


def _interrupted(error: KeyboardInterrupt, args) -> str:
    """One line for a stop: where the checkpoint is, when there is one to resume from."""
    if isinstance(error, Interrupted) and error.step is not None:
        return error.one_line()
    message = "interrupted; nothing was written to --out"
    out = getattr(args, "out", None)
    if out is not None and getattr(args, "checkpoint_steps", 0):
        directory = checkpoint_dir(out)
        if directory.exists():
            message += (
                f"; rerun the same command with --resume to continue from the checkpoint "
                f"in {directory}"
            )
    return message


def run() -> None:
    sys.exit(main())
