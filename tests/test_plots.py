"""bpttcli.plots: PNGs with lines, ±sd bands and log axes, written atomically."""

from __future__ import annotations

import errno

import pytest
from matplotlib.figure import Figure

from bpttcli.errors import WriteError
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


def disk_full(self, handle, **kwargs):
    handle.write(b"half a png")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    path.write_bytes(b"old")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device \\(ENOSPC\\)"):
        plot_lines(path, [Series("a", [1, 2], [3, 4])], "x", "y")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


# ------------------------------------------------------------------ curves of runs: `bptt plot`
TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 2


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from bpttcli.config import load_config
    from bpttcli.train import train

    base = tmp_path_factory.mktemp("plot")
    corpus = base / "tiny.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    for name, strategy in (("truncated", "truncated"), ("random", "random")):
        train(load_config(None, {"data.path": str(corpus), "model.hidden": 16, "data.batch_size": 2,
                                 "strategy.tau": 5, "strategy.name": strategy, "train.max_steps": 12,
                                 "train.log_every": 3, "train.eval_every": 6, "train.device": "cpu"}),
              base / name, quiet=True)
    return base / "truncated", base / "random"


def lines_of(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("metric, kind", [("val_ppl", "eval"), ("grad_norm_mean", "train"), ("clip_rate", "train")])
@pytest.mark.parametrize("x, key", [("chars", "tokens"), ("time", "elapsed"), ("step", "step")])
def test_a_curve_is_the_metric_against_x_from_the_lines_that_hold_it(two_runs, metric, kind, x, key):
    from bpttcli.plots import metric_curve

    records = [r for r in lines_of(two_runs[0]) if r["kind"] == kind]
    assert metric_curve(two_runs[0], metric, x) == ([r[key] for r in records], [r[metric] for r in records])


def test_plot_command_overlays_runs(bptt, two_runs, tmp_path):
    out = bptt("plot", *two_runs, "--metric", "grad_norm_mean", "--x", "step", "--out", tmp_path / "norms.png").output
    assert out.strip() == f"wrote {tmp_path / 'norms.png'}"
    assert (tmp_path / "norms.png").read_bytes().startswith(PNG)
    bptt("plot", two_runs[0])  # defaults: val_ppl against chars, into the working directory
    assert (tmp_path / "val_ppl-vs-chars.png").read_bytes().startswith(PNG)


def test_a_full_disk_while_plotting_is_one_line_exit_5(bptt_error, two_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(Figure, "savefig", disk_full)
    line = bptt_error("plot", two_runs[0], "--out", tmp_path / "curve.png", code=5)
    assert line.startswith(f"error: cannot write {tmp_path / 'curve.png'}: No space left on device (ENOSPC)")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*.tmp"))


def test_plot_errors_are_one_line(bptt_error, two_runs, tmp_path):
    line = bptt_error("plot", two_runs[0], "--metric", "accuracy", code=2)
    assert "logged no 'accuracy'" in line and "grad_norm_mean" in line and "val_ppl" in line
    assert "no metrics.jsonl" in bptt_error("plot", tmp_path, code=2)
    assert "'--x'" in bptt_error("plot", two_runs[0], "--x", "epochs", code=2)
    assert not list(tmp_path.glob("*.png"))


def test_band_is_the_mean_and_sd_over_a_shared_range():
    from bpttcli.plots import band

    grid, mean, sd = band([([0, 10], [10, 20]), ([0, 5, 10], [20, 25, 30])], points=3)
    assert list(grid) == [0, 5, 10] and list(mean) == [15, 20, 25] and list(sd) == pytest.approx([7.0711] * 3, rel=1e-4)
    grid, mean, sd = band([([2, 4], [1, 3])], points=3)
    assert list(grid) == [2, 3, 4] and list(mean) == [1, 2, 3] and sd is None
