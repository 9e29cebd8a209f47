"""The layer contracts of pyproject.toml hold, and they would catch an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's source and its import-linter contracts, in a folder of their own."""
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(REPO / "spruce", root / "spruce", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_package_keeps_its_layers(copy: Path) -> None:
    result = lint(copy)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "sub-packages import only downwards KEPT" in result.stdout


def test_an_upward_import_breaks_the_contract(copy: Path) -> None:
    module = copy / "spruce" / "models" / "structure.py"
    original = module.read_text()
    module.write_text(original + "\nfrom spruce.pipelines import common  # noqa: E402\n")
    try:
        result = lint(copy)
    finally:
        module.write_text(original)
    assert result.returncode == 1
    assert "spruce.models is not allowed to import spruce.pipelines" in result.stdout
    assert "spruce.models.structure -> spruce.pipelines.common" in result.stdout


def test_every_sub_package_is_in_a_layer() -> None:
    """A new sub-package must be placed in the layers, or the contract says nothing of it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"spruce.{p.parent.name}" for p in (REPO / "spruce").glob("*/__init__.py")}
    modules = {f"spruce.{p.stem}" for p in (REPO / "spruce").glob("*.py")} - {
        "spruce.__init__", "spruce.__main__"
    }  # fmt: skip
    assert packages | modules <= placed, sorted((packages | modules) - placed)
