"""Command-line options generated from config fields (spruce.config.setting).

The flag, help text, default, type and range of an option are those its config field
declares, so the parser rejects what the config would reject, with the same range in its
message, and a new setting is one field.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from spruce.config import Bounds, flag_of, settings_of


def add_settings(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    config_class: type,
    defaults: Any = None,
) -> None:
    """One option per setting of ``config_class``; defaults from ``defaults`` (an instance
    of it, for a command whose defaults differ) or the class's own."""
    defaults = defaults if defaults is not None else config_class()
    hints = typing.get_type_hints(config_class)
    for field, declared in settings_of(config_class):
        kind = _base_type(hints[field.name])
        options: dict[str, Any] = {"dest": field.name, "help": declared.help}
        allowed = declared.allowed()
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif allowed is not None:
            options["choices"] = list(allowed)
        else:
            options["type"] = _converter(kind, declared.bounds)
        if declared.metavar:
            options["metavar"] = declared.metavar
        options["default"] = getattr(defaults, field.name)
        group.add_argument(flag_of(field, declared), *declared.aliases, **options)


def config_from_args(config_class: type, args: argparse.Namespace, **values: Any) -> Any:
    """``config_class`` from the parsed options its settings generated (and ``values``)."""
    given = {field.name: getattr(args, field.name) for field, _ in settings_of(config_class)}
    return config_class(**{**given, **values})


def _base_type(annotation: Any) -> type:
    """int, float, str or bool out of ``X`` or ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def _converter(kind: type, bounds: Bounds | None) -> Callable[[str], Any]:
    """Parse one value of ``kind``, rejecting what lies outside ``bounds`` in argparse's way."""
    what = {int: "a whole number", float: "a finite number"}.get(kind)
    if what is None:
        return kind

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        finite = kind is int or math.isfinite(value)
        if not finite or (bounds is not None and not bounds.holds(value)):
            range_text = f" {bounds.describe()}" if bounds is not None else ""
            raise argparse.ArgumentTypeError(f"expected {what}{range_text}, got '{text}'")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some of its messages
    return convert
