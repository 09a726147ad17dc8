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
