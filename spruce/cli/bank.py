"""``spruce bank``: tasks adapted from one base; ``fuse`` turns one into a compact model."""

from __future__ import annotations

import argparse
from pathlib import Path

from spruce.cli import options
from spruce.compact import check_onnx, export_onnx, save_pruned
from spruce.spa.bank import TaskBank
from spruce.utils.atomic import check_output_dir, staged_output_dir

HELP = "per-task adapter files on one shared base"
FUSE_HELP = (
    "fuse one task (a spruce adapt output, text or image) with its base into a compact model"
)
# The ONNX check needs some text; a task file carries none of its data.
CHECK_TEXTS = ("a short sentence to check the export", "another one, a little longer than that")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bank", help=HELP, description=HELP)
    commands = parser.add_subparsers(dest="bank_command", required=True, metavar="COMMAND")
    fuse = commands.add_parser("fuse", help=FUSE_HELP, description=FUSE_HELP)
    fuse.add_argument(
        "--base", help="the base model the task was adapted from (default: the one it records)"
    )
    fuse.add_argument(
        "--task", type=Path, required=True, metavar="DIR", help="a spruce adapt --out directory"
    )
    fuse.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    options.add_output_options(fuse)
    fuse.set_defaults(handler=handle_fuse)


def handle_fuse(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.overwrite)  # refuse before loading anything
    from spruce.spa.cnn_task import is_cnn_task  # torch-pruning only for image tasks

    if is_cnn_task(args.task):
        return _fuse_cnn(args)
    bank = TaskBank(base=args.base)
    name = args.task.name or "task"
    bank.add(name, args.task)
    compact, tokenizer = bank.fuse(name)
    with staged_output_dir(args.out, args.overwrite) as staging:
        save_pruned(compact, tokenizer, staging / "model")
        if not args.no_onnx:
            path = export_onnx(compact, tokenizer, staging / "model.onnx")
            difference = check_onnx(path, compact, tokenizer, CHECK_TEXTS)
    heads = sum(compact.config.layer_heads)
    ffn = sum(compact.config.layer_ffn)
    onnx = "" if args.no_onnx else f", ONNX max |diff| {difference:.1e}"
    print(
        f"wrote {args.out}/model: task {name} fused with its base ({heads} heads, {ffn} FFN "
        f"units, {sum(p.numel() for p in compact.parameters()):,} parameters{onnx})"
    )
    return 0


def _fuse_cnn(args: argparse.Namespace) -> int:
    """An image task: the compact CNN in the files ``spruce adapt`` writes for it
    (``model.safetensors`` + ``model.json``, ``model.onnx``), so ``load_compact`` reads
    either."""
    from spruce.spa.cnn_bank import CNNTaskBank
    from spruce.spa.cnn_task import MODEL_ONNX, MODEL_WEIGHTS, export_cnn_onnx

    bank = CNNTaskBank(base=args.base)
    name = args.task.name or "task"
    bank.add(name, args.task)
    meta = bank.meta(name)
    with staged_output_dir(args.out, args.overwrite) as staging:
        fused = bank.save_fused(name, staging)
        if not args.no_onnx:
            difference = export_cnn_onnx(fused, staging / MODEL_ONNX, int(meta["image_size"]))
    onnx = "" if args.no_onnx else f", ONNX max |diff| {difference:.1e}"
    print(
        f"wrote {args.out}/{MODEL_WEIGHTS}: task {name} fused with its base {meta['model']} "
        f"({meta['num_classes']} classes, {sum(p.numel() for p in fused.parameters()):,} "
        f"parameters{onnx})"
    )
    return 0
