"""Option groups shared by several commands, and their conversion into configs."""

from __future__ import annotations

import argparse
from pathlib import Path

from spruce.cli.parsing import (
    name_list,
    non_negative_int,
    positive_int,
)
from spruce.cli.settings import add_settings, config_from_args
from spruce.data import TaskDataConfig
from spruce.models import DEFAULT_MODEL
from spruce.train import TrainConfig
from spruce.train.checkpoint import DEFAULT_EVERY_STEPS


def add_data_options(
    parser: argparse.ArgumentParser, *, train_required: bool = True, unlabelled: bool = False
) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train",
        required=train_required,
        help="training data: .csv, .tsv, "
        ".jsonl, a save_to_disk directory, or a hub dataset NAME[:CONFIG]",
    )
    group.add_argument("--validation", help="validation data (early stopping, model selection)")
    group.add_argument("--test", help="test data, evaluated once with the best model")
    group.add_argument(
        "--text-columns",
        type=name_list,
        metavar="A[,B]",
        help="text column, or two for sentence pairs (default: detected)",
    )
    group.add_argument("--label-column", metavar="NAME", help="label column (default: detected)")
    group.add_argument(
        "--label-names",
        type=name_list,
        metavar="L1,L2,...",
        help="label order (their ids); default: sorted",
    )
    group.add_argument("--task-name", help="name used in reports (default: from the file path)")
    sample = group.add_mutually_exclusive_group()
    sample.add_argument(
        "--max-train-samples",
        type=positive_int,
        metavar="N",
        help="use N labelled training examples, stratified, chosen by --seed",
    )
    sample.add_argument(
        "--shots-per-class",
        type=positive_int,
        metavar="K",
        help="use K labelled training examples per class, chosen by --seed",
    )
    group.add_argument(
        "--max-eval-samples",
        type=positive_int,
        metavar="N",
        help="evaluate on a stratified subset of N validation examples",
    )
    group.add_argument(
        "--max-test-samples",
        type=positive_int,
        metavar="N",
        help="evaluate on a stratified subset of N test examples",
    )
    if unlabelled:
        group.add_argument(
            "--unlabelled",
            metavar="FILE",
            help="unlabelled in-domain text for distillation (and --aux mlm): .txt, one "
            "document per line, or a data file with the task's text column(s); added to "
            "the rows of --train that --max-train-samples leaves unlabelled",
        )
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
    return TaskDataConfig(
        train=args.train,
        validation=args.validation,
        test=args.test,
        text_columns=args.text_columns,
        label_column=args.label_column,
        label_names=args.label_names,
        max_train_samples=args.max_train_samples,
        shots_per_class=args.shots_per_class,
        max_eval_samples=args.max_eval_samples,
        max_test_samples=args.max_test_samples,
        seed=args.seed,
        name=args.task_name,
        unlabelled=getattr(args, "unlabelled", None),
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(TrainConfig, args)
