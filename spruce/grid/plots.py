"""PNG figures of a grid: the metric against sparsity and against the labelled-data budget.

A figure is drawn only where its axis takes more than one value in the grid; a line per
choice would otherwise be a single point. Each line is one configuration (its seeds
averaged, error bars = sample std over seeds), chosen as the best of its kind by mean
over the line's points, so a figure shows what each coupling can do at its best setting.
Where the runs distilled from a dense teacher, its score is drawn as a dashed line: the
distance that pruning, with or without transfer, leaves to the model it started from.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from spruce.transfer.config import COUPLINGS

SPARSITY, EXAMPLES = "prune.target_sparsity", "data.max_train_samples"
# Options that describe how a line uses auxiliary tasks, shown in its legend label.
TRANSFER_LABEL_KEYS = (
    "transfer.transfer", "transfer.schedule", "transfer.aux", "transfer.tie_strength"
)  # fmt: skip
ConfigValues = tuple[Mapping[str, Any], Sequence[float]]
Line = tuple[dict[str, Any], dict[float, list[float]]]


def plot_grid(
    configs: Sequence[ConfigValues],
    metric: str,
    folder: Path,
    dense: Sequence[ConfigValues] = (),
) -> list[Path]:
    """Every figure that applies to this grid; returns the paths written. ``dense`` holds,
    per configuration that had a teacher, the teacher's scores (one per seed)."""
    written = []
    folder = Path(folder)
    for path in (
        plot_metric_vs_sparsity(configs, metric, folder / "metric_vs_sparsity.png", dense),
        plot_metric_vs_examples(configs, metric, folder / "metric_vs_examples.png", dense),
    ):
        if path is not None:
            written.append(path)
    return written


def plot_metric_vs_sparsity(
    configs: Sequence[ConfigValues],
    metric: str,
    path: Path,
    dense: Sequence[ConfigValues] = (),
) -> Path | None:
    """One line per coupling (its best transfer/schedule) over the target sparsity."""
    lines = _lines(configs, SPARSITY)
    if lines is None:
        return None
    best: dict[str, Line] = {}
    for line in lines:
        coupling = str(line[0].get("transfer.coupling", "none"))
        if coupling not in best or _score(line) > _score(best[coupling]):
            best[coupling] = line
    ordered = sorted(best.items(), key=lambda item: _coupling_rank(item[0]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for coupling, line in ordered:
        _draw(ax, line, _label(coupling, line[0]))
    _draw_teacher(ax, dense_line(dense, SPARSITY, ordered[0][1]))
    ax.set(xlabel="target sparsity", ylabel=f"{metric} (points)", title=f"{metric} vs sparsity")
    return _save(fig, ax, path)


def plot_metric_vs_examples(
    configs: Sequence[ConfigValues],
    metric: str,
    path: Path,
    dense: Sequence[ConfigValues] = (),
) -> Path | None:
    """The ``none`` baseline and the best transfer configuration over the number of
    labelled examples (log scale: budgets are usually spaced by factors)."""
    lines = _lines(configs, EXAMPLES)
    if lines is None:
        return None
    baseline = [line for line in lines if line[0].get("transfer.coupling", "none") == "none"]
    transfer = [line for line in lines if line[0].get("transfer.coupling", "none") != "none"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = [max(group, key=_score) for group in (baseline, transfer) if group]
    for line in drawn:
        _draw(ax, line, _label(str(line[0].get("transfer.coupling", "none")), line[0]))
    _draw_teacher(ax, dense_line(dense, EXAMPLES, drawn[0]))
    ax.set_xscale("log")
    # The budgets themselves as ticks: a log axis would label them 3 x 10^2 and so on.
    budgets = sorted({x for line in drawn for x in line[1]})
    ax.set_xticks(budgets, [f"{x:,.0f}" for x in budgets])
    ax.minorticks_off()
    ax.set(
        xlabel="labelled training examples",
        ylabel=f"{metric} (points)",
        title=f"{metric} vs labelled examples",
    )
    return _save(fig, ax, path)


def _lines(configs: Sequence[ConfigValues], x: str) -> list[Line] | None:
    """Configurations that differ only in ``x``, joined into lines; None if ``x`` takes
    fewer than two values."""
    lines: dict[str, Line] = {}
    tied = _tied_to(configs, x)
    for options, values in configs:
        if x not in options or not values:
            continue
        rest = {k: v for k, v in options.items() if k != x and k not in tied}
        key = json.dumps(rest, sort_keys=True, default=str)
        lines.setdefault(key, (rest, {}))[1].setdefault(float(options[x]), []).extend(values)
    xs = {point for _, points in lines.values() for point in points}
    return list(lines.values()) if len(xs) > 1 else None


def dense_line(dense: Sequence[ConfigValues], x: str, like: Line) -> Line | None:
    """The teacher scores along ``x`` of the configurations that make up ``like`` (every
    configuration at a point shares its teacher, so one line's seeds count each once)."""
    for line in _lines(dense, x) or []:
        if line[0] == like[0]:
            return line
    return None


def _tied_to(configs: Sequence[ConfigValues], x: str) -> set[str]:
    """Options that change with ``x`` and with nothing else, such as the teacher made for
    each labelled-data budget: they belong to the point, not to the line, or every
    point would be a line of its own."""
    seen: dict[str, dict[str, set[str]]] = {}
    for options, _ in configs:
        if x not in options:
            continue
        point = json.dumps(options[x], default=str)
        for key, value in options.items():
            if key != x:
                values = seen.setdefault(key, {}).setdefault(point, set())
                values.add(json.dumps(value, sort_keys=True, default=str))
    return {
        key
        for key, by_point in seen.items()
        if all(len(values) == 1 for values in by_point.values())
        and len(set().union(*by_point.values())) > 1
    }


def _score(line: Line) -> float:
    return statistics.fmean(statistics.fmean(values) for values in line[1].values())


def _coupling_rank(coupling: str) -> int:
    return COUPLINGS.index(coupling) if coupling in COUPLINGS else len(COUPLINGS)


def _label(coupling: str, options: Mapping[str, Any]) -> str:
    details = []
    for key in TRANSFER_LABEL_KEYS:
        if key in options and coupling != "none":
            value = options[key]
            shown = "+".join(map(str, value)) if isinstance(value, list) else str(value)
            details.append(f"{key.rsplit('.', 1)[-1]} {shown}")
    return f"{coupling} ({', '.join(details)})" if details else coupling


def _draw(ax: Any, line: Line, label: str, **style: Any) -> None:
    xs = sorted(line[1])
    means = [100 * statistics.fmean(line[1][x]) for x in xs]
    stds = [100 * _std(line[1][x]) for x in xs]
    ax.errorbar(xs, means, yerr=stds, capsize=3, label=label, **{"marker": "o", **style})


def _draw_teacher(ax: Any, line: Line | None) -> None:
    if line is not None:
        label = "dense teacher (not pruned)"
        _draw(ax, line, label, marker="s", linestyle="--", color="0.4")


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _save(fig: Any, ax: Any, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    # A reader (or a browser refreshing report.md) never sees a half-written PNG.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
