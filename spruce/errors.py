"""The one exception type that means "the user asked for something that cannot work".

The CLI turns a :class:`SpruceError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SpruceError(Exception):
    """A user-facing error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".") if fix else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        message = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(message.split())
