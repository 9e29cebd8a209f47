"""Command-line options generated from config fields (spruce.config.setting).

The flag, help text, default, type and range of an option are those its config field
declares, so the parser rejects what the config would reject, with the same range in its
message, and a new setting is one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from spruce.cli.parsing import argument_type, number
from spruce.config import Bounds, Setting, flag_of, settings_of


def add_settings(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    config_class: type,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
) -> None:
    """One option per setting of ``config_class`` but those named in ``skip``; defaults
    from ``defaults`` (an instance, for a command whose defaults differ) or the class's."""
    hints = typing.get_type_hints(config_class)
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for field, declared in settings_of(config_class):
        if field.name in skip:
            continue
        options = _option(field, declared, hints[field.name])
        if field.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = getattr(defaults, field.name, field.default)
            options["help"] = _with_default(options["help"], options["default"])
        target = group
        if declared.exclusive:
            if declared.exclusive not in exclusive:
                exclusive[declared.exclusive] = group.add_mutually_exclusive_group()
            target = exclusive[declared.exclusive]
        target.add_argument(flag_of(field, declared), *declared.aliases, **options)


def _option(field: dataclasses.Field, declared: Setting, annotation: Any) -> dict[str, Any]:
    """add_argument's keywords for one setting, but its default."""
    kind = _base_type(annotation)
    options: dict[str, Any] = {"dest": field.name, "help": declared.help}
    allowed = declared.allowed()
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif allowed is not None:
        options["choices"] = list(allowed)
    elif declared.parse is not None:
        options["type"] = argument_type(declared.parse)
    else:
        options["type"] = _converter(kind, declared.bounds)
    if declared.metavar:
        options["metavar"] = declared.metavar
    return options


def config_from_args(config_class: type, args: argparse.Namespace, **values: Any) -> Any:
    """``config_class`` from the parsed options its settings generated (and ``values``)."""
    given = {
        field.name: getattr(args, field.name)
        for field, _ in settings_of(config_class)
        if hasattr(args, field.name)
    }
    return config_class(**{**given, **values})


def _with_default(help_text: str, default: Any) -> str:
    """The help with its default, unless there is none to show or the help names it."""
    if default is None or isinstance(default, bool) or "default" in help_text:
        return help_text
    shown = f"{default:g}" if isinstance(default, float) else default
    return f"{help_text} (default: {shown})"


def _base_type(annotation: Any) -> Any:
    """int, float, str, bool (or a container type) out of ``X`` or ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
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
