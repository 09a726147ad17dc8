"""Line plots with optional ±sd bands, drawn with matplotlib's Agg backend and saved atomically as PNG;
and the curves of runs' metrics.jsonl (`bptt plot`, `bptt compare`'s curves.png)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from .errors import ConfigError
from .fsutil import atomic_open, write_error
from .runs import read_metrics

PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


class MinorLogFormatter(LogFormatter):
    """LogFormatter's choice of which minor ticks to label, as plain numbers: '0.68', not '7e-01' six times."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:.3g}"


@dataclass
class Series:
    """One line: y against x, with an optional band y ± sd."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    sd: Sequence[float] | None = None
    style: str | None = None  # a matplotlib format such as "k--" (a reference line); default: the label's colour


@dataclass
class Panel:
    """One set of axes."""

    series: list[Series]
    xlabel: str
    ylabel: str
    title: str = ""
    logx: bool = False
    logy: bool = False
    ylim: tuple[float, float] | None = None  # lines beyond it leave the frame


def draw(ax, panel: Panel, colors: dict[str, str]) -> None:
    """Draw `panel` on `ax`; a series of one point shows as a marker."""
    for s in panel.series:
        color = colors.get(s.label)
        if s.style:
            ax.plot(s.x, s.y, s.style, label=s.label, linewidth=1.2)
            continue
        ax.plot(s.x, s.y, label=s.label, color=color, marker="o" if len(s.x) == 1 else None, linewidth=1.6)
        if s.sd is not None:
            low = [y - d for y, d in zip(s.y, s.sd)]
            high = [y + d for y, d in zip(s.y, s.sd)]
            ax.fill_between(s.x, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
    for log, axis, set_scale in ((panel.logx, ax.xaxis, ax.set_xscale), (panel.logy, ax.yaxis, ax.set_yscale)):
        if log:
            set_scale("log")
            axis.set_major_formatter(PLAIN)  # '20', not '2 x 10^1'
            # minor ticks get labels only on a short range (under ~1 decade), where majors are few
            axis.set_minor_formatter(MinorLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.grid(True, which="both", alpha=0.3)
    if panel.series:
        ax.legend(fontsize="small")


def plot_panels(path: Path, panels: list[Panel], title: str = "", size: tuple[float, float] = (6.0, 4.2)) -> Path:
    """Panels side by side, one colour per series label across all of them; written atomically to `path`."""
    fig = Figure(figsize=(size[0] * len(panels), size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    labels = dict.fromkeys(s.label for p in panels for s in p.series if not s.style)
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        draw(ax, panel, colors)
    if title:
        fig.suptitle(title)
    save(fig, path)
    return Path(path)


def plot_lines(path: Path, series: list[Series], xlabel: str, ylabel: str, title: str = "", logx: bool = False,
               logy: bool = False) -> Path:
    """One panel of lines (with ±sd bands where given), saved as a PNG at `path`."""
    return plot_panels(path, [Panel(series, xlabel, ylabel, title, logx, logy)])


def save(fig: Figure, path: Path, dpi: int = 120) -> None:
    """Write `fig` as a PNG atomically: a reader never sees a half-written image; a failed write is a WriteError."""
    try:
        with atomic_open(Path(path), "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
    except OSError as exc:
        raise write_error(Path(path), exc) from None


# ------------------------------------------------------------------ curves of runs
X_AXES = {"chars": ("tokens", "training characters"), "time": ("elapsed", "wall time (s)"), "step": ("step", "update")}
LOG_METRICS = {"ppl", "val_ppl", "best_val_ppl", "grad_norm_mean", "grad_norm_max", "max_weight"}
LABELS = {  # the y-axis label of a metric; others show their metrics.jsonl name
    "val_ppl": "validation perplexity", "best_val_ppl": "best validation perplexity", "ppl": "training perplexity",
    "loss": "training loss (nats per char)", "val_loss": "validation loss (nats per char)",
    "grad_norm_mean": "pre-clip gradient norm, mean", "grad_norm_max": "pre-clip gradient norm, max",
    "clip_rate": "share of updates clipped", "lr": "learning rate", "tokens_per_s": "characters per second",
    "segment_mean": "segment length, mean", "segment_max": "segment length, max",
    "max_weight": "largest compensation factor ξ",
}


def metric_curve(run_dir: Path, metric: str, x: str = "chars", missing_ok: bool = False) -> tuple[list, list]:
    """(x, y) of `metric` from the metrics.jsonl lines that hold it (train or eval lines); x: chars, time or step.
    A run that logged no `metric` is an error naming the metrics it has, or empty lists with `missing_ok`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no metrics.jsonl; pass a run directory written by bptt train")
    records = [r for r in read_metrics(path) if r["kind"] in ("train", "eval")]
    points = [(r[X_AXES[x][0]], r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
    if not points and not missing_ok:
        known = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))} - {"step", "epoch"})
        raise ConfigError(f"{run_dir} logged no '{metric}'; choose --metric from: {', '.join(known) or 'none yet'}")
    return [p[0] for p in points], [p[1] for p in points]


def band(curves: list[tuple[list[float], list[float]]], points: int = 60):
    """Mean and sd (None for one curve) of curves on a shared grid over the x range all of them cover."""
    curves = [c for c in curves if c[0]]
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([statistics.mean(c[0][-1] for c in curves)])
    values = np.stack([np.interp(grid, *c) for c in curves])
    return grid, values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else None


def plot_runs(path: Path, runs: dict[str, Path], metric: str, x: str = "chars", title: str = "") -> Path:
    """One line per run (label -> run directory): `metric` against `x`, log-scaled for perplexities and norms."""
    series = [Series(label, *metric_curve(run, metric, x)) for label, run in runs.items()]
    values = [v for s in series for v in s.y]
    logy = metric in LOG_METRICS and all(math.isfinite(v) and v > 0 for v in values)
    return plot_lines(path, series, X_AXES[x][1], LABELS.get(metric, metric), title, logy=logy)
