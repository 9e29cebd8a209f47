"""Argument types and a parser whose errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from spruce.config import comma_names
from spruce.config.arguments import argument_type, number


class Parser(argparse.ArgumentParser):
    """argparse prints a usage block before its error; spruce prints one line only.
    ``commands``: the subcommands' parsers by name (spruce's top-level parser)."""

    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"spruce: error: {message}; run '{self.prog} --help' for the options\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    value = number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return value


def positive_float(text: str) -> float:
    value = number(text, float, "a number")
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got '{text}'")
    return value


def fraction(text: str) -> float:
    value = number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got '{text}'")
    return value


name_list = argument_type(comma_names)
