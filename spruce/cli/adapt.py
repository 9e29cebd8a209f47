"""``spruce adapt``: Structured Pruning Adapters -- a frozen base, a tiny pruned change per task."""

from __future__ import annotations

import argparse
from pathlib import Path

from spruce.adapters.config import KINDS
from spruce.cli import options
from spruce.cli.parsing import fraction, positive_float, positive_int
from spruce.errors import SpruceError
from spruce.masks.control import CONTROLS
from spruce.models.loading import DEFAULT_MODEL
from spruce.pipelines.adapt import AdaptRun, run_adapt
from spruce.spa.config import AdaptConfig, criterion_names
from spruce.train import TrainConfig

HELP = "structured pruning adapters: prune a frozen encoder or CNN per task, fuse, export"
# Image tasks: these model names, a .pt/.pth state dict, or .npz / class-folder data.
CNN_MODELS = ("efficientnet-lite0", "resnet18", "resnet50")


def rank_value(text: str) -> int | float:
    """An absolute rank (whole number >= 1) or a fraction of each layer's width in (0, 1)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= 1 or a fraction in (0, 1), got '{text}'"
            ) from None
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(
                f"a fractional rank must lie in (0, 1), got '{text}'"
            ) from None
        return value
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a rank of at least 1, got '{text}'")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("adapt", help=HELP, description=HELP)
    options.add_model_option(parser)
    options.add_data_options(parser)
    options.add_train_options(parser)
    d = AdaptConfig()
    group = parser.add_argument_group("adapters and pruning")
    group.add_argument(
        "--adapter",
        choices=KINDS,  # sppara is refused with a reason rather than as an unknown word
        default=d.adapter,
        help="splora: low-rank channel adapter; splopa: block adapter with shared prototypes",
    )
    group.add_argument(
        "--rank", type=rank_value, default=d.rank, help="adapter rank, or a fraction of width"
    )
    group.add_argument("--scaling", type=float, default=d.scaling, help="multiplies the delta")
    group.add_argument(
        "--block-size", type=positive_int, default=d.block_size[0], help="splopa: square block"
    )
    group.add_argument("--num-prototypes", type=positive_int, default=d.num_prototypes)
    group.add_argument(
        "--criterion",
        choices=criterion_names(),
        default=d.criterion,
        help="unit importance (scored progressively), or l0: learned hard-concrete masks",
    )
    group.add_argument("--target-sparsity", type=fraction, default=d.target_sparsity)
    group.add_argument(
        "--prune-rounds",
        type=positive_int,
        default=d.prune_rounds,
        help="score-prune-train rounds (l0: one phase as long as all rounds)",
    )
    group.add_argument("--epochs-per-round", type=positive_float, default=d.epochs_per_round)
    group.add_argument(
        "--final-epochs",
        type=positive_float,
        help="training with the structure fixed (default: --epochs)",
    )
    group.add_argument(
        "--fine-prune",
        action="store_true",
        help="no adapters, every weight learns (the baseline adapters are compared with)",
    )
    group.add_argument("--size-multiple", type=positive_int, default=d.size_multiple)
    group.add_argument(
        "--sparsity-control",
        choices=CONTROLS,
        default=d.sparsity_control,
        help="--criterion l0: exact holds the expected sparsity on the ramp by construction; "
        "lagrangian: CoFi's learned multipliers (--lr-lambda)",
    )
    group.add_argument("--lr-gates", type=positive_float, default=d.lr_gates)
    group.add_argument("--lr-lambda", type=positive_float, default=d.lr_lambda)
    group.add_argument(
        "--image-size",
        type=positive_int,
        default=32,
        help="CNNs: images are resized to this square size (default 32)",
    )
    group.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    group.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    group.add_argument("--latency-repeats", type=positive_int, default=d.latency_repeats)
    options.add_output_options(parser)
    options.add_checkpoint_options(parser)
    options.add_runtime_options(parser)
    parser.set_defaults(handler=handle)


def is_image_task(args: argparse.Namespace) -> bool:
    """CNN and image data, or an encoder and text: decided by the model name or the data."""
    model = str(args.model or "")
    if model in CNN_MODELS or model.endswith((".pt", ".pth")):
        return True
    train = Path(args.train)
    return train.suffix.lower() == ".npz" or (
        train.is_dir() and any(child.is_dir() for child in train.iterdir())
    )


def handle_image_task(args: argparse.Namespace) -> int:
    from spruce.vision.adapt import CNNAdaptConfig, run_cnn_adapt

    if args.criterion == "l0":
        raise SpruceError(
            "--criterion l0 learns masks of transformer units, not CNN channels",
            "use weight, gradient, taylor or lrp for CNNs",
        )
    if args.adapter == "splopa":
        raise SpruceError("splopa adapts linear layers only", "use splora or sppara for CNNs")
    # The encoders' default model means "no choice made" here: the CNN default applies.
    model = args.model if args.model not in (None, DEFAULT_MODEL) else "efficientnet-lite0"
    config = CNNAdaptConfig(
        train=args.train,
        validation=args.validation,
        test=args.test,
        out=args.out,
        model=model,
        image_size=args.image_size,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
        epochs_per_round=max(1, round(args.epochs_per_round)),
        epochs=max(1, round(args.final_epochs or args.epochs)),
        batch_size=args.batch_size,
        # The encoders' default (1e-4) is too small for a CNN's fresh classifier.
        lr=args.learning_rate if args.learning_rate != TrainConfig().learning_rate else 1e-3,
        criterion=args.criterion,
        target_sparsity=args.target_sparsity,
        rounds=args.prune_rounds,
        adapter=args.adapter,
        rank=args.rank,
        scaling=args.scaling,
        fine_prune=args.fine_prune,
        max_steps=args.max_steps,
        export_onnx=not args.no_onnx,
        measure_latency=not args.no_latency,
        latency_repeats=args.latency_repeats,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=not args.quiet,
        resume=args.resume,
        checkpoint_steps=args.checkpoint_steps,
    ).validate()
    report = run_cnn_adapt(config)
    split = "test" if "test" in report["metrics"] else next(iter(report["metrics"]), None)
    accuracy = report["metrics"].get(split, {}).get("accuracy") if split else None
    shown = f"{split} accuracy {accuracy:.4f}; " if accuracy is not None else ""
    print(
        f"{model} ({report['mode']}, {report['criterion']}): {shown}parameter sparsity "
        f"{report['sparsity']['achieved']:.1%}; learned {report['learned_params']:,} numbers, "
        f"task file {report['task_file_bytes']:,} bytes"
    )
    print(f"wrote {args.out}")
    return 0


def handle(args: argparse.Namespace) -> int:
    if is_image_task(args):
        return handle_image_task(args)
    adapt = AdaptConfig(
        adapter=args.adapter,
        rank=args.rank,
        scaling=args.scaling,
        block_size=args.block_size,
        num_prototypes=args.num_prototypes,
        criterion=args.criterion,
        target_sparsity=args.target_sparsity,
        prune_rounds=args.prune_rounds,
        epochs_per_round=args.epochs_per_round,
        final_epochs=args.final_epochs or args.epochs,
        fine_prune=args.fine_prune,
        size_multiple=args.size_multiple,
        lr_gates=args.lr_gates,
        lr_lambda=args.lr_lambda,
        sparsity_control=args.sparsity_control,
        export_onnx=not args.no_onnx,
        measure_latency=not args.no_latency,
        latency_repeats=args.latency_repeats,
    ).validate()
    report = run_adapt(
        AdaptRun(
            data=options.data_config(args),
            adapt=adapt,
            train=options.train_config(args),
            model=args.model,
            max_length=args.max_length,
            **options.run_options(args),
        )
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['task']} ({report['mode']}, {report['criterion']}): "
        f"{report['metrics_split']} {metrics}; encoder sparsity "
        f"{report['sparsity']['encoder']:.1%}; learned {report['learned_params']:,} numbers, "
        f"task file {report['task_file_bytes']:,} bytes (base {report['base_model_bytes']:,})"
    )
    print(f"wrote {args.out}")
    return 0
