"""Option groups shared by several commands, and their conversion into configs."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from spruce.config import from_config, read_config
from spruce.config.arguments import add_settings, config_from_args, defaults_from_config


def add_run_options(
    parser: argparse.ArgumentParser,
    run_class: type,
    command: str,
    *,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """A training command's options, generated from its run settings (``run_class``),
    and ``--config FILE``, whose settings the options given beside it override. Returns
    the option groups by title."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"settings from a JSON file: a spruce {command} report.json (its config block "
        "reruns that run) or such a block alone; options given beside it win",
    )
    groups = add_settings(parser, run_class, defaults, skip, required=("out",))
    parser.set_defaults(config_defaults=partial(_file_defaults, run_class, command))
    return groups


def _file_defaults(run_class: type, command: str, path: Path) -> dict[str, Any]:
    """The option defaults a --config file sets: its settings, checked by the configs."""
    return defaults_from_config(from_config(run_class, read_config(path, command)))


def run_from_args(run_class: type, args: argparse.Namespace) -> Any:
    """The run settings the options (and a --config file) describe."""
    return config_from_args(run_class, args)


def add_output_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=required,
        metavar="DIR",
        help="output directory (written completely or not at all)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
