"""results.csv and report.md of a grid, from the report.json of its finished runs.

The report answers three questions about transfer while pruning — **how** to couple the
auxiliary tasks (``coupling``), **what** to pass on (``transfer``) and **when** to use
them (``transfer.schedule``) — each against the ``none`` baseline, then names the best
configuration. Values are in points (metric x 100), mean +- sample std over runs.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spruce.grid.plots import plot_grid
from spruce.grid.runner import is_done, read_failure
from spruce.grid.spec import GridSpec, Run, canonical
from spruce.transfer.config import COUPLINGS, SCHEDULES, TRANSFERS
from spruce.utils.atomic import write_text_atomic


@dataclass
class RunResult:
    """One run's state: ``done`` (with its report), ``failed`` or ``pending``."""

    run: Run
    status: str
    report: dict[str, Any] | None = None
    exit_code: int | None = None
    error: str = ""

    def value(self, metric: str) -> float | None:
        value = (self.report or {}).get("metrics", {}).get(metric)
        return float(value) if isinstance(value, int | float) else None

    def dense_value(self, metric: str) -> float | None:
        """The dense teacher's score on the split of :meth:`value` (runs with
        ``--teacher`` evaluate it beside the pruned model), else None."""
        report = self.report or {}
        split = report.get("metrics_split")
        value = ((report.get("dense_metrics") or {}).get(split) or {}).get(metric)
        return float(value) if isinstance(value, int | float) else None

    def choices(self) -> tuple[str, str, str]:
        """(coupling, transfer, schedule) as run: the report's ``transfer`` section when
        it has one (an older report without it ran without auxiliary tasks), else the
        options, with ``spruce prune``'s defaults."""
        if self.report is not None:
            section = self.report.get("transfer") or {"coupling": "none"}
        else:
            options = self.run.options
            section = {k: options.get(o) for k, o in _CHOICE_OPTIONS.items() if o in options}
        return tuple(  # type: ignore[return-value]
            str(section.get(key) or shown) for key, shown in _SHOWN_WHEN_UNSET.items()
        )


# What the summary shows for a choice the run's coupling does not use (None in its report).
_SHOWN_WHEN_UNSET = {"coupling": "none", "transfer": "both", "schedule": "constant"}
_CHOICE_OPTIONS = {
    "coupling": "transfer.coupling",
    "transfer": "transfer.transfer",
    "schedule": "transfer.schedule",
}


@dataclass
class Config:
    """All seeds of one canonical configuration."""

    options: dict[str, Any]
    axes: dict[str, Any]
    values: list[float] = field(default_factory=list)
    failed: int = 0
    # spruce adapt reports: per-task learned parameters and task-file bytes of each seed.
    learned: list[int] = field(default_factory=list)
    task_bytes: list[int] = field(default_factory=list)
    # The dense teacher of each seed (runs with --teacher): what pruning gives up.
    dense: list[float] = field(default_factory=list)

    @property
    def coupling(self) -> str:
        return str(self.options.get("transfer.coupling", "none"))

    @property
    def context(self) -> str:
        """The options that do not concern auxiliary tasks (data budget, sparsity, ...):
        a configuration is compared with the ``none`` run of the same context."""
        plain = canonical({**self.options, "transfer.coupling": "none"})
        plain.pop("transfer.coupling")
        return json.dumps(plain, sort_keys=True, default=str)


def collect(spec: GridSpec, runs: Sequence[Run], out: Path) -> list[RunResult]:
    results = []
    for run in runs:
        if is_done(run, out):
            path = run.directory(out) / "report.json"
            results.append(RunResult(run, "done", json.loads(path.read_text(encoding="utf-8"))))
        elif (failure := read_failure(run, out)) is not None:
            results.append(
                RunResult(run, "failed", exit_code=failure["exit_code"], error=failure["error"])
            )
        else:
            results.append(RunResult(run, "pending"))
    return results


def summarize(spec: GridSpec, runs: Sequence[Run], out: Path, command: str) -> Path:
    """Write results.csv, the plots and report.md into ``out``; returns report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(spec, runs, out)
    write_text_atomic(out / "results.csv", results_csv(spec, results))
    configs = group(results, spec.metric)
    plots = plot_grid(
        [(c.options, c.values) for c in configs],
        spec.metric,
        out,
        dense=[(c.options, c.dense) for c in configs if c.dense],
    )
    report = render_report(spec, results, configs, command, [p.name for p in plots])
    write_text_atomic(out / "report.md", report)
    return out / "report.md"


def results_csv(spec: GridSpec, results: Sequence[RunResult]) -> str:
    axis = spec.axis_options
    base = [name for name in spec.base if name not in axis]
    metrics = list(dict.fromkeys(k for r in results for k in (r.report or {}).get("metrics", {})))
    dense = f"dense_{spec.metric}"
    header = ["run", "status", "seed", *axis, *base, *metrics, "metrics_split", dense]
    header += ["encoder_sparsity", "total_sparsity", "total_params", "learned_params"]
    header += ["task_file_bytes", "wall_time_s"]
    header += ["exit_code", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for result in results:
        report = result.report or {}
        sparsity, params = report.get("sparsity", {}), report.get("params", {})
        options = result.run.options
        writer.writerow(
            [result.run.id, result.status, result.run.seed]
            + [_show(options[name]) if name in options else "" for name in [*axis, *base]]
            + [report.get("metrics", {}).get(name, "") for name in metrics]
            + [report.get("metrics_split", ""), _blank(result.dense_value(spec.metric))]
            + [sparsity.get("encoder", "")]
            + [sparsity.get("total", ""), params.get("total", "")]
            + [report.get("learned_params", ""), report.get("task_file_bytes", "")]
            + [report.get("wall_time_s", "")]
            + ["" if result.exit_code is None else result.exit_code, result.error]
        )
    return buffer.getvalue()


def group(results: Sequence[RunResult], metric: str) -> list[Config]:
    configs: dict[str, Config] = {}
    for result in results:
        run = result.run
        config = configs.setdefault(run.config, Config(run.template, run.axes))
        value = result.value(metric)
        if value is not None:
            config.values.append(value)
            if (dense := result.dense_value(metric)) is not None:
                config.dense.append(dense)
            report = result.report or {}
            if "learned_params" in report:
                config.learned.append(int(report["learned_params"]))
                config.task_bytes.append(int(report.get("task_file_bytes", 0)))
        config.failed += result.status == "failed"
    return list(configs.values())


def render_report(
    spec: GridSpec,
    results: Sequence[RunResult],
    configs: Sequence[Config],
    command: str,
    plots: Sequence[str],
) -> str:
    lines = _preamble(spec, results, command)
    if spec.command != "prune":
        # How / what / when are questions about spruce prune's transfer settings.
        lines.extend(_best(spec, configs))
        lines.extend(_all_configs(spec, configs))
        return "\n".join(lines)
    lines.extend(_transfer_questions(spec.metric, results))
    lines.extend(_best(spec, configs))
    lines.extend(_plots(plots))
    lines.extend(_all_configs(spec, configs))
    lines.extend(_failed_runs(results))
    return "\n".join(lines)


def _preamble(spec: GridSpec, results: Sequence[RunResult], command: str) -> list[str]:
    """The title, the run counts, how to read the tables, the command and the grid file."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "pending")}
    splits = sorted({str(r.report.get("metrics_split", "?")) for r in results if r.report})
    fence = "~~~~" if "```" in spec.text else "```"
    return [
        f"# Grid: {spec.name}",
        "",
        f"{len(results)} runs: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['pending']} pending. Metric: **{spec.metric}** on the "
        f"{' / '.join(splits) or '(no results yet)'} split, in points (x 100): mean ± sample "
        "std over the runs of a row (n runs); Δ: difference from the mean of the `none` "
        "baseline (no auxiliary task), in points.",
        "",
        "```",
        command,
        "```",
        "",
        f"Grid file `{spec.path}`:",
        "",
        f"{fence}yaml",
        spec.text.rstrip("\n"),
        fence,
        "",
    ]


def _transfer_questions(metric: str, results: Sequence[RunResult]) -> list[str]:
    """One table per question about spruce prune's transfer settings: how (coupling), what
    (transfer) and when (auxiliary schedule), each against the `none` baseline."""
    done = [r for r in results if r.value(metric) is not None]
    baseline = [r.value(metric) for r in done if r.choices()[0] == "none"]
    return [
        *_question_table(
            "How: coupling",
            "All runs grouped by coupling.",
            lambda r: r.choices()[:1],
            ["coupling"],
            done,
            baseline,
            metric,
        ),
        *_question_table(
            "What: transfer",
            "Runs with sequential or joint coupling, grouped by what is transferred.",
            lambda r: r.choices()[:2] if r.choices()[0] in ("sequential", "joint") else None,
            ["coupling", "transfer"],
            done,
            baseline,
            metric,
        ),
        *_question_table(
            "When: auxiliary schedule",
            "Runs with joint or tied coupling, grouped by the auxiliary loss schedule.",
            lambda r: (
                (r.choices()[0], r.choices()[2]) if r.choices()[0] in ("joint", "tied") else None
            ),
            ["coupling", "schedule"],
            done,
            baseline,
            metric,
        ),
    ]


def _question_table(
    title: str,
    note: str,
    key: Callable[[RunResult], tuple[str, ...] | None],
    names: list[str],
    done: Sequence[RunResult],
    baseline: list[float],
    metric: str,
) -> list[str]:
    """A section whose table has a row per value of ``key`` over the finished runs (those
    where it is None left out): n, mean ± std of ``metric`` and Δ from ``baseline``."""
    lines = [f"## {title}", "", note, ""]
    groups: dict[tuple[str, ...], list[float]] = {}
    for result in done:
        if (k := key(result)) is not None:
            groups.setdefault(k, []).append(result.value(metric))
    if not groups:
        return [*lines, "No finished runs for this question.", ""]
    lines.append("| " + " | ".join([*names, "n", metric, "Δ vs none"]) + " |")
    lines.append("|" + "---|" * (len(names) + 3))
    for k in sorted(groups, key=_choice_order):
        values = groups[k]
        lines.append(
            f"| {' | '.join(k)} | {len(values)} | {_mean_std(values)} | "
            f"{_delta(values, baseline)} |"
        )
    lines.append("")
    return lines


def _plots(plots: Sequence[str]) -> list[str]:
    """A section of the plot images, captioned by their file names; none without plots."""
    if not plots:
        return []
    return ["## Plots", "", *(f"![{name[:-4].replace('_', ' ')}]({name})" for name in plots), ""]


def _failed_runs(results: Sequence[RunResult]) -> list[str]:
    """A section listing each failed run with its exit code, log and error; none if none."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return []
    lines = ["## Failed runs", ""]
    for r in failed:
        log = f"runs/{r.run.id}.log"
        lines.append(f"- `{r.run.id}` (exit {r.exit_code}, log `{log}`): {r.error}")
    lines.append("")
    return lines


def _best(spec: GridSpec, configs: Sequence[Config]) -> list[str]:
    lines = ["## Best configuration", ""]
    finished = [c for c in configs if c.values]
    if not finished:
        return [*lines, "No finished runs yet.", ""]
    best = max(finished, key=lambda c: statistics.fmean(c.values))
    baseline = _baseline(best, finished)
    if spec.command != "prune":
        gain = "highest mean of the grid"
    elif best.coupling == "none":
        gain = "the `none` baseline itself"
    elif baseline is None:
        gain = "no finished `none` run with the same other options to compare with"
    else:
        gain = (
            f"{_delta(best.values, baseline.values)} points over `none` with the same other "
            f"options ({_mean_std(baseline.values)}, n = {len(baseline.values)})"
        )
    if best.dense:
        gain += f"; its dense teacher (not pruned) scores {_mean_std(best.dense)}"
    lines.append(
        f"`{_describe(best.axes)}`: {_mean_std(best.values)} (n = {len(best.values)}); {gain}."
    )
    lines.extend(
        [
            "",
            f"Its settings (beside the seed): `{_describe(best.options)}`; the report.json of "
            f"each of its runs reruns it: `spruce {spec.command} --config "
            "OUT/runs/RUN/report.json --out DIR`.",
        ]
    )
    contexts: dict[str, list[Config]] = {}
    for config in finished:
        contexts.setdefault(config.context, []).append(config)
    if len(contexts) > 1 and spec.command == "prune":
        # Other axes (data budget, sparsity, ...) vary: the winner may differ per value.
        teachers = any(c.dense for c in finished)
        lines.extend(["", "Best per setting of the other axes:", ""])
        dense_header = " dense teacher |" if teachers else ""
        lines.append(f"| setting | best | {spec.metric} | n | none | Δ vs none |{dense_header}")
        lines.append("|---|---|---|---|---|---|" + "---|" * teachers)
        for members in contexts.values():
            top = max(members, key=lambda c: statistics.fmean(c.values))
            transfer_keys = {"transfer.coupling", *top.options} - set(json.loads(top.context))
            setting = {k: v for k, v in top.axes.items() if k not in transfer_keys}
            choice = {k: v for k, v in top.axes.items() if k in transfer_keys}
            none = _baseline(top, finished)
            lines.append(
                f"| {_describe(setting)} | {_describe(choice)} | {_mean_std(top.values)} | "
                f"{len(top.values)} | {_mean_std(none.values) if none else '—'} | "
                f"{_delta(top.values, none.values if none else [])} |"
                + (f" {_mean_std(top.dense) if top.dense else '—'} |" if teachers else "")
            )
    return [*lines, ""]


def _baseline(config: Config, finished: Sequence[Config]) -> Config | None:
    """The finished ``none`` configuration with the same non-transfer options."""
    return next((c for c in finished if c.coupling == "none" and c.context == config.context), None)


def _all_configs(spec: GridSpec, configs: Sequence[Config]) -> list[str]:
    names = spec.axis_options
    lines = ["## All configurations", "", "Sorted by mean; options dropped by a coupling: -.", ""]
    adapters = any(c.learned for c in configs)
    extra = ["learned params", "task file bytes"] if adapters else []
    lines.append("| " + " | ".join([*names, "n", spec.metric, *extra, "failed"]) + " |")
    lines.append("|" + "---|" * (len(names) + 3 + len(extra)))
    ordered = sorted(configs, key=lambda c: -statistics.fmean(c.values) if c.values else 1.0)
    for c in ordered:
        cells = [_show(c.axes[name]) if name in c.axes else "-" for name in names]
        shown = _mean_std(c.values) if c.values else "—"
        sizes = (
            [f"{statistics.fmean(c.learned):,.0f}", f"{statistics.fmean(c.task_bytes):,.0f}"]
            if adapters and c.learned
            else ["—"] * len(extra)
        )
        row = [*cells, str(len(c.values)), shown, *sizes, str(c.failed)]
        lines.append(f"| {' | '.join(row)} |")
    return [*lines, ""]


def _choice_order(key: tuple[str, ...]) -> tuple[Any, ...]:
    # The documented order of each choice (none first), not the alphabet.
    known = [*COUPLINGS, *TRANSFERS, *(s.split(":")[0] for s in SCHEDULES)]
    return tuple(
        (known.index(k.split(":")[0]), k) if k.split(":")[0] in known else (99, k) for k in key
    )


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def _delta(values: Sequence[float], baseline: Sequence[float]) -> str:
    if not baseline:
        return "—"
    return f"{100 * (statistics.fmean(values) - statistics.fmean(baseline)):+.2f}"


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in options.items()) or "base options"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
