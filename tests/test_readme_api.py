"""The README's "Python API" examples run as written, on toy CSV files and the embedded
MiniLM (a few training steps each, under half a minute in all)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Python API"

POSITIVE = ["a great film", "wonderful acting and a moving story", "I loved every minute",
            "superb, funny and warm", "a joy to watch"]  # fmt: skip
NEGATIVE = ["a dull, slow film", "the plot makes no sense", "I want my two hours back",
            "badly acted and boring", "a waste of time"]  # fmt: skip


def python_examples() -> list[tuple[int, str]]:
    """The ```python blocks of the README's Python API section, with their line numbers."""
    text = README.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + len(SECTION) + 2)
    section = text[start : end if end != -1 else len(text)]
    first_line = text[:start].count("\n") + 1
    return [
        (first_line + section[: found.start()].count("\n") + 1, found.group(1))
        for found in re.finditer(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    ]


def write_toy_data(folder: Path) -> None:
    """train.csv and validation.csv (text,label), the files the examples name."""
    rng = random.Random(0)
    for name, count in (("train.csv", 40), ("validation.csv", 16)):
        lines = ["text,label"]
        for i in range(count):
            positive = i % 2 == 1
            text = rng.choice(POSITIVE if positive else NEGATIVE)
            lines.append(f'"{text}",{"positive" if positive else "negative"}')
        (folder / name).write_text("\n".join(lines) + "\n")


def test_the_section_has_an_example_per_command() -> None:
    code = "\n".join(block for _, block in python_examples())
    for call in ("spruce.finetune(", "spruce.prune(", "spruce.adapt(", "train=rows"):
        assert call in code, call


def test_the_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_toy_data(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for line, block in python_examples():
        exec(compile(block, f"README.md:{line}", "exec"), namespace)
    assert (tmp_path / "runs" / "dense" / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.parent == tmp_path) == [
        "runs",
        "train.csv",
        "validation.csv",
    ]  # the examples without out= wrote nothing
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["dense"]
    assert namespace["milder"].report["target_sparsity"] == 0.8
