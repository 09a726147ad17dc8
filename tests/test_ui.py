"""bpttcli.ui: compact counts and a progress view that stays readable in 80 columns."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from bpttcli import ui


@pytest.mark.parametrize("n, text", [
    (0, "0"), (56, "56"), (999, "999"), (1000, "1.0k"), (1234, "1.2k"), (4_900_000, "4.9M"), (1.23e9, "1.2G"),
])
def test_compact(n, text):
    assert ui.compact(n) == text


def render(monkeypatch, width: int, quiet: bool = False) -> list[str]:
    """The training view after 1.2M of 4.9M characters, as an 80- or 120-column terminal shows it."""
    out = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=out, width=width, force_terminal=True, color_system=None))
    view = ui.LiveView("train", 4_900_000, quiet=quiet, unit="chars")
    with view:
        view.print("truncated BPTT · RNN-512x1")
        view.advance(1_234_567)
        view.stats("loss 2.172 · ppl 8.77 train / 8.83 val · |g| 0.40 · clip 0% · 1.4k chars/s")
    text = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]", "", out.getvalue()).replace("\r", "\n")
    return [line.rstrip() for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("width", [80, 120])
def test_progress_line_is_compact_and_untruncated(monkeypatch, width):
    lines = render(monkeypatch, width)
    bar = next(line for line in reversed(lines) if line.startswith("train"))
    assert "1.2M/4.9M chars" in bar and "25%" in bar and "eta" in bar and "…" not in bar
    assert lines[-1] == "loss 2.172 · ppl 8.77 train / 8.83 val · |g| 0.40 · clip 0% · 1.4k chars/s"
    assert all(len(line) <= width for line in lines)
    assert "truncated BPTT · RNN-512x1" in lines


def test_quiet_prints_nothing(monkeypatch):
    assert render(monkeypatch, 80, quiet=True) == []


# ------------------------------------------------------------------ plain progress lines in a log
class Clock:
    """A fake time.monotonic for ui: seconds move only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def logged(monkeypatch):
    """ui's console writing to a non-terminal buffer (a log), and a fake clock; returns (clock, buffer)."""
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(ui, "time", clock)
    monkeypatch.setattr(ui, "console", Console(file=out, width=80, force_terminal=False, color_system=None))
    return clock, out


def test_a_log_gets_a_plain_line_every_period_with_position_stats_and_eta(logged):
    clock, out = logged
    with ui.LiveView("train", 1000, unit="chars", progress_every=10) as view:
        view.print("truncated BPTT · RNN-512x1")
        clock.now += 1
        view.advance(100, step=1, epoch=1)
        clock.now += 5
        view.advance(100, step=2, epoch=1)  # 6 s: within the first period, no line yet
        assert out.getvalue() == "truncated BPTT · RNN-512x1\n"
        clock.now += 5
        view.stats("loss 2.172 · ppl 8.77 train / 8.83 val · |g| 0.40 · clip 0% · 1.4k chars/s")  # 11 s: a line
        clock.now += 2
        view.advance(100, step=3, epoch=2)  # 13 s: the next line is due at 21 s
    lines = out.getvalue().splitlines()
    assert lines == ["truncated BPTT · RNN-512x1",
                     "train 20% · 200/1.0k chars · step 2 · epoch 1 · 0:00:11 · eta 0:00:40 · "
                     "loss 2.172 · ppl 8.77 train / 8.83 val · |g| 0.40 · clip 0% · 1.4k chars/s"]  # 800 left at 20/s


def test_the_eta_counts_the_time_limit(logged):
    clock, _ = logged
    view = ui.LiveView("train", 1000, progress_every=10, deadline=clock.now + 30)
    clock.now += 1
    view.advance(100)
    clock.now += 9
    view.advance(100)  # 100 chars in 9 s: 800 left would take 72 s, but the time limit is 20 s away
    assert "eta 0:00:20" in view.line()
    unlimited = ui.LiveView("train", 1000, progress_every=10)
    clock.now += 1
    unlimited.advance(100)
    clock.now += 9
    unlimited.advance(100)
    assert "eta 0:01:12" in unlimited.line()


def test_a_terminal_gets_no_plain_lines_and_quiet_gets_nothing(monkeypatch):
    for quiet, terminal in ((False, True), (True, False)):
        out = io.StringIO()
        monkeypatch.setattr(ui, "console", Console(file=out, width=80, force_terminal=terminal, color_system=None))
        with ui.LiveView("train", 1000, quiet=quiet, progress_every=1e-9) as view:
            view.advance(500)
            view.stats("loss 2.172")
        assert "train 50% · 500/1.0k" not in out.getvalue() and ("500/1.0k" in out.getvalue()) == terminal


def test_a_resumed_task_starts_at_its_position_without_counting_it_in_the_rate(logged):
    clock, _ = logged
    view = ui.LiveView("train", 10_000, progress_every=10, completed=9_000)
    clock.now += 1
    view.advance(100)
    clock.now += 10
    view.advance(100)  # 10 chars/s: 800 left, 80 s; counting the 9,000 of the checkpoint would make it ~1 s
    assert "92% · 9.2k/10.0k" in view.line() and "eta 0:01:20" in view.line()


@pytest.mark.parametrize("n, text", [(0, "0 steps"), (1, "1 step"), (2, "2 steps")])
def test_plural(n, text):
    assert ui.plural(n, "step") == text


def test_done_line_says_why_the_run_stopped():
    summary = {"step": 1, "tokens": 4900, "elapsed": 12.3, "train_ppl": 8.123, "final_val_ppl": 8.4,
               "best_val_ppl": 8.4, "stop_reason": "max_time"}
    assert ui.done_line(summary) == ("done · 1 step · 4.9k chars · 12s · ppl 8.12 train / 8.40 val (best 8.40) · "
                                     "--max-time reached")
