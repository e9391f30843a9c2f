"""What every command shares: the console, the one way user errors are printed, and progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()
DEBUG = {"on": False}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known user errors print one clear message and exit 2; `--debug` shows the traceback instead."""
    from study.config import SpecError
    from study.data.shards import ShardError
    from study.data.sources.registry import SourceError
    from study.storage import StorageError
    from study.teacher.meta import TeacherError

    try:
        yield
    except (SpecError, ShardError, TeacherError, StorageError, SourceError, FileNotFoundError) as err:
        if DEBUG["on"]:
            raise
        console.print(f"[bold red]error:[/] {err}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except ValueError as err:
        if DEBUG["on"] or type(err).__module__.split(".")[0] != "study":
            raise
        console.print(f"[bold red]error:[/] {err}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


class RichProgress:
    """ProgressSink on a rich Progress display."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks = progress, {}

    def task(self, key: str, description: str, total: int | None) -> None:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total)

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        if key in self.tasks:
            self.progress.update(
                self.tasks[key],
                completed=completed,
                total=total or self.progress.tasks[self.tasks[key]].total,
            )


def progress_bars() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
