"""`bptt compare`'s report: results aggregated over seeds, its tables, results.{json,csv,md} and curves.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from rich import box
from rich.markup import escape
from rich.table import Column, Table

from .config import Config
from .fsutil import atomic_write_json, atomic_write_text
from .ui import compact

RUN_METRICS = {  # results name -> summary key
    "best_val_ppl": "best_val_ppl", "final_val_ppl": "final_val_ppl", "train_ppl": "train_ppl",
    "updates": "step", "tokens": "tokens", "tokens_per_s": "tokens_per_s", "wall_s": "elapsed",
    "peak_memory_mib": "peak_memory_mib", "grad_norm_median": "grad_norm_median",
    "grad_norm_max": "grad_norm_max", "clip_rate": "clip_rate", "segment_mean": "segment_mean",
    "segment_max": "segment_max", "max_weight": "max_weight",
}


def aggregate(records: list[dict], variants: list[str]) -> list[dict]:
    """One row per strategy: each metric's mean and sd over seeds."""
    rows = []
    for v in variants:
        runs = [r["summary"] for r in records if r["strategy"] == v]
        row = {"strategy": v, "seeds": len(runs)}
        for name, key in RUN_METRICS.items():
            values = torch.tensor([float(r[key]) for r in runs], dtype=torch.float64)
            row[name] = {"mean": float(values.mean()), "sd": float(values.std()) if len(values) > 1 else 0.0}
        rows.append(row)
    return rows


def plot_curves(path: Path, runs: dict[str, list[Path]], title: str) -> None:
    """Validation perplexity against characters and against wall time: mean ± sd over each strategy's runs."""
    from .plots import Panel, Series, band, metric_curve, plot_panels

    panels = []
    for x, label in (("chars", "training characters"), ("time", "wall time (s)")):
        curves = {v: [metric_curve(d, "val_ppl", x, missing_ok=True) for d in dirs] for v, dirs in runs.items()}
        series = [Series(v, *band(c)) for v, c in curves.items() if any(xs for xs, _ in c)]
        panels.append(Panel(series, label, "validation perplexity", logy=True))
    plot_panels(path, panels, title)

def pm(metric: dict, fmt: str = "{:.2f}") -> str:
    return fmt.format(metric["mean"]) + (f"±{fmt.format(metric['sd'])}" if metric["sd"] else "")


RUN_COLUMNS = [  # header (a line break where it wraps in the terminal: the tables fit 80 columns), cell
    ("strategy", lambda r: r["strategy"]),
    ("val ppl\nbest", lambda r: pm(r["best_val_ppl"])),
    ("val ppl\nfinal", lambda r: pm(r["final_val_ppl"])),
    ("steps", lambda r: f"{r['updates']['mean']:.0f}"),
    ("chars", lambda r: compact(r["tokens"]["mean"])),
    ("wall s", lambda r: f"{r['wall_s']['mean']:.1f}"),
    ("peak MiB", lambda r: f"{r['peak_memory_mib']['mean']:.3g}"),
]
DYNAMICS_COLUMNS = [
    ("strategy", lambda r: r["strategy"]),
    ("train\nppl", lambda r: f"{r['train_ppl']['mean']:.2f}"),
    ("|g|\nmedian", lambda r: f"{r['grad_norm_median']['mean']:.3g}"),
    ("|g|\nmax", lambda r: f"{r['grad_norm_max']['mean']:.3g}"),
    ("clipped\n%", lambda r: f"{100 * r['clip_rate']['mean']:.0f}"),
    ("segment\nmean", lambda r: f"{r['segment_mean']['mean']:.1f}"),
    ("segment\nmax", lambda r: f"{r['segment_max']['mean']:.0f}"),
    ("largest\nξ", lambda r: f"{r['max_weight']['mean']:.3g}"),
]
QUALITY_COLUMNS = [
    ("strategy", lambda r: r["strategy"]),
    ("weights", lambda r: r["at"]),
    ("bias", lambda r: f"{r['bias']:.3f}"),
    ("bias\nfloor", lambda r: f"{r['bias_floor']:.3f}"),
    ("rel sd", lambda r: f"{r['rel_sd']:.3f}"),
    ("cosine", lambda r: f"{r['cosine']:.3f}"),
    ("reach", lambda r: f"{r['reach']:.2f}"),
    ("memory", lambda r: f"{r['memory']:.2f}"),
    ("back-\nward", lambda r: f"{r['backward']:.2f}"),
]


def cells(columns, rows) -> tuple[list[str], list[list[str]]]:
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, caption) of the run tables and, if measured, the gradient-quality table."""
    seeds = ", ".join(map(str, results["seeds"]))
    out = [
        (results["title"], *cells(RUN_COLUMNS, results["rows"]), f"mean ± sd over seeds {seeds}; {results['memory']}"),
        ("during training", *cells(DYNAMICS_COLUMNS, results["rows"]),
         f"means over seeds {seeds}: training perplexity at the end, pre-clip gradient norm, share of updates "
         "clipped, segment lengths "
         "and the largest compensation factor ξ (product of 1/(1 - c_k) over a segment)"),
    ]
    q = results["gradient_quality"]
    if q:
        out.append((
            f"gradient quality: {q['windows']} windows of {q['length']} steps, {q['draws']} draws per random strategy",
            *cells(QUALITY_COLUMNS, q["rows"]),
            "against exact BPTT over each window: bias ||E[g] - g||/||g|| (bias floor: what an unbiased "
            "estimator shows from this many draws), rel sd, cosine; reach: share of (target, earlier step) "
            "pairs the gradient connects; memory: longest backpropagated span / window; backward: steps "
            "backpropagated / window (1 for every strategy but tbptt, which replays its context).",
        ))
    return out


def rich_table(title: str, headers: list[str], rows: list[list[str]], caption: str) -> Table:
    columns = [Column(escape(h), width=max(*map(len, cells), *map(len, h.splitlines())))  # cells never wrap
               for h, *cells in zip(headers, *rows)]
    table = Table(*columns, title=escape(title), caption=escape(caption), caption_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def markdown(results: dict) -> str:
    parts = ["# bptt compare\n"]
    for title, headers, rows, caption in tables(results):
        lines = [md_row([h.replace("\n", " ") for h in headers]), "|" + "---|" * len(headers)] + [md_row(row) for row in rows]
        parts.append("\n".join([f"**{title}**", ""] + lines + ["", caption, ""]))
    return "\n".join(parts)


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["strategy", "seeds"] + [f"{m}_{s}" for m in RUN_METRICS for s in ("mean", "sd")])
    for r in rows:
        writer.writerow([r["strategy"], r["seeds"]] + [r[m][s] for m in RUN_METRICS for s in ("mean", "sd")])
    return buffer.getvalue()


def describe(config: Config) -> str:
    m, t = config.model, config.train
    budget = (f"{t.max_time:g} s" if t.max_time else f"{compact(t.max_tokens)} chars" if t.max_tokens
              else f"{t.epochs} epochs")
    return (f"{m.cell.value.upper()}-{m.hidden}x{m.layers} · tau {config.strategy.tau} · "
            f"batch {config.data.batch_size} · {config.optim.optimizer.value} lr {config.optim.lr:g} · "
            f"{budget} per run")


def write_outputs(out: Path, results: dict, runs: dict[str, list[Path]]) -> None:
    """results.{json,csv,md} and curves.png (from the run directories of each strategy) in `out`."""
    atomic_write_json(out / "results.json", results)  # strict: non-finite numbers are null
    atomic_write_text(out / "results.csv", to_csv(results["rows"]))
    atomic_write_text(out / "results.md", markdown(results))
    plot_curves(out / "curves.png", runs, results["title"])
