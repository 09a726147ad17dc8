"""bpttcli.plots: PNGs with lines, ±sd bands and log axes, written atomically."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from bpttcli.plots import Panel, Series, plot_lines, plot_panels

PNG = b"\x89PNG\r\n\x1a\n"


def test_lines_with_bands_on_log_axes(tmp_path):
    path = tmp_path / "lines.png"
    series = [Series("a", [1, 10, 100], [30, 12, 6], sd=[2, 1, 0.5]), Series("b", [1, 10, 100], [25, 15, 9])]
    assert plot_lines(path, series, "tokens", "perplexity", title="t", logx=True, logy=True) == path
    assert path.read_bytes().startswith(PNG)
    assert [p.name for p in tmp_path.iterdir()] == ["lines.png"]


def test_panels_single_points_and_empty_panels(tmp_path):
    path = tmp_path / "panels.png"
    panels = [Panel([Series("one point", [5.0], [20.0])], "x", "y", logy=True), Panel([], "x", "y")]
    plot_panels(path, panels, title="two panels")
    assert path.read_bytes().startswith(PNG)


def test_mismatched_series_raises(tmp_path):
    with pytest.raises(ValueError):
        plot_lines(tmp_path / "bad.png", [Series("bad", [1, 2, 3], [1, 2])], "x", "y")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    def broken(self, handle, **kwargs):
        handle.write(b"half a png")
        raise OSError("disk full")

    path = tmp_path / "keep.png"
    path.write_bytes(b"old")
    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError):
        plot_lines(path, [Series("a", [1, 2], [3, 4])], "x", "y")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
