"""Option groups shared by several commands, and their conversion into configs."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from spruce.cli.parsing import (
    non_negative_int,
    positive_int,
)
from spruce.cli.settings import add_settings, config_from_args, defaults_from_config
from spruce.config import from_config, read_config
from spruce.data import TaskDataConfig
from spruce.models import DEFAULT_MODEL
from spruce.train import TrainConfig
from spruce.train.checkpoint import DEFAULT_EVERY_STEPS


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


def add_data_options(parser: argparse.ArgumentParser, *, unlabelled: bool = False) -> None:
    group = parser.add_argument_group("data")
    add_settings(group, TaskDataConfig, skip=() if unlabelled else ("unlabelled",))
    group.add_argument(
        "--max-length",
        type=positive_int,
        default=128,
        help="tokens per example after truncation (default: 128)",
    )


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pre-trained encoder: local directory or hub name (default: "
        f"{DEFAULT_MODEL}, the embedded all-MiniLM-L6-v2)",
    )


def add_train_options(parser: argparse.ArgumentParser) -> None:
    add_settings(parser.add_argument_group("training"), TrainConfig)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    group.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def add_output_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=required,
        metavar="DIR",
        help="output directory (written completely or not at all)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "checkpoints",
        "the run checkpoints into DIR.checkpoint beside --out (deleted once --out is "
        "complete); SIGINT/SIGTERM save a checkpoint at the next step and stop",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run whose checkpoint lies beside --out (same options)",
    )
    group.add_argument(
        "--checkpoint-steps",
        type=non_negative_int,
        default=DEFAULT_EVERY_STEPS,
        metavar="N",
        help=f"save a checkpoint every N training steps and at the end of each phase "
        f"(default: {DEFAULT_EVERY_STEPS}; 0: no checkpoints)",
    )


def run_options(args: argparse.Namespace) -> dict:
    """The output, runtime and checkpoint settings of a RunSettings, from the options."""
    return {
        "out": args.out,
        "overwrite": args.overwrite,
        "device": args.device,
        "progress": not args.quiet,
        "threads": args.threads,
        "resume": args.resume,
        "checkpoint_steps": args.checkpoint_steps,
    }


def data_config(args: argparse.Namespace) -> TaskDataConfig:
    return config_from_args(TaskDataConfig, args, seed=args.seed)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(TrainConfig, args)
