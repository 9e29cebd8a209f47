"""``spruce prune``: a small, fast model from a pre-trained or fine-tuned one."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from spruce.cli import options
from spruce.cli.parsing import fraction, name_list, non_negative_int, positive_float, positive_int
from spruce.cli.settings import add_settings, config_from_args
from spruce.data.augment import AUGMENTS, SELECTS
from spruce.errors import SpruceError
from spruce.masks.control import CONTROLS, RAMPS
from spruce.masks.units import UNIT_TYPES
from spruce.pipelines.prune import PruneRun, run_prune
from spruce.pruning.config import (
    METHODS,
    RECIPE_FINAL_EPOCHS,
    RECIPE_PRUNE_EPOCHS,
    RECIPES,
    PruneConfig,
)
from spruce.report.latency import RUNTIMES
from spruce.train.distillation import DistillationConfig
from spruce.transfer.config import (
    COUPLINGS,
    DEFAULT_AUX_WEIGHTS,
    DEFAULT_WITH_AUX,
    SCHEDULES,
    TRANSFERS,
    TransferConfig,
    parse_aux,
)

HELP = "structured pruning to a target sparsity, then compaction, export and measurement"


def _per_recipe(epochs: dict[str, float]) -> str:
    """``5 with --recipe distill, 10 with --recipe plain``: a default that depends on
    the recipe, for help texts (``5`` where every recipe has the same)."""
    if len(set(epochs.values())) == 1:
        return f"{next(iter(epochs.values())):g}"
    return ", ".join(f"{e:g} with --recipe {r}" for r, e in epochs.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prune", help=HELP, description=HELP)
    options.add_model_option(parser)
    options.add_data_options(parser, unlabelled=True)
    options.add_train_options(parser)
    defaults = PruneConfig()
    group = parser.add_argument_group("pruning")
    group.add_argument(
        "--recipe",
        choices=RECIPES,
        default=defaults.recipe,
        help="distill (default): a dense teacher (--teacher, else --model when it is "
        "already fine-tuned for this task, else one fine-tuned first) distilled on the "
        "labelled batches and on the unlabelled text (rest of --train, --unlabelled); "
        "plain: the labelled data alone, with only what other options ask for",
    )
    group.add_argument(
        "--method",
        choices=METHODS,
        default=defaults.method,
        help="l0: learned hard-concrete masks (CoFi); pdp: parameter-free soft masks from "
        "weight magnitudes against a threshold set by the target; magnitude / taylor: "
        "score-based structured pruning baselines",
    )
    group.add_argument(
        "--target-sparsity",
        type=fraction,
        default=defaults.target_sparsity,
        help="fraction of the encoder's attention and FFN weights to remove",
    )
    group.add_argument(
        "--units",
        type=name_list,
        default=defaults.units,
        help=f"unit types to prune (default: {','.join(UNIT_TYPES)})",
    )
    group.add_argument(
        "--prune-epochs",
        type=positive_float,
        default=defaults.prune_epochs,
        help=f"length of the pruning phase (default: {_per_recipe(RECIPE_PRUNE_EPOCHS)})",
    )
    group.add_argument(
        "--final-epochs",
        type=positive_float,
        default=defaults.final_epochs,
        help=f"fine-tuning of the compact model (default: {_per_recipe(RECIPE_FINAL_EPOCHS)})",
    )
    group.add_argument(
        "--final-patience",
        type=non_negative_int,
        default=defaults.final_patience,
        help="evaluations without gain before the final fine-tune stops, 0 never (default: "
        "0 with --recipe distill, which keeps the best validation step; --patience with "
        "--recipe plain)",
    )
    group.add_argument(
        "--group-by-length",
        action=argparse.BooleanOptionalAction,
        default=defaults.group_by_length,
        help="draw the labelled batches of the pruning and final phases by length, as "
        "transformers' group_by_length does: less padding, faster steps (default: on with "
        "--recipe distill, off with --recipe plain; a teacher's fine-tune draws as spruce "
        "finetune does)",
    )
    group.add_argument("--prune-max-steps", type=positive_int)
    group.add_argument("--final-max-steps", type=positive_int)
    group.add_argument(
        "--sparsity-warmup",
        type=fraction,
        default=defaults.sparsity_warmup,
        help="fraction of the pruning steps over which the target ramps up",
    )
    group.add_argument(
        "--sparsity-control",
        choices=CONTROLS,
        default=defaults.sparsity_control,
        help="l0: exact holds the expected sparsity on the ramp by construction (a shift of "
        "every gate); lagrangian: CoFi's learned multipliers (--lr-lambda)",
    )
    group.add_argument(
        "--sparsity-ramp",
        choices=RAMPS,
        default=defaults.sparsity_ramp,
        help="shape of the target's ramp: linear, or cubic (fast first, gentle near the end)",
    )
    group.add_argument("--lr-gates", type=positive_float, default=defaults.lr_gates)
    group.add_argument(
        "--lr-lambda",
        type=positive_float,
        default=defaults.lr_lambda,
        help="--sparsity-control lagrangian: learning rate of the multipliers",
    )
    group.add_argument(
        "--prune-rounds",
        type=positive_int,
        default=defaults.prune_rounds,
        help="magnitude/taylor: score-prune-fine-tune rounds (1 = one-shot)",
    )
    group.add_argument(
        "--size-multiple",
        type=positive_int,
        default=defaults.size_multiple,
        help="round kept FFN widths and the hidden size to multiples of this "
        "(faster matrix products; 1 = no rounding)",
    )
    group.add_argument(
        "--trim-vocab", action="store_true", help="keep only the vocabulary the task's text uses"
    )
    group.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    group.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    group.add_argument("--latency-repeats", type=positive_int, default=defaults.latency_repeats)
    group.add_argument(
        "--latency-runtime",
        choices=RUNTIMES,
        default=defaults.latency_runtime,
        help="time the models in eager PyTorch, under torch.compile (needs a C++ compiler; "
        "small pruned models gain the most, as LayerNorms and adds get fused), or both ways, "
        "reporting each model's faster runtime (best)",
    )
    distill = parser.add_argument_group("distillation")
    teacher = distill.add_mutually_exclusive_group()
    teacher.add_argument(
        "--teacher",
        type=Path,
        metavar="DIR",
        help="a spruce finetune output: the teacher, and the model pruned",
    )
    teacher.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune a dense teacher first (--epochs), then prune it (what --recipe "
        "distill does when --model is not already fine-tuned for the task)",
    )
    add_settings(distill, DistillationConfig)
    _add_transfer_options(parser)
    options.add_output_options(parser)
    options.add_checkpoint_options(parser)
    options.add_runtime_options(parser)
    parser.set_defaults(handler=handle)


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    t = TransferConfig()
    group = parser.add_argument_group(
        "transfer from auxiliary tasks",
        "with --aux and no coupling options, spruce uses "
        + ", ".join(
            f"--{k.replace('schedule', 'aux-schedule')} {v}" for k, v in DEFAULT_WITH_AUX.items()
        ),
    )
    group.add_argument(
        "--aux",
        action="append",
        metavar="SPEC",
        help="auxiliary task, repeatable: mlm (the unlabelled rest of --train), mlm:PATH "
        "(.txt one document per line, or a data file), task:PATH (labelled data), "
        "distill (the dense teacher's predictions on the unlabelled rest of --train: the "
        "most direct transfer from the teacher when labels are scarce; needs --teacher or "
        "--distill), distill:PATH (a file with the target's text columns; .txt for single "
        "texts)",
    )
    group.add_argument(
        "--aux-weight",
        type=positive_float,
        action="append",
        metavar="W",
        help="loss weight: one for every --aux, or one per --aux in order (default: "
        + ", ".join(f"{kind} {weight:g}" for kind, weight in DEFAULT_AUX_WEIGHTS.items())
        + ")",
    )
    group.add_argument("--aux-text-columns", type=name_list, help="text column(s) of aux files")
    group.add_argument("--aux-label-column", help="label column of --aux task files")
    group.add_argument("--coupling", choices=COUPLINGS, help="how tasks are coupled")
    group.add_argument("--transfer", choices=TRANSFERS, help="what the tasks share or pass on")
    group.add_argument(
        "--aux-schedule",
        metavar="WHEN",
        help=f"when the auxiliary loss applies: {', '.join(SCHEDULES)}",
    )
    group.add_argument(
        "--tie-strength",
        type=float,
        default=t.tie_strength,
        help="tied: weight of the penalty pulling the gate sets' keep-probabilities together",
    )
    group.add_argument(
        "--aux-ratio",
        type=positive_float,
        default=t.aux_ratio,
        help="auxiliary batches per target batch, per auxiliary task",
    )
    group.add_argument(
        "--aux-steps", type=positive_int, help="sequential: steps of the auxiliary stage"
    )
    group.add_argument("--aux-batch-size", type=positive_int)
    group.add_argument("--mlm-probability", type=fraction, default=t.mlm_probability)
    group.add_argument(
        "--aux-augment",
        choices=AUGMENTS,
        default=t.augment,
        help="distill: augment its unlabelled text (concat: join each text with another; "
        "default: none under --recipe distill, which selects the longest texts instead)",
    )
    group.add_argument(
        "--aux-select",
        choices=SELECTS,
        default=t.select,
        help="distill: which unlabelled texts it reads (longest: as many of the longest "
        "as the run has steps to read, each about once; default: longest under --recipe "
        "distill, else all)",
    )
    group.add_argument(
        "--aux-distill-layers",
        action="store_true",
        help="distill: match the teacher's hidden layers on the unlabelled text too "
        "(the layer loss of the labelled batches, with a projection of its own)",
    )


def transfer_config(args: argparse.Namespace) -> TransferConfig:
    """The --aux* options as a :class:`TransferConfig`; ``DEFAULT_WITH_AUX`` fills the
    coupling settings left out when auxiliary data is given."""
    specs = args.aux or []
    weights = args.aux_weight or []
    if weights and len(weights) not in (1, len(specs)):
        raise SpruceError(
            f"{len(weights)} --aux-weight values for {len(specs)} --aux tasks",
            "give one weight for all, or one per --aux",
        )
    aux = []
    for index, spec in enumerate(specs):
        task = parse_aux(spec)
        weight = weights[index if len(weights) > 1 else 0] if weights else task.weight
        aux.append(
            replace(
                task,
                weight=weight,
                text_columns=tuple(args.aux_text_columns) if args.aux_text_columns else None,
                label_column=args.aux_label_column,
            )
        )
    defaults = DEFAULT_WITH_AUX if aux else {"coupling": "none"}
    return TransferConfig(
        aux=tuple(aux),
        coupling=args.coupling or defaults["coupling"],
        transfer=args.transfer or DEFAULT_WITH_AUX["transfer"],
        schedule=args.aux_schedule or DEFAULT_WITH_AUX["schedule"],
        tie_strength=args.tie_strength,
        aux_ratio=args.aux_ratio,
        aux_steps=args.aux_steps,
        aux_batch_size=args.aux_batch_size,
        mlm_probability=args.mlm_probability,
        augment=args.aux_augment,
        select=args.aux_select,
        distill_layers=args.aux_distill_layers,
    ).validate()


def handle(args: argparse.Namespace) -> int:
    prune = PruneConfig(
        recipe=args.recipe,
        method=args.method,
        target_sparsity=args.target_sparsity,
        units=tuple(args.units) if args.units else None,
        prune_epochs=args.prune_epochs,
        final_epochs=args.final_epochs,
        final_patience=args.final_patience,
        group_by_length=args.group_by_length,
        prune_max_steps=args.prune_max_steps,
        final_max_steps=args.final_max_steps,
        sparsity_warmup=args.sparsity_warmup,
        sparsity_control=args.sparsity_control,
        sparsity_ramp=args.sparsity_ramp,
        lr_gates=args.lr_gates,
        lr_lambda=args.lr_lambda,
        prune_rounds=args.prune_rounds,
        size_multiple=args.size_multiple,
        distill=args.distill,
        teacher=str(args.teacher) if args.teacher else None,
        distillation=config_from_args(DistillationConfig, args),
        trim_vocab=args.trim_vocab,
        export_onnx=not args.no_onnx,
        measure_latency=not args.no_latency,
        latency_repeats=args.latency_repeats,
        latency_runtime=args.latency_runtime,
    )
    report = run_prune(
        PruneRun(
            data=options.data_config(args),
            prune=prune,
            transfer=transfer_config(args),
            train=options.train_config(args),
            model=args.model,
            max_length=args.max_length,
            **options.run_options(args),
        )
    )
    m = report["metrics"]
    print(
        f"{report['task']}: {report['metrics_split']} "
        + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
        + f"; encoder sparsity {report['sparsity']['encoder']:.1%}, "
        f"params {report['params']['total']:,} of {report['params']['dense_total']:,}"
    )
    if "latency_ms" in report:
        lat = report["latency_ms"]
        print(
            f"latency batch 1: {lat['batch_1']['dense']:.1f} -> {lat['batch_1']['pruned']:.1f} ms; "
            f"batch 32: {lat['batch_32']['dense']:.1f} -> {lat['batch_32']['pruned']:.1f} ms "
            f"(FLOPs speed-up {report['flops']['speedup']}x" + _runtime_note(lat)
        )
    print(f"wrote {args.out}")
    unused = report.get("unlabelled_examples", 0)
    if unused and not args.aux and not args.quiet and args.recipe == "plain":
        teacher = "" if args.teacher or args.distill else " (with --teacher or --distill)"
        print(
            f"hint: {unused:,} rows of --train were left unlabelled; --aux distill{teacher} "
            "or --aux mlm learn from them while pruning (docs/results.md, 'Transfer from "
            "auxiliary tasks')",
            file=sys.stderr,
        )
    return 0


def _runtime_note(latency: dict) -> str:
    """How the latency was measured, closing the summary line's parenthesis."""
    runtime = latency.get("runtime", "eager")
    if runtime == "compiled":
        return ", torch.compile)"
    if runtime == "best":
        won = latency["chosen"]["batch_32"]
        return f", batch 32 faster in: dense {won['dense']}, pruned {won['pruned']})"
    return ")"
