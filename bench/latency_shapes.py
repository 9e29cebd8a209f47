"""Measured CPU speed-up of compact encoders against their FLOPs speed-up, per structure.

Why a separate benchmark: a model's latency depends on its shape, not its weights, so the
question "does a pruned shape run as fast as its FLOPs promise?" can be answered without
training. Each structure (from a ``spruce prune`` report, or a uniform one at a chosen
sparsity) becomes a ``spruce_compact`` model with random weights and is timed against
the dense default model at batch 1 and 32, sequence length 128, on the same inputs; the
dense model is timed again beside each structure, so the ratio compares neighbours.
``--size-multiple`` also times each structure with its FFN widths and hidden size rounded
to that multiple (the default of ``spruce prune``), to show what the rounding buys.
``--runtime compiled`` (or ``--compile``) times both models under ``torch.compile``
(inductor, static shapes) instead of eager PyTorch: the compiled graph fuses the
LayerNorms, residual adds and activations that FLOPs do not count, which matter most for
the smallest shapes. ``--runtime best`` times every model both ways, back to back, and
takes each model's faster runtime (what a deployment that benchmarks both would ship);
its rows also keep the eager and the compiled ratio, so one session compares all three.

    python bench/latency_shapes.py runs/bench/prune/*/report.json --size-multiple 8
    python bench/latency_shapes.py --uniform 0.6 0.8 0.9 0.95
    python bench/latency_shapes.py runs/bench/prune/*-95-s0/report.json --compile
    python bench/latency_shapes.py runs/bench/prune/*-95-s0/report.json --runtime best \
        --batch-sizes 32

Run it alone: a second busy process on the machine ruins every timing.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from spruce.models import encoder_shape, load_classifier
from spruce.models.compact import CompactModelForSequenceClassification, SpruceCompactConfig
from spruce.models.structure import EncoderShape
from spruce.report.flops import model_flops
from spruce.report.latency import measure_latency_table


def rounded(width: int, multiple: int, dense: int) -> int:
    if multiple <= 1 or width in (0, dense):
        return width
    return min(max(multiple, round(width / multiple) * multiple), dense)


def compact_like(dense_config, structure: dict, multiple: int = 1):
    hidden_dense = dense_config.hidden_size
    hidden = rounded(structure["hidden"], multiple, hidden_dense)
    heads = [layer["heads"] for layer in structure["layers"]]
    ffn = [
        rounded(layer["ffn"], multiple, dense_config.intermediate_size)
        for layer in structure["layers"]
    ]
    config = SpruceCompactConfig(
        vocab_size=dense_config.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len(heads),
        num_attention_heads=max(max(heads), 1),
        attention_head_size=hidden_dense // dense_config.num_attention_heads,
        intermediate_size=max(max(ffn), 1),
        layer_heads=heads,
        layer_ffn=ffn,
        max_position_embeddings=dense_config.max_position_embeddings,
        type_vocab_size=dense_config.type_vocab_size,
        classifier_hidden_size=hidden_dense,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = CompactModelForSequenceClassification(config).eval()
    shape = EncoderShape(len(heads), hidden, config.attention_head_size, tuple(heads), tuple(ffn))
    return model, shape


def uniform_structure(dense: EncoderShape, sparsity: float) -> dict:
    """Every layer and the hidden size scaled by the same factor: sqrt(1 - s) each way."""
    keep = math.sqrt(1 - sparsity)
    return {
        "hidden": round(dense.hidden_size * keep),
        "layers": [
            {"heads": max(1, round(h * keep)), "ffn": round(f * keep)}
            for h, f in zip(dense.heads, dense.ffn, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path, help="report.json files of pruned runs")
    parser.add_argument("--uniform", nargs="*", type=float, default=[], help="sparsities")
    parser.add_argument("--size-multiple", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--runtime", choices=("eager", "compiled", "best"), default="eager", help="see above"
    )
    parser.add_argument("--compile", action="store_true", help="the same as --runtime compiled")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.compile:
        args.runtime = "compiled"
    if 32 not in args.batch_sizes:
        parser.error("--batch-sizes must include 32: the ratio is taken at batch 32")

    dense_model, _, _ = load_classifier("minilm-l6", ["negative", "positive"])
    dense_model.eval()
    dense_shape = encoder_shape(dense_model.config)
    structures = {
        path.parent.name: json.loads(path.read_text())["structure"] for path in args.reports
    }
    structures.update(
        {f"uniform-{int(s * 100)}": uniform_structure(dense_shape, s) for s in args.uniform}
    )

    runtimes = ["eager", "compiled"] if args.runtime == "best" else [args.runtime]

    def speedups(model) -> dict[str, dict]:
        """Per runtime (and the best of them): dense and pruned ms and speed-up per batch,
        from the report's own :func:`measure_latency_table`. The dense model is timed
        again next to every structure: this machine's speed drifts by 10-15% over minutes,
        which a single dense timing would put into every ratio."""
        if args.runtime != "eager":
            # A fresh compilation cache per structure: dynamo's per-class cache would
            # otherwise fill up after a few shapes and silently fall back to eager.
            torch._dynamo.reset()
        table = measure_latency_table(
            {"dense": dense_model, "pruned": model},
            batch_sizes=args.batch_sizes,
            seq_len=128,
            runtime=args.runtime,
            threads=args.threads,
            repeats=args.repeats,
        )
        tables = {args.runtime: table}
        if args.runtime == "best":  # each runtime's own table rides along
            tables.update(eager=table["eager"], compiled=table["compiled"])
        out: dict[str, dict] = {}
        for runtime, timing in tables.items():
            rows = {b: timing[f"batch_{b}"] for b in args.batch_sizes}
            out[runtime] = {
                "dense_ms": {b: row["dense"] for b, row in rows.items()},
                "pruned_ms": {b: row["pruned"] for b, row in rows.items()},
                "speedup": {b: row["dense"] / row["pruned"] for b, row in rows.items()},
            }
        return out

    dense_flops = model_flops(dense_shape, 128, 2)
    extra = " | eager b32 / FLOPs | compiled b32 / FLOPs" if args.runtime == "best" else ""
    header = "| structure | hidden | FLOPs speed-up | b1 speed-up | b32 speed-up | b32 / FLOPs"
    print(f"{header}{extra} | dense b32 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * (extra.count("|") + 1))
    rows = []
    multiples = sorted({1, args.size_multiple})
    for name, structure in structures.items():
        for multiple in multiples:
            model, shape = compact_like(dense_model.config, structure, multiple)
            flops_speedup = dense_flops / model_flops(shape, 128, 2)
            timings = speedups(model)
            chosen = timings[args.runtime]
            b1 = chosen["speedup"].get(1)
            b32 = chosen["speedup"][32]
            label = name if multiple == 1 else f"{name}, widths x{multiple}"
            row = {
                "structure": label,
                "hidden": shape.hidden_size,
                "ffn": list(shape.ffn),
                "heads": list(shape.heads),
                "flops_speedup": round(flops_speedup, 3),
                "b1_speedup": None if b1 is None else round(b1, 3),
                "b32_speedup": round(b32, 3),
                "ratio_b32": round(b32 / flops_speedup, 3),
                "dense_ms": chosen["dense_ms"],
                "pruned_ms": chosen["pruned_ms"],
            }
            if args.runtime == "best":
                for runtime in runtimes:
                    ratio = timings[runtime]["speedup"][32] / flops_speedup
                    row[runtime] = {**timings[runtime], "ratio_b32": round(ratio, 3)}
            rows.append(row)
            cells = (
                [] if args.runtime != "best" else [f"{row[r]['ratio_b32']:.2f}" for r in runtimes]
            )
            print(
                f"| {label} | {shape.hidden_size} | {flops_speedup:.2f}x "
                f"| {'-' if b1 is None else f'{b1:.2f}x'} | {b32:.2f}x "
                f"| {b32 / flops_speedup:.2f} | "
                + "".join(f"{c} | " for c in cells)
                + f"{chosen['dense_ms'][32]:.1f} |",
                flush=True,
            )
    if args.json:
        document = {"runtime": args.runtime, "compiled": args.runtime == "compiled", "rows": rows}
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
