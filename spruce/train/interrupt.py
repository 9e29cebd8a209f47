"""Stop signals: SIGINT (Ctrl-C) and SIGTERM (``kill``, schedulers, container stops).

While a checkpointed training phase runs, :class:`StopSignals` turns either signal into
a request that the trainer honours at the next step boundary: it saves a checkpoint and
raises :class:`Interrupted`, so no work is lost mid-step and the checkpoint is never
half-written by the signal itself. A second signal stops at once (someone who presses
Ctrl-C twice does not want to wait for a step to finish).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the run; ``exit_code`` is the shell's 128 + signal number.

    ``step``/``phase``/``directory`` are set when a trainer saved a checkpoint first.
    A ``KeyboardInterrupt`` so that every ``except Exception`` lets it through, as it
    does Ctrl-C.
    """

    def __init__(
        self,
        signal_number: int,
        step: int | None = None,
        phase: str | None = None,
        directory: Path | str | None = None,
    ) -> None:
        super().__init__(signal_number)
        self.signal_number = int(signal_number)
        self.step = step
        self.phase = phase
        self.directory = directory

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number

    def one_line(self) -> str:
        if self.step is None:
            return "interrupted"
        return (
            f"interrupted at step {self.step} of phase {self.phase}; checkpoint saved in "
            f"{self.directory}; rerun the same command with --resume"
        )


def raise_interrupted(signal_number: int, frame: FrameType | None) -> None:
    """A signal handler that stops at once (SIGTERM outside training phases)."""
    raise Interrupted(signal_number)


def can_handle_signals() -> bool:
    """Python lets only the main thread install signal handlers."""
    return threading.current_thread() is threading.main_thread()


def restore_handler(signal_number: int, previous: Any) -> None:
    """Put back what ``signal.signal`` returned (None: a handler not set from Python)."""
    signal.signal(signal_number, signal.SIG_DFL if previous is None else previous)


class StopSignals:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of stopping; the
    previous handlers are put back on exit."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise Interrupted(signal_number)
        self.requested = signal_number

    def __enter__(self) -> StopSignals:
        if can_handle_signals():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        for number, previous in self._previous.items():
            restore_handler(number, previous)
        self._previous.clear()
        if exc_type is None and self.requested is not None:
            # A signal after the block's last look at the flag is not lost.
            raise Interrupted(self.requested)
