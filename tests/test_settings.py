"""Settings declared once (spruce.config) and the options generated from them (spruce.cli)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import pytest

from spruce.cli.parsing import Parser
from spruce.config import AT_LEAST_ONE, FRACTION, POSITIVE, Bounds, check_settings, setting
from spruce.config.arguments import add_settings, config_from_args
from spruce.errors import SpruceError
from spruce.train import TrainConfig
from spruce.train.distillation import DistillationConfig


@dataclass
class Toy:
    rate: float = setting(0.5, "a rate", bounds=FRACTION)
    count: int | None = setting(None, "a count", bounds=AT_LEAST_ONE, metavar="N")
    mode: str = setting("a", "a mode", choices=("a", "b"))
    flag: bool = setting(False, "a switch")
    scale: float = setting(1.0, "a scale", flag="--toy-scale", aliases=("-s",), bounds=POSITIVE)

    def __post_init__(self) -> None:
        check_settings(self)


def toy_parser(defaults: Toy | None = None) -> Parser:
    parser = Parser(prog="toy")
    add_settings(parser, Toy, defaults)
    return parser


@pytest.mark.parametrize(
    ("bounds", "words", "inside", "outside"),
    [
        (POSITIVE, "positive", [1e-9, 3], [0, -1, math.nan, math.inf]),
        (AT_LEAST_ONE, "at least 1", [1, 7], [0, -3]),
        (FRACTION, "in [0, 1)", [0, 0.99], [1, -0.1, math.nan]),
        (Bounds(low=0, high=9), "between 0 and 9", [0, 9], [-1, 10]),
    ],
)
def test_bounds_hold_and_describe(bounds, words, inside, outside) -> None:
    assert bounds.describe() == words
    assert all(bounds.holds(v) for v in inside)
    assert not any(bounds.holds(v) for v in outside)


def test_a_config_checks_every_setting_when_built() -> None:
    with pytest.raises(SpruceError, match=r"^--rate must be in \[0, 1\), got 1.5$"):
        Toy(rate=1.5)
    with pytest.raises(SpruceError, match="--mode c is not known; choose one of a, b"):
        Toy(mode="c")
    with pytest.raises(SpruceError, match="--toy-scale must be positive"):
        Toy(scale=0.0)
    assert Toy(count=None).count is None  # None is "not set", never out of range


def test_train_config_ranges_name_the_flag_and_the_fix() -> None:
    with pytest.raises(SpruceError, match="--epochs must be positive, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(SpruceError, match=r"--seed must be between 0 and 4294967295.*--seed 0"):
        TrainConfig(seed=-1)
    with pytest.raises(SpruceError, match="--metric f1 is not known; choose one of accuracy"):
        TrainConfig(metric="f1")


def test_generated_options_carry_flags_aliases_defaults_and_help() -> None:
    parser = toy_parser()
    args = parser.parse_args([])
    assert config_from_args(Toy, args) == Toy()
    args = parser.parse_args(["--rate", "0.25", "--count", "3", "--mode", "b", "--flag", "-s", "2"])
    assert config_from_args(Toy, args) == Toy(rate=0.25, count=3, mode="b", flag=True, scale=2.0)
    assert toy_parser(Toy(rate=0.75)).parse_args([]).rate == 0.75  # a command's own default
    help_text = parser.format_help()
    assert "a rate" in help_text and "--count N" in help_text and "--toy-scale" in help_text


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--rate", "1"], "argument --rate: expected a finite number in [0, 1), got '1'"),
        (["--rate", "nan"], "argument --rate: expected a finite number in [0, 1), got 'nan'"),
        (["--count", "0"], "argument --count: expected a whole number at least 1, got '0'"),
        (["--count", "x"], "argument --count: expected a whole number, got 'x'"),
        (["--mode", "c"], "argument --mode: invalid choice: 'c'"),
    ],
)
def test_the_parser_rejects_what_the_config_would(capsys, argv, fragment) -> None:
    with pytest.raises(SystemExit) as stopped:
        toy_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and fragment in err and err.count("\n") == 1


def test_train_options_round_trip_through_the_parser() -> None:
    parser = argparse.ArgumentParser()
    add_settings(parser, TrainConfig)
    args = parser.parse_args(["--lr", "3e-5", "--patience", "2", "--metric", "mcc"])
    config = config_from_args(TrainConfig, args)
    assert config == TrainConfig(learning_rate=3e-5, patience=2, metric="mcc")
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_distillation_settings_keep_their_flags() -> None:
    with pytest.raises(SpruceError, match=r"--distill-alpha must be between 0 and 1, got 1\.5"):
        DistillationConfig(alpha=1.5)
    parser = argparse.ArgumentParser()
    add_settings(parser, DistillationConfig)
    args = parser.parse_args(["--distill-temperature", "4", "--distill-task-weight", "0"])
    config = config_from_args(DistillationConfig, args)
    assert config == DistillationConfig(temperature=4.0, task_weight=0.0)
    assert DistillationConfig(teacher_layers=[]).teacher_layers is None
