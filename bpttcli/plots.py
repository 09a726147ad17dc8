"""Line plots with optional ±sd bands, drawn with matplotlib's Agg backend and saved atomically as PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from .fsutil import atomic_open

PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


@dataclass
class Series:
    """One line: y against x, with an optional band y ± sd."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    sd: Sequence[float] | None = None


@dataclass
class Panel:
    """One set of axes."""

    series: list[Series]
    xlabel: str
    ylabel: str
    title: str = ""
    logx: bool = False
    logy: bool = False


def draw(ax, panel: Panel, colors: dict[str, str]) -> None:
    """Draw `panel` on `ax`; a series of one point shows as a marker."""
    for s in panel.series:
        color = colors[s.label]
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
            axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.grid(True, which="both", alpha=0.3)
    if panel.series:
        ax.legend(fontsize="small")


def plot_panels(path: Path, panels: list[Panel], title: str = "", size: tuple[float, float] = (6.0, 4.2)) -> Path:
    """Panels side by side, one colour per series label across all of them; written atomically to `path`."""
    fig = Figure(figsize=(size[0] * len(panels), size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    labels = dict.fromkeys(s.label for p in panels for s in p.series)
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
    """Write `fig` as a PNG atomically: a reader never sees a half-written image."""
    with atomic_open(Path(path), "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
