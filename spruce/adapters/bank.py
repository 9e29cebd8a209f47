"""What every task bank shares, text or image: one adapted base model, the tasks read
into memory by name, which one is active, and the check that keeps a bank to one set of
adapter settings. The banks add how a task is read, fitted and activated."""

from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

from torch import nn

from spruce.adapters.config import AdapterConfig
from spruce.errors import SpruceError

TaskT = TypeVar("TaskT")


class TaskBankBase(Generic[TaskT]):
    def __init__(self, base: str | None, adapter: AdapterConfig | None) -> None:
        self._base = base
        self._adapter = adapter
        self._model: nn.Module | None = None
        self._tasks: dict[str, TaskT] = {}
        self._active: str | None = None

    @property
    def model(self) -> nn.Module:
        """The shared adapted model, in the state of the active task."""
        if self._model is None:
            raise SpruceError("the bank has no task yet", "add a task first")
        return self._model

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    @property
    def active(self) -> str | None:
        return self._active

    def _task(self, name: str) -> TaskT:
        if name not in self._tasks:
            raise SpruceError(
                f"the bank has no task '{name}'", f"tasks: {', '.join(self._tasks) or 'none'}"
            )
        return self._tasks[name]

    def _check_new_name(self, name: str) -> None:
        if name in self._tasks:
            raise SpruceError(f"the bank already has a task '{name}'", "choose another name")

    def _check_adapter(self, adapter: AdapterConfig, directory: str | Path) -> None:
        if self._adapter is not None and adapter.to_dict() != self._adapter.to_dict():
            raise SpruceError(
                f"task {directory} uses adapter {adapter.describe()}, the bank holds "
                f"{self._adapter.describe()}",
                "put tasks adapted with the same adapter settings in one bank",
            )
