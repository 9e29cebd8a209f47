"""The command line a grid runs (``spruce prune``, or ``spruce adapt``) as a grid sees
it: option names, values, arguments.

Option names and kinds come from the real parser of the command, not a copy of its
option list, so a grid file can use every option the command has (new ones included)
and a typo fails before any run starts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spruce.errors import SpruceError

if TYPE_CHECKING:
    from spruce.grid.spec import GridSpec, Run

FLAG, VALUE, REPEAT, SEVERAL, SWITCH = "flag", "value", "repeat", "several", "switch"
Scalar = str | int | float


@dataclass(frozen=True)
class PruneOption:
    """One ``spruce prune`` option: its primary name (without ``--``) and how it takes
    values: ``flag`` (true/false), ``switch`` (``--x`` / ``--no-x``), ``value``,
    ``repeat`` (``--x a --x b``) or ``several`` (``--x a b``)."""

    name: str
    kind: str = VALUE


COMMANDS = ("prune", "adapt")  # the spruce commands a grid can run


def prune_parser(command: str = "prune") -> argparse.ArgumentParser:
    """The sub-parser of ``spruce COMMAND``, exactly as the command line builds it."""
    from spruce.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def prune_options(command: str = "prune") -> dict[str, PruneOption]:
    """Every long option name of ``spruce COMMAND`` (aliases too) -> its
    :class:`PruneOption`.

    Tests replace this function to describe options the parser does not have yet."""
    table: dict[str, PruneOption] = {}
    for action in prune_parser(command)._actions:
        names = [s[2:] for s in action.option_strings if s.startswith("--")]
        if not names or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            # --no-x is the negation of --x, not an alias: each name stands for itself.
            for name in names:
                table[name] = PruneOption(name, FLAG if name.startswith("no-") else SWITCH)
            continue
        if action.nargs == 0:
            kind = FLAG
        elif isinstance(action, argparse._AppendAction):
            kind = REPEAT
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            kind = SEVERAL
        else:
            kind = VALUE
        for name in names:
            table[name] = PruneOption(names[0], kind)
    return table


def check_arguments(arguments: list[str], parser: argparse.ArgumentParser | None = None) -> None:
    """Parse one run's arguments with the real parser, raising :class:`SpruceError`: wrong
    values (a sparsity of 1.5, an unknown method, a missing --train) then fail before
    the grid starts instead of once per run."""
    parser = parser or prune_parser()

    def fail(message: str) -> None:
        raise SpruceError(message)

    # spruce's Parser prints and exits on an error; a grid wants to name the run first.
    parser.error = fail  # type: ignore[method-assign]
    parser.parse_args(arguments)


def option_arguments(
    options: Mapping[str, Any],
    table: Mapping[str, PruneOption],
    resolve: Callable[[str], str] | None = None,
) -> list[str]:
    """``--name value`` arguments of ``options`` (YAML values: true = bare flag, false
    = left out, a list = repeated option); ``resolve`` rewrites text values (paths)."""
    args: list[str] = []
    for name, value in options.items():
        if name == "quiet":
            continue  # the runner always passes --quiet
        kind = table[name].kind if name in table else VALUE
        flag = f"--{name}"
        if kind == FLAG:
            if value:
                args.append(flag)
            continue
        if kind == SWITCH:  # spec turned false into the FLAG no-NAME: only true comes here
            args.append(flag)
            continue
        items = value if isinstance(value, list) else [value]
        texts = [resolve(i) if isinstance(i, str) and resolve else str(i) for i in items]
        if kind == SEVERAL:
            args += [flag, *texts]
        else:
            for text in texts:
                args += [flag, text]
    return args


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


def check_runs(spec: GridSpec, runs: Sequence[Run]) -> None:
    """Check each distinct configuration's values with the real ``spruce prune`` parser."""
    checked = set()
    parser = prune_parser(spec.command)
    for run in runs:
        if run.config in checked:
            continue
        checked.add(run.config)
        extra = ["--seed", str(run.seed), "--threads", str(spec.threads), "--out", "x"]
        try:
            arguments = option_arguments(run.options, spec.options)
            check_arguments([*arguments, *extra, "--quiet"], parser)
        except SpruceError as error:
            raise SpruceError(
                f"{spec.path}: run {run.id}: {error.problem}", "fix its options in the grid file"
            ) from None
