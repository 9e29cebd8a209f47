"""spruce from Python: :func:`finetune`, :func:`prune` and :func:`adapt` (also as
``spruce.finetune`` etc.) run the commands of the same name on the same settings and
return a :class:`~spruce.pipelines.result.RunResult`: the model (in eval mode, on the
CPU), its tokenizer and the report. The commands themselves build their settings from
the options and call these functions.

Settings come from ``config`` -- a run (``PruneRun(...)``), a dict in the layout of a
report's ``config`` block, a whole report dict, or the path of a run.json / report.json
-- and from keyword arguments, which override it:

- a setting by its field name, wherever it sits in the tree: ``target_sparsity=0.9``,
  ``epochs=2``, ``method="pdp"``, ``seed=1``, ``out="runs/x"`` (``None``, the default
  here, writes nothing);
- a whole section by its name, as a config object (replacing the section) or a dict of
  its settings (replacing those alone): ``prune={"method": "pdp"}``,
  ``adapt=AdaptConfig(...)``, ``data=TaskDataConfig(...)``, ``distillation={...}``;
- the data: ``train=``, ``validation=``, ``test=`` (and ``prune``'s ``unlabelled=``)
  take a file path (anything the commands read) or the rows themselves: a list of dicts,
  a dict of column lists, a pandas ``DataFrame`` or a ``datasets.Dataset`` (and, for
  ``unlabelled``, a list of strings). ``train`` is the training *data*; the training
  section (``TrainConfig``, the report's ``config.train``) is ``training=``. Likewise
  ``transfer=`` is the section when given a dict or a ``TransferConfig`` and the
  ``transfer`` setting (what the auxiliary tasks share) when given a string.

A name that is not a setting raises :class:`~spruce.errors.SpruceError` naming the
nearest one; values are checked by the configs, with the commands' messages (which name
the command-line options). Data given in memory is recorded in the report as
``<in-memory: N rows, sha256 ...>``; a rerun from such a report asks for it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spruce.config import comma_names, flag_of, from_config, read_config
from spruce.errors import SpruceError

if TYPE_CHECKING:
    from spruce.pipelines.result import RunResult

__all__ = ["adapt", "finetune", "make_run", "prune"]

COMMANDS = ("finetune", "prune", "adapt")
# Keyword names that mean data (a path or in-memory rows), never a section of settings.
DATA_SPLITS = ("train", "validation", "test", "unlabelled")
# The keyword name of the training section, whose field (and config-block key) is
# ``train``: that name means the training data here.
TRAINING = "training"
# Data a command does not read (its command line has no such option either).
NOT_READ = {"finetune": ("unlabelled",), "adapt": ("unlabelled",), "prune": ()}


def finetune(config: Any = None, /, **settings: Any) -> RunResult:
    """Fine-tune a dense encoder, as ``spruce finetune`` does; returns the fine-tuned
    model, its tokenizer and the report. See the module docstring for ``config`` and
    ``settings``: e.g. ``finetune(train="train.csv", validation="validation.csv",
    epochs=3)``."""
    from spruce.pipelines.finetune import run_finetune

    run = make_run("finetune", config, **settings)
    with quiet_libraries():
        return run_finetune(run)


def prune(config: Any = None, /, **settings: Any) -> RunResult:
    """Prune to a target sparsity, compact and fine-tune, as ``spruce prune`` does;
    returns the compact model, its tokenizer and the report. E.g.
    ``prune(train=rows, target_sparsity=0.9, recipe="plain")``."""
    from spruce.pipelines.prune import run_prune

    run = make_run("prune", config, **settings)
    with quiet_libraries():
        return run_prune(run)


def adapt(config: Any = None, /, **settings: Any) -> RunResult:
    """Structured pruning adapters on a frozen encoder, as ``spruce adapt`` does on text;
    returns the fused compact model, its tokenizer and the report (the adapter's own
    ``task.safetensors`` is written with ``out``). E.g. ``adapt(train="train.csv",
    adapter="splora", criterion="taylor", target_sparsity=0.5)``. An image task (a CNN
    model name or image data, as for the command) returns the fused compact CNN and no
    tokenizer; it needs ``out``."""
    from spruce.pipelines.adapt import is_image_task, run_adapt

    run = make_run("adapt", config, **settings)
    if is_image_task(run):
        from spruce.pipelines.adapt_image import run_image_adapt

        if run.out is None:
            raise SpruceError("an image task writes its outputs", "pass out=DIR")
        with quiet_libraries():
            return run_image_adapt(run)
    with quiet_libraries():
        return run_adapt(run)


def make_run(command: str, config: Any = None, /, **settings: Any) -> Any:
    """The checked run settings (``FinetuneRun``, ``PruneRun`` or ``AdaptRun``) that
    ``spruce.<command>(config, **settings)`` runs with; nothing is read or trained."""
    run_class = _run_class(command)
    if "config" in settings and config is None:
        config = settings.pop("config")
    if isinstance(config, run_class) and not settings:
        return config
    values = _initial_values(run_class, command, config)
    names = _Names(run_class, command)
    for name, value in settings.items():
        names.apply(values, name, value)
    _hold_in_memory_data(values, command)
    return from_config(run_class, values)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """During a run, as in the commands: no load reports and per-file progress bars from
    transformers and datasets (spruce's own bar follows ``progress``); the caller's
    settings of those libraries come back afterwards."""
    import datasets
    import huggingface_hub
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bars_off = datasets.utils.are_progress_bars_disabled()
    levels = (
        transformers.logging.get_verbosity(),
        datasets.logging.get_verbosity(),
        huggingface_hub.logging.get_verbosity(),
    )
    transformer_bars = transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    for library in (transformers, datasets, huggingface_hub):
        library.logging.set_verbosity_error()
    try:
        yield
    finally:
        if not bars_off:
            datasets.enable_progress_bars()
        if transformer_bars:
            transformers.utils.logging.enable_progress_bar()
        for library, level in zip((transformers, datasets, huggingface_hub), levels, strict=True):
            library.logging.set_verbosity(level)


def _run_class(command: str) -> type:
    if command == "finetune":
        from spruce.pipelines.finetune import FinetuneRun

        return FinetuneRun
    if command == "prune":
        from spruce.pipelines.prune import PruneRun

        return PruneRun
    if command == "adapt":
        from spruce.pipelines.adapt import AdaptRun

        return AdaptRun
    raise SpruceError(f"unknown command '{command}'", f"use one of {', '.join(COMMANDS)}")


def _initial_values(run_class: type, command: str, config: Any) -> dict[str, Any]:
    """``config`` as a tree of dicts (sections as dicts, copied), in the layout of a
    report's config block."""
    if config is None:
        return {}
    if isinstance(config, str | os.PathLike):
        return _values_of(run_class, read_config(config, command), "config")
    if isinstance(config, Mapping):
        if "config" in config and "command" in config:  # a whole report
            if config["command"] != command:
                raise SpruceError(
                    f"config is the report of a spruce {config['command']} run",
                    f"give it to spruce.{config['command']}, or a {command} report",
                )
            config = config["config"]
        return _values_of(run_class, config, "config")
    if _is_config(config):
        return _values_of(run_class, config, "config")
    raise SpruceError(
        f"config cannot be a {type(config).__name__}",
        f"give a {run_class.__name__}, a dict of settings or the path of a run.json or report.json",
    )


def _values_of(config_class: type, source: Any, what: str) -> dict[str, Any]:
    """The settings of ``source`` (a ``config_class`` or a mapping) as a dict whose
    sections are dicts in turn; other values stay as they are (checked later)."""
    if _is_config(source):
        if not isinstance(source, config_class):
            raise SpruceError(
                f"{what} takes a {config_class.__name__} or a dict of its settings, got a "
                f"{type(source).__name__}"
            )
        values = {f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.init}
    elif isinstance(source, Mapping):
        values = dict(source)
    else:
        raise SpruceError(
            f"{what} takes a {config_class.__name__} or a dict of its settings, got {_show(source)}"
        )
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        value = values.get(field.name)
        if "section" in field.metadata and (isinstance(value, Mapping) or _is_config(value)):
            values[field.name] = _values_of(hints[field.name], value, field.name)
    return values


def _merge(into: dict[str, Any], values: dict[str, Any], config_class: type) -> None:
    """``values`` over ``into``; a nested section given as a dict replaces only the
    settings it names."""
    hints = typing.get_type_hints(config_class)
    sections = {f.name for f in dataclasses.fields(config_class) if "section" in f.metadata}
    for key, value in values.items():
        if key in sections and isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, hints[key])
        else:
            into[key] = value


class _Names:
    """Where each keyword name goes in a run's settings tree."""

    def __init__(self, run_class: type, command: str) -> None:
        self.command = command
        self.sections: dict[str, tuple[tuple[str, ...], type]] = {}
        self.leaves: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
        # Command-line spellings that are not field names (quiet, no_onnx): for hints.
        self.flags: dict[str, tuple[str, str]] = {}
        self._walk(run_class, ())
        self.sections[TRAINING] = self.sections.pop("train")

    def _walk(self, config_class: type, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            if not field.init or field.metadata.get("in_memory"):
                continue
            where = (*path, field.name)
            if "section" in field.metadata:
                self.sections[field.name] = (where, hints[field.name])
                self._walk(hints[field.name], where)
                continue
            declared = field.metadata.get("setting")
            self.leaves.setdefault(field.name, []).append((where, declared))
            if declared is not None:
                for flag in (flag_of(field, declared), *declared.aliases):
                    spelled = flag.lstrip("-").replace("-", "_")
                    if spelled != field.name:
                        self.flags[spelled] = (flag, field.name)

    def apply(self, values: dict[str, Any], name: str, value: Any) -> None:
        if name in NOT_READ[self.command]:
            raise SpruceError(
                f"spruce.{self.command} reads no {name} data", f"{name}= is for spruce.prune"
            )
        if name in DATA_SPLITS:
            if _is_config(value):
                raise SpruceError(
                    f"{name}= takes data (a path or rows), got a {type(value).__name__}",
                    "give the training settings as training=TrainConfig(...) or by name "
                    "(epochs=..., learning_rate=...)"
                    if name == "train"
                    else f"give {name}= a file path or the rows themselves",
                )
            _node(values, ("data",))[name] = value
        elif name in self.sections and (name not in self.leaves or _is_section_value(value)):
            path, config_class = self.sections[name]
            given = _values_of(config_class, value, f"{name}=")
            parent = _node(values, path[:-1])
            if isinstance(value, Mapping) and isinstance(parent.get(path[-1]), dict):
                _merge(parent[path[-1]], given, config_class)
            else:
                parent[path[-1]] = given
        elif name in self.leaves:
            path, declared = self._leaf(name)
            _node(values, path[:-1])[path[-1]] = _leaf_value(value, path, declared)
        else:
            raise self._unknown(name)

    def _leaf(self, name: str) -> tuple[tuple[str, ...], Any]:
        found = self.leaves[name]
        if len(found) > 1:  # a declared setting wins over a derived field (data.seed)
            found = [leaf for leaf in found if leaf[1] is not None] or found
        if len(found) > 1:
            where = " and ".join(".".join(path) for path, _ in found)
            section = found[0][0][0]
            raise SpruceError(
                f"{name}= is ambiguous in spruce.{self.command} ({where})",
                f"give it inside its section, e.g. {section}={{'{name}': ...}}",
            )
        return found[0]

    def known(self) -> set[str]:
        """Every keyword name this command takes."""
        return {*self.leaves, *self.sections, *DATA_SPLITS} - set(NOT_READ[self.command])

    def _unknown(self, name: str) -> SpruceError:
        problem = f"spruce.{self.command} has no setting '{name}'"
        if name in self.flags:
            flag, field = self.flags[name]
            return SpruceError(problem, f"{flag} on the command line is {field}= here")
        near = difflib.get_close_matches(name, sorted(self.known()), n=1)
        if near:
            return SpruceError(problem, f"did you mean '{near[0]}'?")
        elsewhere = [
            f"spruce.{other}"
            for other in COMMANDS
            if other != self.command and name in _Names(_run_class(other), other).known()
        ]
        if elsewhere:
            return SpruceError(problem, f"it is a setting of {' and '.join(elsewhere)}")
        return SpruceError(
            problem, f"the settings are the options of spruce {self.command} --help, with _ for -"
        )


def _leaf_value(value: Any, path: tuple[str, ...], declared: Any) -> Any:
    """A keyword value in the type its setting holds: ``out`` a Path, paths as text,
    ``"a,b"`` a tuple of names, auxiliary tasks parsed from their specs."""
    name = path[-1]
    if path == ("out",):
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike):
            raise SpruceError(f"out= takes a folder path or None, got {_show(value)}")
        return Path(value)
    if path == ("transfer", "aux"):
        return _aux_tasks(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str) and declared is not None and declared.parse is comma_names:
        try:
            return comma_names(value)
        except ValueError as error:
            raise SpruceError(f"{name}= {error}") from None
    return value


def _aux_tasks(value: Any) -> Any:
    """``"mlm"``, ``["mlm", "task:aux.csv"]``, AuxTask objects or dicts of their fields."""
    from spruce.transfer.config import parse_aux

    items = [value] if isinstance(value, str) or not isinstance(value, list | tuple) else value
    return tuple(parse_aux(item) if isinstance(item, str) else item for item in items)


def _hold_in_memory_data(values: dict[str, Any], command: str) -> None:
    """Move each split given as rows into ``data.tables``, leaving its marker in its
    place; a split given as a path drops a table an earlier run held for it."""
    data = values.get("data")
    if not isinstance(data, dict) or data.get("train") is None:
        raise SpruceError(
            f"spruce.{command} needs training data",
            "give train= a file path or the rows themselves (a list of dicts, a pandas "
            "DataFrame or a datasets.Dataset)",
        )
    from spruce.data.memory import describe_table, in_memory_table, is_in_memory

    tables = dict(data.get("tables") or {})
    for split in DATA_SPLITS:
        value = data.get(split)
        if isinstance(value, os.PathLike):
            value = data[split] = os.fspath(value)
        if value is None or isinstance(value, str):
            if not is_in_memory(value):
                tables.pop(split, None)
            continue
        table = in_memory_table(value, f"{split}=", texts=split == "unlabelled")
        tables[split] = table
        data[split] = describe_table(table)
    data["tables"] = tables or None


def _node(values: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The dict at ``path`` in ``values``, made where missing."""
    node = values
    for key in path:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    return node


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_section_value(value: Any) -> bool:
    return isinstance(value, Mapping) or _is_config(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
