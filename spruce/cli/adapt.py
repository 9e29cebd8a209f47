"""``spruce adapt``: Structured Pruning Adapters -- a frozen base, a tiny pruned change per task."""

from __future__ import annotations

import argparse

from spruce import api
from spruce.cli import options
from spruce.errors import SpruceError
from spruce.models.loading import DEFAULT_MODEL
from spruce.pipelines.adapt import AdaptRun, is_image_task
from spruce.train import TrainConfig

HELP = "structured pruning adapters: prune a frozen encoder or CNN per task, fuse, export"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("adapt", help=HELP, description=HELP)
    options.add_run_options(parser, AdaptRun, "adapt", skip=("data.unlabelled",))
    parser.set_defaults(handler=handle)


def handle_image_task(run: AdaptRun) -> int:
    from spruce.vision.adapt import CNNAdaptConfig, run_cnn_adapt

    adapt = run.adapt
    if adapt.criterion == "l0":
        raise SpruceError(
            "--criterion l0 learns masks of transformer units, not CNN channels",
            "use weight, gradient, taylor or lrp for CNNs",
        )
    if adapt.adapter == "splopa":
        raise SpruceError("splopa adapts linear layers only", "use splora or sppara for CNNs")
    # The encoders' default model means "no choice made" here: the CNN default applies.
    model = run.model if run.model not in (None, DEFAULT_MODEL) else "efficientnet-lite0"
    config = CNNAdaptConfig(
        train=run.data.train,
        validation=run.data.validation,
        test=run.data.test,
        out=run.out,
        model=model,
        image_size=adapt.image_size,
        max_train_samples=run.data.max_train_samples,
        seed=run.train.seed,
        epochs_per_round=max(1, round(adapt.epochs_per_round)),
        epochs=max(1, round(adapt.final_epochs or run.train.epochs)),
        batch_size=run.train.batch_size,
        # The encoders' default (1e-4) is too small for a CNN's fresh classifier.
        lr=run.train.learning_rate
        if run.train.learning_rate != TrainConfig().learning_rate
        else 1e-3,
        criterion=adapt.criterion,
        target_sparsity=adapt.target_sparsity,
        rounds=adapt.prune_rounds,
        adapter=adapt.adapter,
        rank=adapt.rank,
        scaling=adapt.scaling,
        fine_prune=adapt.fine_prune,
        max_steps=run.train.max_steps,
        export_onnx=adapt.export_onnx,
        measure_latency=adapt.measure_latency,
        latency_repeats=adapt.latency_repeats,
        threads=run.threads,
        overwrite=run.overwrite,
        progress=run.progress,
        resume=run.resume,
        checkpoint_steps=run.checkpoint_steps,
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
    print(f"wrote {run.out}")
    return 0


def handle(args: argparse.Namespace) -> int:
    run = options.run_from_args(AdaptRun, args)
    if is_image_task(run):
        return handle_image_task(run)
    report = api.adapt(run).report
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['task']} ({report['mode']}, {report['criterion']}): "
        f"{report['metrics_split']} {metrics}; encoder sparsity "
        f"{report['sparsity']['encoder']:.1%}; learned {report['learned_params']:,} numbers, "
        f"task file {report['task_file_bytes']:,} bytes (base {report['base_model_bytes']:,})"
    )
    print(f"wrote {run.out}")
    return 0
