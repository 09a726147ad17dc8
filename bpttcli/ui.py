"""Terminal output: a rich live progress view for long work, plain periodic lines in a log, silent with `quiet`."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
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


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


STOPPED = {"epochs": "all epochs done", "max_steps": "--max-steps reached", "max_tokens": "token budget reached",
           "max_time": "--max-time reached"}  # a summary's stop_reason, as the done line says it


def done_line(summary: dict) -> str:
    """'done · 1 step · 4.9k chars · 12s · ppl 8.12 train / 8.40 val (best 8.40) · all epochs done'."""
    s = summary
    return (f"done · {plural(s['step'], 'step')} · {compact(s['tokens'])} chars · {s['elapsed']:.0f}s · "
            f"ppl {s['train_ppl']:.2f} train / {s['final_val_ppl']:.2f} val (best {s['best_val_ppl']:.2f})"
            + (f" · {STOPPED[s['stop_reason']]}" if s.get("stop_reason") in STOPPED else ""))


def clock(seconds: float | None) -> str:
    """3725 -> '1:02:05'; None -> '-:--:--'."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def duration(seconds: float) -> str:
    """45 -> '45s', 205 -> '3m25s', 7500 -> '2h05m': short enough for a table column."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(task) -> float | None:
    """Seconds left: at the current rate, or until the task's `deadline` field (a time limit) if sooner."""
    left = task.time_remaining
    deadline = task.fields.get("deadline")
    if deadline is not None:
        until = max(0.0, deadline - time.monotonic())
        left = until if left is None else min(left, until)
    return left


class CountColumn(ProgressColumn):
    """'1.2M/4.9M chars': done and total in compact units."""

    def __init__(self, unit: str = ""):
        super().__init__()
        self.unit = f" {unit}" if unit else ""

    def render(self, task) -> Text:
        total = "?" if task.total is None else compact(task.total)
        return Text(f"{compact(task.completed)}/{total}{self.unit}", style="progress.download")


class EtaColumn(ProgressColumn):
    """'eta 0:03:12', the time limit included."""

    def render(self, task) -> Text:
        return Text(f"eta {clock(eta(task))}", style="progress.remaining")


class StatsProgress(Progress):
    """A progress table with each task's `stats` field on its own line below it."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("stats"):
                yield Text(task.fields["stats"], no_wrap=True, overflow="ellipsis")


class LiveView:
    """A progress bar with counts and ETA, and one line of live statistics below it.

    When stderr is not a terminal (nohup, Slurm, CI, `2>log`), a plain line with the same
    information is printed every `progress_every` seconds instead. `deadline` (a time.monotonic()
    time) caps the ETA; `completed` is where a resumed task starts, not counted in its rate.
    """

    def __init__(self, description: str, total: float | None, quiet: bool = False, unit: str = "",
                 deadline: float | None = None, progress_every: float = 10.0, completed: float = 0):
        self.quiet, self.unit = quiet, unit
        self.plain = not quiet and not console.is_terminal
        self.progress_every, self.next_line = progress_every, time.monotonic() + progress_every
        self.progress = StatsProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            CountColumn(unit),
            TimeElapsedColumn(),
            EtaColumn(),
            console=console,
            disable=quiet or self.plain,
            get_time=lambda: time.monotonic(),  # one clock for the rate, the deadline and the lines
        )
        self.task = self.progress.add_task(description, total=total, completed=completed, stats="", deadline=deadline)

    def __enter__(self) -> "LiveView":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, amount: float = 1, **fields) -> None:
        self.progress.update(self.task, advance=amount, **fields)
        self._log_line()

    def stats(self, text: str) -> None:
        self.progress.update(self.task, stats=text)
        self._log_line()

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def print(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(message, soft_wrap=self.plain)  # a log keeps each line whole

    def _log_line(self) -> None:
        """In a log, one plain progress line per `progress_every` seconds."""
        if self.plain and time.monotonic() >= self.next_line:
            self.next_line = time.monotonic() + self.progress_every
            console.print(self.line(), highlight=False, soft_wrap=True, markup=False)

    def line(self) -> str:
        """'train 25% · 1.2M/4.9M chars · step 120 · epoch 2 · 0:01:05 · eta 0:03:12 · loss ... · 1.4k chars/s'."""
        task = self.progress.tasks[0]
        unit = f" {self.unit}" if self.unit else ""
        total = "?" if task.total is None else compact(task.total)
        parts = [task.description + (f" {task.percentage:.0f}%" if task.total else ""),
                 f"{compact(task.completed)}/{total}{unit}"]
        parts += [f"{name} {task.fields[name]}" for name in ("step", "epoch") if name in task.fields]
        parts += [clock(task.elapsed), f"eta {clock(eta(task))}"]
        return " · ".join(parts + ([task.fields["stats"]] if task.fields.get("stats") else []))
