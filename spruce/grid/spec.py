"""GRID.yaml: parsing, strict validation, and expansion into distinct ``spruce prune`` runs.

Validation is strict because a grid runs for hours: an unknown key, an unknown setting
(with the nearest valid one suggested) or a bad value fails before the first run. Run
options are keyed by config path (:mod:`spruce.grid.settings`).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spruce.errors import SpruceError
from spruce.grid import settings
from spruce.report.metrics import METRICS
from spruce.transfer.config import IGNORED_BY_COUPLING

Scalar = str | int | float

TOP_KEYS = [
    "name", "command", "out", "seeds", "jobs", "threads", "metric", "base", "grid",
    "backend", "gpus_per_run",
]  # fmt: skip
BACKENDS = ("local", "ray")  # where runs are launched: spruce.grid.runner.run_grid


@dataclass(frozen=True)
class Axis:
    """One grid axis; every value is normalised to a mapping of config paths."""

    name: str
    values: list[dict[str, Any]]

    @property
    def options(self) -> list[str]:
        return list(dict.fromkeys(key for value in self.values for key in value))


@dataclass
class GridSpec:
    """A parsed, validated grid file."""

    path: Path
    text: str
    name: str
    out: Path | None
    seeds: list[int]
    jobs: int | str
    threads: int
    metric: str
    base: dict[str, Any]
    axes: list[Axis]
    command: str = "prune"
    backend: str = "local"
    # GPUs Ray reserves for each run (fractions share one); the local backend ignores it.
    gpus_per_run: float = 0

    @property
    def root(self) -> Path:
        """The YAML's folder: relative data paths are looked up here first
        (:func:`resolve_path`)."""
        return self.path.resolve().parent

    @property
    def axis_options(self) -> list[str]:
        return list(dict.fromkeys(name for axis in self.axes for name in axis.options))

    def job_count(self, override: int | None = None) -> int:
        if override is not None:
            return override
        if self.jobs == "auto":
            return max(1, (os.cpu_count() or 1) // self.threads)
        return int(self.jobs)


@dataclass(frozen=True)
class Run:
    """One ``spruce prune`` run: canonical options (config paths and YAML values, without
    the seed, ``{seed}`` filled in), the same options with ``{seed}`` left as written
    (shared by every seed of the configuration) and the grid-axis options that remain
    after canonicalisation."""

    id: str
    seed: int
    options: dict[str, Any]
    axes: dict[str, Any]
    template: dict[str, Any]

    @property
    def config(self) -> str:
        """Identity of the configuration across seeds."""
        return json.dumps(self.template, sort_keys=True, default=str)

    def directory(self, out: Path) -> Path:
        return Path(out) / "runs" / self.id

    def log(self, out: Path) -> Path:
        return Path(out) / "runs" / f"{self.id}.log"

    def failure(self, out: Path) -> Path:
        return Path(out) / "runs" / f"{self.id}.failed.json"

    def stop_request(self, out: Path) -> Path:
        """The file by which a Ray driver asks the worker running this run to stop it."""
        return Path(out) / "runs" / f"{self.id}.stop"


def check_keys(values: Mapping[str, Any], known: list[str], what: str) -> None:
    """Reject unknown keys, naming the nearest valid one."""
    for key in values:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(known)}"
            raise SpruceError(f"unknown {what} '{key}'", hint)


def resolve_path(text: str, root: Path, cwd: Path) -> str:
    """A relative path (or the PATH of ``kind:PATH``) that exists in ``root`` (the YAML
    file's folder) becomes absolute; anything else is kept as written, i.e. relative to
    the directory ``spruce grid`` runs in. Only strings that look like paths (a ``/`` or
    a file suffix) are looked up, so words such as ``mlm`` or ``joint`` never change."""
    if root.resolve() == cwd.resolve():
        return text
    prefix, sep, rest = text.partition(":")
    head, candidate = (f"{prefix}:", rest) if sep and prefix and "/" not in prefix else ("", text)
    path = Path(candidate)
    if not candidate or path.is_absolute() or ("/" not in candidate and not path.suffix):
        return text
    if (root / path).exists():
        return head + str((root / path).resolve())
    return text


@contextlib.contextmanager
def _in_file(path: Path) -> Iterator[None]:
    try:
        yield
    except SpruceError as error:
        raise SpruceError(f"{path}: {error.problem}", error.fix) from None


def load_grid(path: Path) -> GridSpec:
    """Read and validate a grid file."""
    path = Path(path)
    if not path.is_file():
        raise SpruceError(f"grid file {path} does not exist", "check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SpruceError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded)",
            "convert the file to UTF-8",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or (str(error).splitlines() or ["invalid"])[0]
        raise SpruceError(f"{path}{where}: {problem}", "fix the YAML syntax") from None
    except RecursionError:
        raise SpruceError(
            f"{path} is nested too deeply to be read", "write a flat grid file"
        ) from None
    command = data.get("command", "prune") if isinstance(data, dict) else "prune"
    if command not in settings.COMMANDS:
        raise SpruceError(
            f"{path}: command '{command}' cannot be run by a grid",
            f"use one of {', '.join(settings.COMMANDS)}",
        )
    with _in_file(path):
        return _parse(path, text, data, command)


def _parse(path: Path, text: str, data: Any, command: str) -> GridSpec:
    if not isinstance(data, dict):
        raise SpruceError("a grid file must be a mapping of keys (name, seeds, base, grid, ...)")
    check_keys(data, TOP_KEYS, "grid file key")
    base = _options(data.get("base") or {}, command, "base")
    axes = _axes(data.get("grid") or {}, command)
    sources = {name: "base" for name in base}
    for axis in axes:
        for name in axis.options:
            if name in sources:
                raise SpruceError(
                    f"setting '{name}' is set both in {sources[name]} and by grid axis "
                    f"'{axis.name}'",
                    "set each setting in one place only",
                )
            sources[name] = f"grid axis '{axis.name}'"
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SpruceError(f"seeds must be a list of distinct whole numbers, got {seeds!r}")
    threads = data.get("threads", 1)
    if not _positive_int(threads):
        raise SpruceError(f"threads must be a positive whole number, got {threads!r}")
    jobs = data.get("jobs", "auto")
    if jobs != "auto" and not _positive_int(jobs):
        raise SpruceError(f"jobs must be 'auto' or a positive whole number, got {jobs!r}")
    metric = data.get("metric", "accuracy")
    if not isinstance(metric, str):
        raise SpruceError(f"metric must be a name, got {metric!r}")
    check_keys({metric: None}, sorted(METRICS), "metric")
    out = data.get("out")
    if out is not None and (not isinstance(out, str) or not out.strip()):
        raise SpruceError(f"out must be a folder path, got {out!r}")
    backend = data.get("backend", "local")
    if backend not in BACKENDS:
        raise SpruceError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    gpus = data.get("gpus_per_run", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not 0 <= gpus < 1e6:
        raise SpruceError(
            f"gpus_per_run must be a number of GPUs >= 0, got {gpus!r}",
            "write e.g. gpus_per_run: 1 (or 0.5 to share a GPU between two runs)",
        )
    name = data.get("name", path.stem)
    return GridSpec(
        path=path,
        text=text,
        name=str(name),
        out=Path(out) if out is not None else None,
        seeds=list(seeds),
        jobs=jobs,
        threads=threads,
        metric=metric,
        base=base,
        axes=axes,
        command=command,
        backend=backend,
        gpus_per_run=gpus,
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _axes(grid: Any, command: str) -> list[Axis]:
    if not isinstance(grid, dict):
        raise SpruceError("grid must map axis names to lists of values")
    axes = []
    for name, values in grid.items():
        if not isinstance(values, list):
            raise SpruceError(
                f"grid axis '{name}' must be a list of values, got {values!r}",
                f"write e.g. {name}: [{values!r}]",
            )
        if not values:
            raise SpruceError(f"grid axis '{name}' is empty", "give it at least one value")
        mappings = [isinstance(v, dict) for v in values]
        if all(mappings) and not _is_section(command, name):
            # A named axis whose values each set several settings together.
            axes.append(
                Axis(str(name), [_options(v, command, f"grid axis '{name}'") for v in values])
            )
        elif any(mappings) and not all(mappings):
            raise SpruceError(
                f"grid axis '{name}' mixes mappings of settings and plain values",
                "use only mappings (a named axis) or only values of one setting",
            )
        else:
            parsed = [_options({name: v}, command, "grid") for v in values]
            path = next(iter(parsed[0]), str(name))
            axes.append(Axis(path, parsed))
    return axes


def _is_section(command: str, name: Any) -> bool:
    """``prune`` in ``prune: {method: pdp}``: a section whose settings a mapping gives
    (not ``transfer.aux``, whose tasks may be mappings themselves)."""
    if name in ("aux", settings.AUX):
        return False
    return any(path.startswith(f"{name}.") for path in settings.keys(command))


def _options(values: Any, command: str, where: str, prefix: str = "") -> dict[str, Any]:
    """Validated ``path -> value``; spellings normalised to config paths, a section's
    mapping (``prune: {method: pdp}``) flattened."""
    if not isinstance(values, dict):
        raise SpruceError(f"{where} must map spruce {command} settings to values")
    options: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and _is_section(command, prefix + str(key)):
            found = _options(value, command, where, f"{prefix}{key}.")
        else:
            path, negated = settings.normalise(command, prefix + str(key), where)
            found = {path: _value(key, settings.keys(command)[path], value, negated, where)}
        for path, checked in found.items():
            if path in options:
                raise SpruceError(f"setting '{path}' is given twice in {where} (once as an alias)")
            options[path] = checked
    return options


def _value(name: Any, key: settings.Key, value: Any, negated: bool, where: str) -> Any:
    def plain(item: Any) -> bool:
        return isinstance(item, Scalar) and not isinstance(item, bool)

    if value is None:
        return None  # the setting is left at its default
    if key.boolean:
        if not isinstance(value, bool):
            raise SpruceError(f"'{name}' in {where} is true or false, not {value!r}")
        return value != negated
    if isinstance(value, list):
        if not key.listed:
            raise SpruceError(
                f"'{name}' in {where} takes one value, got the list {value!r}",
                "list values are only for settings that hold several",
            )
        if not value or not all(plain(item) or isinstance(item, dict) for item in value):
            raise SpruceError(f"'{name}' in {where} needs a non-empty list of plain values")
        return list(value)
    if not plain(value) and not (key.path == settings.AUX and isinstance(value, dict)):
        raise SpruceError(
            f"'{name}' in {where} takes a value, got {value!r}",
            "quote it if you meant the text (YAML reads yes/no/on/off as true/false)",
        )
    return key.read(value)


def canonical(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` minus the transfer settings the run's coupling ignores: a grid over
    couplings x transfers x schedules then runs each distinct behaviour once (``none``
    once per seed). Without a coupling, auxiliary tasks mean joint; without either, the
    recipe decides, and under any recipe but ``plain`` every setting may apply."""
    coupling = options.get("transfer.coupling")
    if coupling is None and options.get(settings.AUX):
        coupling = "joint"
    if coupling is None:
        if options.get("prune.recipe", "distill") != "plain":
            return dict(options)
        coupling = "none"
    ignored = {f"transfer.{name}" for name in IGNORED_BY_COUPLING.get(str(coupling), ())}
    if settings.AUX in ignored:
        ignored |= set(settings.AUX_MODIFIERS)
    kept = {key: value for key, value in options.items() if key not in ignored}
    if coupling == "joint" and kept.get("transfer.transfer") == "masks":
        kept["transfer.transfer"] = "both"  # joint shares the encoder either way
    return kept


def expand(spec: GridSpec) -> list[Run]:
    """Axes x seeds, canonicalised and deduplicated, seeds outermost so that one seed of
    every configuration finishes before the second seed of any."""
    combos = itertools.product(*(axis.values for axis in spec.axes))
    configurations = []
    seen_configs = set()
    for combo in combos:
        options = dict(spec.base)
        for part in combo:
            options.update(part)
        options = {k: v for k, v in options.items() if v is not None}
        # Only spruce prune has settings that make other settings irrelevant (couplings).
        kept = canonical(options) if spec.command == "prune" else options
        key = json.dumps(kept, sort_keys=True, default=str)
        if key not in seen_configs:
            seen_configs.add(key)
            axes = {k: kept[k] for k in spec.axis_options if k in kept}
            configurations.append((kept, axes))
    slugs = [_slug(axes) for _, axes in configurations]
    ids = []
    for slug, (kept, _) in zip(slugs, configurations, strict=True):
        if slugs.count(slug) > 1:
            digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode())
            slug = f"{slug}-{digest.hexdigest()[:6]}"
        ids.append(slug)
    return [
        Run(
            id=f"{slug}-s{seed}",
            seed=seed,
            options=with_seed(kept, seed),
            axes=axes,
            template=kept,
        )
        for seed in spec.seeds
        for slug, (kept, axes) in zip(ids, configurations, strict=True)
    ]


SEED_FIELD = "{seed}"


def with_seed(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """``{seed}`` in a text value becomes the run's seed, so that a run can name what was
    made for its seed, e.g. ``teacher: runs/teachers/sst2-s{seed}``."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(SEED_FIELD, str(seed))
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value

    return {name: fill(value) for name, value in options.items()}


def _slug(axes: dict[str, Any]) -> str:
    parts = []
    for name, value in axes.items():
        if isinstance(value, bool):  # a true/false axis: its name marks the runs
            leaf = name.rsplit(".", 1)[-1]
            parts.append(leaf if value else f"no-{leaf}")
        else:
            items = value if isinstance(value, list) else [value]
            parts.append("+".join(_value_slug(item) for item in items))
    slug = re.sub(r"[^A-Za-z0-9.+_-]+", "-", "-".join(parts)).strip("-.") or "run"
    if len(slug) > 80:
        slug = f"{slug[:72]}-{hashlib.sha1(slug.encode()).hexdigest()[:6]}"
    return slug


def _value_slug(value: Any) -> str:
    if isinstance(value, dict):  # an auxiliary task as a mapping: its kind and path
        return _value_slug(":".join(str(value[k]) for k in ("kind", "path") if value.get(k)))
    # The run id ends in -sSEED already.
    text = re.sub(r"[-_.]?s?\{seed\}", "", str(value))
    prefix, sep, rest = text.partition(":")
    if sep and "/" not in prefix and ("/" in rest or "." in rest):
        return f"{prefix}-{_value_slug(rest)}"
    if "/" in text:
        # A path: its folder and file name say which data set it is.
        path = Path(text)
        return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem
    return text
