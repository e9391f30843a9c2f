"""What the study's steps tell a UI while they work: the CLI implements it with rich, a job's log with lines, tests
with nothing."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def task(self, key: str, description: str, total: int | None) -> None: ...
    def update(self, key: str, completed: int, total: int | None = None) -> None: ...


class NoProgress:
    def task(self, key: str, description: str, total: int | None) -> None:
        pass

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        pass
