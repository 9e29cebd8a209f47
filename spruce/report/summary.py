"""The lines a command prints about its report: what a user reads first."""

from __future__ import annotations

from typing import Any


def summary(report: dict[str, Any]) -> str:
    """One or two lines: the metrics, and what pruning or adapting gave."""
    command = report.get("command")
    if "achieved" in report.get("sparsity", {}):
        return _image_adapt(report)  # a CNN task's report (spruce adapt on images)
    if command == "finetune":
        return _finetune(report)
    if command == "prune":
        return _prune(report)
    return _adapt(report)


def _metrics(report: dict[str, Any]) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
    return f"{report['metrics_split']} {shown}"


def _finetune(report: dict[str, Any]) -> str:
    return (
        f"{report['task']}: {_metrics(report)} ({report['train_examples']} labelled examples, "
        f"{report['wall_time_s']:.0f} s)"
    )


def _prune(report: dict[str, Any]) -> str:
    params = report["params"]
    line = (
        f"{report['task']}: {_metrics(report)}; encoder sparsity "
        f"{report['sparsity']['encoder']:.1%}, params {params['total']:,} of "
        f"{params['dense_total']:,}"
    )
    if "latency_ms" not in report:
        return line
    lat = report["latency_ms"]
    return (
        f"{line}\nlatency batch 1: {lat['batch_1']['dense']:.1f} -> "
        f"{lat['batch_1']['pruned']:.1f} ms; batch 32: {lat['batch_32']['dense']:.1f} -> "
        f"{lat['batch_32']['pruned']:.1f} ms (FLOPs speed-up {report['flops']['speedup']}x"
        + _runtime_note(lat)
    )


def _runtime_note(latency: dict[str, Any]) -> str:
    """How the latency was measured, closing the summary line's parenthesis."""
    runtime = latency.get("runtime", "eager")
    if runtime == "compiled":
        return ", torch.compile)"
    if runtime == "best":
        won = latency["chosen"]["batch_32"]
        return f", batch 32 faster in: dense {won['dense']}, pruned {won['pruned']})"
    return ")"


def _adapt(report: dict[str, Any]) -> str:
    return (
        f"{report['task']} ({report['mode']}, {report['criterion']}): {_metrics(report)}; "
        f"encoder sparsity {report['sparsity']['encoder']:.1%}; learned "
        f"{report['learned_params']:,} numbers, task file {report['task_file_bytes']:,} bytes "
        f"(base {report['base_model_bytes']:,})"
    )


def _image_adapt(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    split = "test" if "test" in metrics else next(iter(metrics), None)
    accuracy = metrics.get(split, {}).get("accuracy") if split else None
    shown = f"{split} accuracy {accuracy:.4f}; " if accuracy is not None else ""
    return (
        f"{report['model']} ({report['mode']}, {report['criterion']}): {shown}parameter "
        f"sparsity {report['sparsity']['achieved']:.1%}; learned "
        f"{report['learned_params']:,} numbers, task file {report['task_file_bytes']:,} bytes"
    )
