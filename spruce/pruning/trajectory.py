"""The pruning phase step by step: what the sparsity control did, kept for the report.

A :class:`TrajectoryLog` is a ``Trainer`` callback. It keeps, every ``every`` steps, the
step's statistics (expected and target sparsity, the shift or the multipliers, the task
loss and every auxiliary loss) as columns, so that ``report.json`` stays compact and a
plot reads them directly. It is checkpointed with the phase, so a resumed run keeps the
rows logged before the interruption.
"""

from __future__ import annotations

import math
from typing import Any

MAX_ROWS = 500  # a long phase is thinned to about this many logged steps


class TrajectoryLog:
    """Collects the step statistics of a pruning phase of ``total_steps`` steps."""

    def __init__(self, total_steps: int) -> None:
        self.every = max(1, math.ceil(total_steps / MAX_ROWS))
        self.total_steps = total_steps
        self.rows: list[dict[str, float]] = []

    def __call__(self, trainer: Any, step: int, stats: dict[str, float]) -> None:
        if step % self.every == 0 or step == 1 or step == self.total_steps:
            self.rows.append({"step": step, **{k: float(v) for k, v in stats.items()}})

    def columns(self) -> dict[str, list[float | None]]:
        """``{name: [value per logged step]}``; None where a step lacks the value."""
        names: list[str] = []
        for row in self.rows:
            names += [name for name in row if name not in names]
        return {name: [row.get(name) for row in self.rows] for name in names}

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])
