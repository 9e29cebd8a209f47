"""A run's settings as JSON: the ``config`` block of report.json, and ``--config FILE``.

``to_config`` writes every setting of a config tree but those marked ``runtime`` (the
output folder, threads, device: where a run executes, not what it computes), so the block
of a report reruns that run. ``read_config`` accepts that block, or a whole report.json,
and checks it against the config classes before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from spruce.errors import SpruceError
from spruce.utils.fields import checked_fields

Config = TypeVar("Config")


def to_config(config: Any) -> dict[str, Any]:
    """The config tree ``config`` as JSON-ready values, without its runtime settings and
    what a Python caller held in memory (see :func:`spruce.config.in_memory`)."""
    values = {}
    for field in dataclasses.fields(config):
        declared = field.metadata.get("setting")
        if (declared is not None and declared.runtime) or "in_memory" in field.metadata:
            continue
        values[field.name] = _plain(getattr(config, field.name))
    return values


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_config(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_config(config_class: type[Config], values: Any) -> Config:
    """``config_class`` from what :func:`to_config` wrote; an unknown key or a value of
    the wrong type is a :class:`SpruceError` naming it."""
    return config_class(**checked_fields(config_class, values, "setting"))


def read_config(path: str | Path, command: str) -> dict[str, Any]:
    """The settings in ``path``: a report.json of a ``command`` run (its ``config`` block)
    or a file holding such a block."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpruceError(
            f"--config {path} does not exist", "give a run.json or a report.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SpruceError(f"--config {path} is not readable JSON ({error})") from None
    if not isinstance(values, Mapping):
        raise SpruceError(f"--config {path} must hold a JSON object of settings")
    if "config" in values and "command" in values:  # a report.json
        if values["command"] != command:
            raise SpruceError(
                f"--config {path} is the report of a spruce {values['command']} run",
                f"give it to spruce {values['command']}, or a {command} report",
            )
        values = values["config"]
    return dict(values)
