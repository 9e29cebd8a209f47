"""Check JSON-like settings against a dataclass's field annotations before building it.

Settings reach ``from_dict`` from report.json files, grid YAML and Python callers. A value
of the wrong type (text where a number belongs, a number where a list belongs) would
otherwise fail deep inside ``validate`` with a ``TypeError`` instead of naming the setting.
Only the types spruce's settings use are understood: ``bool``, ``int``, ``float``, ``str``,
``Any``, ``None``, unions, ``tuple[X, ...]``, ``list[X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from spruce.errors import SpruceError


class _Mismatch(Exception):
    """A value does not fit an annotation; carries what was expected."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def checked_fields(cls: type, values: Any, what: str) -> dict[str, Any]:
    """``values`` as keyword arguments for the dataclass ``cls``: unknown keys and values
    whose type does not fit the annotation raise :class:`SpruceError`; lists become tuples
    where a tuple is annotated and mappings become nested dataclasses."""
    if not isinstance(values, Mapping):
        raise SpruceError(f"{what}s must be a mapping of names to values, got {_show(values)}")
    known = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(known)}"
            raise SpruceError(f"unknown {what} '{key}'", hint)
        try:
            checked[key] = _convert(value, hints[key], str(key))
        except _Mismatch as mismatch:
            raise SpruceError(
                f"{what} '{key}' must be {mismatch.expected}, got {_show(value)}"
            ) from None
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in checked
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SpruceError(f"{what} '{missing[0]}' is missing", "give it a value")
    return checked


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        expected = []
        for option in args:
            try:
                return _convert(value, option, name)
            except _Mismatch as mismatch:
                expected.append(mismatch.expected)
        raise _Mismatch(" or ".join(expected))
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("a whole number")
    if hint is float:
        # JSON writes 1.0 as 1; NaN and infinity would slip through every range check.
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and math.isfinite(value):
            return value
        raise _Mismatch("a finite number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("text")
    if origin in (tuple, list):
        item = args[0] if args else Any
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"a list ({_describe(item)} each)")
        try:
            items = [_convert(element, item, name) for element in value]
        except _Mismatch:
            raise _Mismatch(f"a list ({_describe(item)} each)") from None
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint(**checked_fields(hint, value, f"{name} setting"))
        raise _Mismatch("a mapping of settings")
    return value  # an annotation this helper does not know: the class validates it


def _describe(hint: Any) -> str:
    try:
        _convert(object(), hint, "value")
    except _Mismatch as mismatch:
        return mismatch.expected
    return "any value"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def at_defaults(settings: Any) -> Any:
    """A copy of the dataclass instance ``settings`` with every field that has a default
    set to it. A field without one keeps its value, and a dataclass in it is reset in
    turn: the settings a run would have had if it had chosen nothing it could leave out."""
    changes = {}
    for spec in dataclasses.fields(settings):
        if not spec.init:
            continue
        if spec.default is not dataclasses.MISSING:
            changes[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            changes[spec.name] = spec.default_factory()
        else:
            value = getattr(settings, spec.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                changes[spec.name] = at_defaults(value)
    return dataclasses.replace(settings, **changes)
