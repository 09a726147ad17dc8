"""Terminal output: a rich live progress view for long work, silent with `quiet`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
stdout = Console()


class LiveView:
    """A progress bar with ETA and one line of live statistics."""

    def __init__(self, description: str, total: float | None, quiet: bool = False, unit_column=None):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            unit_column or MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=quiet,
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total, stats="")

    def __enter__(self) -> "LiveView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, amount: float = 1, **fields) -> None:
        self.progress.update(self.task, advance=amount, **fields)

    def stats(self, text: str) -> None:
        self.progress.update(self.task, stats=text)

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def print(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(message)
