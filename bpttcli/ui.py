"""Terminal output: a rich live progress view for long work, silent with `quiet`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)
stdout = Console(soft_wrap=True)  # results stay one line per record when piped


def compact(n: float) -> str:
    """4_900_000 -> '4.9M', 1234 -> '1.2k', 56 -> '56': short enough for an 80-column line."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


class CountColumn(ProgressColumn):
    """'1.2M/4.9M chars': done and total in compact units."""

    def __init__(self, unit: str = ""):
        super().__init__()
        self.unit = f" {unit}" if unit else ""

    def render(self, task) -> Text:
        total = "?" if task.total is None else compact(task.total)
        return Text(f"{compact(task.completed)}/{total}{self.unit}", style="progress.download")


class StatsProgress(Progress):
    """A progress table with each task's `stats` field on its own line below it."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("stats"):
                yield Text(task.fields["stats"], no_wrap=True, overflow="ellipsis")


class LiveView:
    """A progress bar with counts and ETA, and one line of live statistics below it."""

    def __init__(self, description: str, total: float | None, quiet: bool = False, unit: str = ""):
        self.quiet = quiet
        self.progress = StatsProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            CountColumn(unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
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
