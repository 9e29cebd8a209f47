"""Settings declared once: a dataclass field carries its flag, help text and valid range.

A config class declares each setting with :func:`setting`; its ``__post_init__`` calls
:func:`check_settings`, so a config built from the command line, a report.json, a grid
file or Python is checked by the same rule, and ``spruce.cli`` generates its options from
the same fields (:mod:`spruce.config.arguments`). Nothing here knows argparse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from spruce.errors import SpruceError


@dataclass(frozen=True)
class Bounds:
    """A closed or half-open numeric range; ``None`` leaves that side unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The range in words, as in "--epochs must be positive"."""
        if self.low == 0 and self.low_open and self.high is None:
            return "positive"
        if self.high is None:
            return f"at least {_number(self.low)}"
        if self.low is not None and not self.low_open and not self.high_open:
            return f"between {_number(self.low)} and {_number(self.high)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


POSITIVE = Bounds(low=0, low_open=True)
AT_LEAST_ONE = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
FRACTION = Bounds(low=0, high=1, high_open=True)  # [0, 1)


@dataclass(frozen=True)
class Setting:
    """What a config field declares besides its type and default."""

    help: str = ""
    flag: str | None = None  # None: --field-name
    aliases: tuple[str, ...] = ()
    bounds: Bounds | None = None
    # The allowed values, or a function returning them (to import a registry lazily).
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    metavar: str | None = None
    fix: str | None = None  # the second half of the error, where the range alone is not enough
    # Text -> value for the command line (raises ValueError saying what it expected);
    # None: the field's type.
    parse: Callable[[str], Any] | None = None
    exclusive: str | None = None  # settings sharing this name cannot be given together
    group: str | None = None  # the help section listing the option (default: its config's)
    inverse: bool = False  # a true/false setting whose flag turns it off (--quiet: progress)
    # Where and how a run executes (output folder, threads, device), not what it computes:
    # left out of the report's ``config`` block, which reruns the run.
    runtime: bool = False

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices


def setting(
    default: Any,
    help: str = "",
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    bounds: Bounds | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    metavar: str | None = None,
    fix: str | None = None,
    parse: Callable[[str], Any] | None = None,
    exclusive: str | None = None,
    group: str | None = None,
    inverse: bool = False,
    runtime: bool = False,
) -> Any:
    """A dataclass field that the command line, config files and checks all read;
    ``default=REQUIRED`` makes it a field (and an option) without a default."""
    declared = Setting(
        help, flag, aliases, bounds, choices, metavar, fix, parse, exclusive, group, inverse,
        runtime,
    )  # fmt: skip
    return dataclasses.field(default=default, metadata={"setting": declared})


def section(config_class: type, title: str, *, required: bool = False) -> Any:
    """A field holding a nested config (``PruneRun.train``); its settings are listed under
    ``title`` on the command line and sit under the field's name in config files."""
    metadata = {"section": title}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=config_class, metadata=metadata)


REQUIRED: Any = dataclasses.MISSING


def in_memory(help: str) -> Any:
    """A field holding objects that live only in the Python process (tables handed to
    ``spruce.prune(train=rows)``): no command-line option, not in config files or the
    report's ``config`` block, not compared; ``None`` unless a Python caller sets it."""
    return dataclasses.field(default=None, compare=False, repr=False, metadata={"in_memory": help})


def comma_names(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: column and label lists on the command line."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ValueError(f"expected comma-separated names, got '{text}'")
    return names


def settings_of(config: Any) -> Iterator[tuple[dataclasses.Field, Setting]]:
    """The fields of a config class (or instance) declared with :func:`setting`."""
    for field in dataclasses.fields(config):
        declared = field.metadata.get("setting")
        if declared is not None:
            yield field, declared


def sections_of(config: Any) -> Iterator[tuple[dataclasses.Field, str]]:
    """The fields of a config class (or instance) holding nested configs, with their titles."""
    for field in dataclasses.fields(config):
        title = field.metadata.get("section")
        if title is not None:
            yield field, title


def flag_of(field: dataclasses.Field, declared: Setting) -> str:
    return declared.flag or "--" + field.name.replace("_", "-")


def check_settings(config: Any) -> None:
    """Raise :class:`SpruceError` naming the first setting outside its range or choices."""
    for field, declared in settings_of(config):
        value = getattr(config, field.name)
        if value is None or isinstance(value, bool):
            continue
        flag = flag_of(field, declared)
        allowed = declared.allowed()
        if allowed is not None and value not in allowed:
            raise SpruceError(f"{flag} {value} is not known", f"choose one of {', '.join(allowed)}")
        if declared.bounds is not None and not declared.bounds.holds(value):
            raise SpruceError(
                f"{flag} must be {declared.bounds.describe()}, got {value}", declared.fix
            )


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
