"""Shared fixtures: tiny models are built once per session; real data is found or skipped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPRUCE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _quiet_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        family: make_tiny_model(root / family, family)
        for family in ("bert", "roberta", "distilbert")
    }


def shared_data(*parts: str) -> Path:
    """A file of ../shared/data, or a visible skip where a clone does not have it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is not present (set SPRUCE_SHARED_DATA to its folder)")
    return path
