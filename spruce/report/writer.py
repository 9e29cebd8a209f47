"""report.json: the machine-readable record of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spruce.utils.atomic import write_text_atomic


def _finite(value: Any) -> Any:
    # JSON has no NaN; a diverged metric is recorded as null rather than breaking parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(_finite(report), indent=2) + "\n")


def read_report(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
