"""argparse options generated from config fields (spruce.config.setting), and configs
built back from the parsed options, as transformers' HfArgumentParser does for its
dataclasses.

The flag, help text, default, type and range of an option are those its config field
declares, so the parser rejects what the config would reject, with the same range in its
message, and a new setting is one field. ``spruce.cli`` builds every command's parser
with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from spruce.config.settings import Bounds, Setting, flag_of
from spruce.errors import SpruceError


def add_settings(
    parser: argparse.ArgumentParser,
    config_class: type,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
    *,
    group: argparse._ArgumentGroup | None = None,
    prefix: str = "",
    required: tuple[str, ...] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """One option per setting of ``config_class``, and of the configs nested in it (each
    under its section's title), but those whose dotted path (``prune.method``) or name is
    in ``skip``. Defaults come from ``defaults`` (an instance, for a command whose defaults
    differ) or the class. An option's ``dest`` is its path with ``prefix``, so that settings
    of the same name in two sections stay apart; ``required`` paths must be given even where
    the field has a default (``--out`` on the command line, not in Python). Returns the
    help sections made, by title, for options a command adds by hand."""
    builder = _Builder(parser, skip, required)
    builder.add(config_class, defaults, prefix, group or parser)
    return builder.groups


class _Builder:
    """Adds the options of a config tree to one parser, sharing its help sections and
    mutually exclusive groups."""

    def __init__(self, parser: argparse.ArgumentParser, skip, required) -> None:
        self.parser = parser
        self.skip = set(skip)
        self.required = set(required)
        self.groups: dict[str, argparse._ArgumentGroup] = {}
        self.exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}

    def group(self, title: str) -> argparse._ArgumentGroup:
        if title not in self.groups:
            self.groups[title] = self.parser.add_argument_group(title)
        return self.groups[title]

    def add(self, config_class: type, defaults: Any, prefix: str, target) -> None:
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            path = prefix + field.name
            if path in self.skip or field.name in self.skip:
                continue
            title = field.metadata.get("section")
            if title is not None:
                nested = getattr(defaults, field.name, None)
                self.add(hints[field.name], nested, path + ".", self.group(title))
            elif "setting" in field.metadata:
                declared = field.metadata["setting"]
                where = self.group(declared.group) if declared.group else target
                self.add_option(field, declared, hints[field.name], defaults, path, where)

    def add_option(self, field, declared: Setting, annotation, defaults, path, target) -> None:
        options = _option(field, declared, annotation)
        options["dest"] = path
        default = getattr(defaults, field.name, field.default)
        if path in self.required:
            options["required"] = True
        elif default is dataclasses.MISSING:
            # Not argparse's required: a --config file may give it. config_from_args names
            # it in one line when neither does.
            options["default"] = None
            options["help"] += " (required)"
        else:
            options["default"] = default
            if not declared.inverse:
                options["help"] = _with_default(options["help"], default)
        if declared.exclusive:
            if declared.exclusive not in self.exclusive:
                self.exclusive[declared.exclusive] = target.add_mutually_exclusive_group()
            target = self.exclusive[declared.exclusive]
        target.add_argument(flag_of(field, declared), *declared.aliases, **options)


def _option(field: dataclasses.Field, declared: Setting, annotation: Any) -> dict[str, Any]:
    """add_argument's keywords for one setting, but its dest and default."""
    kind = _base_type(annotation)
    options: dict[str, Any] = {"help": declared.help}
    allowed = declared.allowed()
    if kind is bool:
        options["action"] = "store_false" if declared.inverse else argparse.BooleanOptionalAction
    elif allowed is not None:
        options["choices"] = list(allowed)
    elif declared.parse is not None:
        options["type"] = argument_type(declared.parse)
    else:
        options["type"] = _converter(kind, declared.bounds)
    if kind is not bool and allowed is None:
        options["metavar"] = declared.metavar or field.name.upper()
    return options


def config_from_args(
    config_class: type, args: argparse.Namespace, prefix: str = "", **values: Any
) -> Any:
    """``config_class`` from the parsed options its settings generated (and ``values``),
    nested configs included; a required setting left out is a one-line error."""
    hints = typing.get_type_hints(config_class)
    given: dict[str, Any] = {}
    for field in dataclasses.fields(config_class):
        path = prefix + field.name
        if "section" in field.metadata:
            given[field.name] = config_from_args(hints[field.name], args, path + ".")
        elif hasattr(args, path):  # a setting, or a value a --config file gave
            value = getattr(args, path)
            if value is None and field.default is dataclasses.MISSING:
                flag = flag_of(field, field.metadata["setting"])
                raise SpruceError(f"{flag} is required", "give it, or --config FILE")
            given[field.name] = value
    return config_class(**{**given, **values})


def defaults_from_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every value of the config tree ``config`` by option ``dest`` (its path), runtime
    settings apart: what a config file sets as the defaults of the options, so that options
    given beside it win. Values without an option (a run's auxiliary tasks) ride along
    under their path, for :func:`config_from_args`."""
    found: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        path = prefix + field.name
        declared = field.metadata.get("setting")
        if "section" in field.metadata:
            found.update(defaults_from_config(getattr(config, field.name), path + "."))
        elif "in_memory" in field.metadata:
            continue
        elif declared is None or not declared.runtime:
            found[path] = getattr(config, field.name)
    return found


def _with_default(help_text: str, default: Any) -> str:
    """The help with its default, unless there is none to show or the help names it."""
    if default is None or isinstance(default, bool) or "default" in help_text:
        return help_text
    shown = f"{default:g}" if isinstance(default, float) else default
    return f"{help_text} (default: {shown})"


def _base_type(annotation: Any) -> Any:
    """int, float, str, bool (or a container type) out of ``X`` or ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation  # int | float: parse decides
    return annotation


def _converter(kind: type, bounds: Bounds | None) -> Callable[[str], Any]:
    """Parse one value of ``kind``, rejecting what lies outside ``bounds`` in argparse's way."""
    what = {int: "a whole number", float: "a finite number"}.get(kind)
    if what is None:
        return kind

    def convert(text: str) -> Any:
        value = number(text, kind, what)
        finite = kind is int or math.isfinite(value)
        if not finite or (bounds is not None and not bounds.holds(value)):
            raise argparse.ArgumentTypeError(f"expected {_expected(what, bounds)}, got '{text}'")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some of its messages
    return convert


def _expected(what: str, bounds: Bounds | None) -> str:
    """ "a positive whole number", "a finite number in [0, 1)"."""
    if bounds is None:
        return what
    words = bounds.describe()
    return f"a positive {what[2:]}" if words == "positive" else f"{what} {words}"


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ValueError becomes argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
