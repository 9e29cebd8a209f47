"""What a grid file's keys mean: paths into the run settings of ``spruce prune|adapt``.

A key is a config field path (``prune.target_sparsity``, ``data.max_train_samples``,
``transfer.aux``); a field's own name where no other field has it (``target_sparsity``)
and its command-line spelling (``target-sparsity``, ``no-latency``) are accepted too and
normalised to the path. Values are checked by the config classes themselves when the
runs are built (:func:`run_config`), so a grid accepts what ``--config`` accepts.

``transfer.aux`` takes the command line's task specs (``mlm``, ``task:PATH``) or mappings
of :class:`~spruce.transfer.config.AuxTask` fields; ``transfer.aux.weight``,
``transfer.aux.text_columns`` and ``transfer.aux.label_column`` (``aux-weight``, ...)
apply to those specs as ``--aux-weight`` and its siblings do.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from spruce.config import flag_of, from_config, to_config
from spruce.errors import SpruceError
from spruce.transfer.config import aux_tasks

COMMANDS = ("prune", "adapt")  # the spruce commands a grid can run
AUX = "transfer.aux"
AUX_MODIFIERS = {  # path -> the command-line option it stands for
    "transfer.aux.weight": "aux-weight",
    "transfer.aux.text_columns": "aux-text-columns",
    "transfer.aux.label_column": "aux-label-column",
}
# Set by the grid for every run; in a grid file they would silently fight with it.
RESERVED = {
    "train.seed": "list the seeds under 'seeds:'",
    "data.seed": "list the seeds under 'seeds:'",
    "out": "set the grid's folder with the top-level 'out:' (or --out)",
    "overwrite": "finished runs are kept and skipped; delete a run's folder to redo it",
    "threads": "set the top-level 'threads:'",
    "resume": "a stopped grid resumes its unfinished runs by itself",
    "progress": "runs log without progress bars",
}


@dataclass(frozen=True)
class Key:
    """One settable value of a run: its path, whether it is true/false, whether it takes
    a list, and how the command line reads it from text (None: it is text)."""

    path: str
    boolean: bool = False
    listed: bool = False
    parse: Callable[[str], Any] | None = None
    flags: tuple[str, ...] = ()  # its command-line spellings, without "--"

    def read(self, value: Any) -> Any:
        """A text value as the command line reads it (YAML reads ``5e-3`` as text)."""
        if not isinstance(value, str) or self.parse is None:
            return value
        try:
            return self.parse(value)
        except ValueError as error:
            raise SpruceError(f"{self.path}: {error}") from None


def run_class(command: str) -> type:
    from spruce.pipelines.adapt import AdaptRun
    from spruce.pipelines.prune import PruneRun

    return {"prune": PruneRun, "adapt": AdaptRun}[command]


@cache
def keys(command: str) -> dict[str, Key]:
    """Every settable path of ``command``'s run settings (runtime ones but ``device``
    and ``checkpoint_steps`` are the grid's own)."""
    found = dict(_walk(run_class(command), ""))
    if command == "prune":
        found[AUX] = Key(AUX, listed=True)
        found["transfer.aux.weight"] = Key("transfer.aux.weight", listed=True)
        found["transfer.aux.text_columns"] = Key("transfer.aux.text_columns", listed=True)
        found["transfer.aux.label_column"] = Key("transfer.aux.label_column")
    return found


def _walk(config_class: type, prefix: str):
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        path = prefix + field.name
        if "section" in field.metadata:
            yield from _walk(hints[field.name], path + ".")
        elif "setting" in field.metadata:
            kind = typing.get_args(hints[field.name]) or (hints[field.name],)
            listed = any(typing.get_origin(k) is tuple for k in kind)
            declared = field.metadata["setting"]
            parse = declared.parse or _number_parser(kind)
            names = [flag_of(field, declared), *declared.aliases]
            flags = tuple(n[2:] for n in names if n.startswith("--"))
            yield path, Key(path, bool in kind, listed, parse, flags)


def _number_parser(kind: tuple[Any, ...]) -> Callable[[str], Any] | None:
    """int or float from text, for a setting that holds one."""
    for number, what in ((int, "a whole number"), (float, "a number")):
        if number in kind and str not in kind:

            def parse(text: str, number: type = number, what: str = what) -> Any:
                try:
                    return number(text)
                except ValueError:
                    raise ValueError(f"expected {what}, got '{text}'") from None

            return parse
    return None


@cache
def spellings(command: str) -> dict[str, tuple[str, bool]]:
    """Each accepted spelling -> (path, negated): the path itself, a field's name where
    it is unique, its flags without ``--`` and ``no-FLAG`` for true/false settings."""
    table: dict[str, tuple[str, bool]] = {path: (path, False) for path in keys(command)}
    leaves: dict[str, list[str]] = {}
    for path in keys(command):
        leaves.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for leaf, paths in leaves.items():
        if len(paths) == 1 and leaf not in table:
            table[leaf] = (paths[0], False)
    for path, key in keys(command).items():
        for flag in key.flags:
            table.setdefault(flag, (path, False))
            if key.boolean:
                table.setdefault(f"no-{flag}", (path, True))
    for path, option in AUX_MODIFIERS.items():
        if path in keys(command):
            table[option] = (path, False)
    if command == "prune":
        table["aux"] = (AUX, False)
    return table


def normalise(command: str, name: Any, where: str) -> tuple[str, bool]:
    """The path a grid key stands for, and whether its value is negated (``no-X``)."""
    table = spellings(command)
    if name not in table:
        near = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f"did you mean '{near[0]}'?" if near else "use a config path, e.g. prune.method"
        raise SpruceError(f"unknown spruce {command} setting '{name}' (in {where})", hint)
    path, negated = table[name]
    if path in RESERVED:
        raise SpruceError(f"'{name}' in {where} is set by spruce grid", RESERVED[path])
    return path, negated


def run_config(command: str, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One run's config block (what ``--config`` reads) from its grid options, checked
    by the config classes: a wrong value fails here, before any run starts."""
    nested: dict[str, Any] = {}
    for path, value in options.items():
        if path == AUX or path in AUX_MODIFIERS:
            continue
        _put(nested, path, value)
    _put(nested, "train.seed", seed)
    if options.get(AUX) is not None:
        tasks = aux_tasks(
            _listed(options[AUX]),
            weights=_listed(options.get("transfer.aux.weight")),
            text_columns=_listed(options.get("transfer.aux.text_columns")) or None,
            label_column=options.get("transfer.aux.label_column"),
        )
        _put(nested, AUX, [task.to_dict() for task in tasks])
    run = from_config(run_class(command), nested)
    _check(run)
    return to_config(run)


def _check(run: Any) -> None:
    """What spans settings (units a method cannot prune, ...), on a copy: ``validate``
    fills recipe values in, and the file keeps what the grid says."""
    checked = copy.deepcopy(run)
    for field in dataclasses.fields(checked):
        section = getattr(checked, field.name)
        if "section" in field.metadata and hasattr(section, "validate"):
            section.validate()


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _put(nested: dict[str, Any], path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for section in sections:
        nested = nested.setdefault(section, {})
    nested[name] = value
