"""`bptt compare`: every strategy trained on the same data, model, initial weights and budget, side by side.

Each run lives in OUT/runs/<strategy>-s<seed>/ and is complete once its summary.json exists (written
atomically last), so an interrupted comparison keeps its finished runs and a rerun skips them.
Peak memory is CUDA's allocator peak on a GPU; on a CPU it is the peak of the activations autograd
keeps for backward (tensors saved by the forward pass; views of one buffer counted once; parameters
excluded): what the truncation strategy decides, without the process's fixed baseline.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import shutil
import statistics
import time
import weakref
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich import box
from rich.markup import escape
from rich.table import Column, Table

from . import checkpoint
from .config import MAX_SEED, Config, Partition, load_config, to_dict
from .data import Dataset, RandomWindows
from .engine import segments, window_gradient
from .fsutil import atomic_write_text, ensure_dir, to_json
from .runtime import resolve_device, seed_everything
from .strategies import Full, RandomTruncation, Schedule, Strategy, StrategyName, make_strategy
from .builders import build_model, load_dataset
from .errors import CheckpointError, ConfigError, Interrupted, shown
from .signals import signal_number
from .train import train
from .ui import LiveView, compact

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "compare.yaml"
VARIANTS = {
    "full": (StrategyName.full, Schedule.geometric),
    "truncated": (StrategyName.truncated, Schedule.geometric),
    "random-geometric": (StrategyName.random, Schedule.geometric),
    "random-polytail": (StrategyName.random, Schedule.polytail),
}
GROUPS = {"random": ["random-geometric", "random-polytail"]}
WINDOWS, DRAWS, WINDOW_FACTOR = 4, 8, 5  # gradient quality: K windows of 5 tau steps, M draws of a random strategy


# ------------------------------------------------------------------ options
def parse_strategies(text: str) -> list[str]:
    """'full,truncated,random' -> variant names; `random` stands for both of its schedules."""
    names = []
    for item in (s.strip() for s in text.split(",")):
        if item not in VARIANTS and item not in GROUPS:
            raise ConfigError(f"--strategies: unknown strategy '{item}'; choose from {', '.join([*VARIANTS, *GROUPS])}")
        names += GROUPS.get(item, [item])
    return list(dict.fromkeys(names))


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or max(seeds) >= MAX_SEED or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {shown(text)} is not a list of distinct non-negative integers below 2^63; "
                          f"e.g. --seeds 0,1,2")
    return seeds


def compare_config(path: Path | None, data: Path | None, budget_tokens: int | None, max_time: float | None,
                   sets: list[str] = ()) -> Config:
    """configs/compare.yaml (or `path`), then the budget: characters or seconds per run, instead of its epochs."""
    if budget_tokens is not None and max_time is not None:
        raise ConfigError("pass either --budget-tokens or --max-time, not both")
    flags = {"data.path": str(data) if data else None}
    if budget_tokens is not None or max_time is not None:
        flags |= {"train.epochs": 10**9, "train.max_tokens": budget_tokens or 0, "train.max_time": max_time or 0.0}
    return load_config(path or DEFAULT_CONFIG, flags, sets)


def run_config(base: Config, variant: str, seed: int, run_dir: Path) -> Config:
    config = copy.deepcopy(base)
    config.strategy.name, config.strategy.schedule = VARIANTS[variant]
    config.train.seed, config.train.run_dir = seed, str(run_dir)
    if config.strategy.name is StrategyName.full and config.data.partition is Partition.sequential:
        config.train.log_every = config.train.eval_every = 1  # one update per epoch: log and validate each
    return config


# ------------------------------------------------------------------ memory
class SavedActivations:
    """Peak bytes of the tensors autograd saves for backward: parameters excluded, views of one storage
    counted once (as the largest of them), a slice of a bigger buffer (a batch of the token matrix) as itself."""

    def __init__(self):
        self.held: dict[int, list[int]] = {}  # storage address -> [saved views alive, bytes counted]
        self.current = self.peak = 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "SavedActivations":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor):
        if tensor.is_leaf and tensor.requires_grad:
            return tensor  # a parameter: not an activation
        key = tensor.untyped_storage().data_ptr()
        entry = self.held.setdefault(key, [0, 0])
        size = tensor.numel() * tensor.element_size()
        entry[0] += 1
        if size > entry[1]:
            self.current += size - entry[1]
            self.peak = max(self.peak, self.current)
            entry[1] = size
        box = _Box(tensor)
        weakref.finalize(box, self._release, key)  # autograd drops the box once backward has used it
        return box

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Box) else packed

    def _release(self, key: int) -> None:
        entry = self.held[key]
        entry[0] -= 1
        if not entry[0]:
            self.current -= entry[1]
            del self.held[key]


class _Box:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class CudaPeak:
    """CUDA's allocator peak (torch.cuda.max_memory_allocated) over the block."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self) -> "CudaPeak":
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.peak = torch.cuda.max_memory_allocated(self.device)


def memory_meter(device: torch.device):
    return CudaPeak(device) if device.type == "cuda" else SavedActivations()


def memory_measure(device: torch.device) -> str:
    if device.type == "cuda":
        return "peak MiB: CUDA allocator peak (torch.cuda.max_memory_allocated) during the run"
    return "peak MiB: largest set of activations autograd held for backward (parameters excluded)"


# ------------------------------------------------------------------ runs
class RunView:
    """One run's view of the shared progress bar: it advances it and shows stats, but prints nothing."""

    def __init__(self, view: LiveView):
        self.view = view

    def advance(self, amount: float = 1, **fields) -> None:
        self.view.advance(amount)

    def stats(self, text: str) -> None:
        self.view.stats(text)

    def print(self, message: str) -> None:
        pass


def comparable(config: dict) -> dict:
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "run_dir"}}


def finished_run(base: Config, variant: str, seed: int, root: Path) -> dict | None:
    """The record of the finished run in root/<variant>-s<seed>, None if it is unfinished; refused if its
    summary.json is damaged or it was trained with another config."""
    run_dir = root / f"{variant}-s{seed}"
    done = run_dir / "summary.json"
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_bytes())
        same = comparable(record["config"]) == comparable(to_dict(run_config(base, variant, seed, run_dir)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not UTF-8, not JSON, not a record
        raise CheckpointError(f"{done} is damaged ({type(exc).__name__}); delete {run_dir} to redo that run") from None
    if not same:
        raise ConfigError(f"{run_dir} was trained with another config; use a new --out or delete that run")
    return record


def run_one(base: Config, variant: str, seed: int, root: Path, view: LiveView) -> dict:
    """Train one strategy with one seed, or reuse the finished run in root/<variant>-s<seed>."""
    record = finished_run(base, variant, seed, root)
    if record is not None:
        return record
    run_dir = root / f"{variant}-s{seed}"
    config = run_config(base, variant, seed, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
    with memory_meter(resolve_device(config.train.device)) as meter:
        summary = train(config, run_dir, quiet=True, view=RunView(view))
    summary = {k: v for k, v in summary.items() if k != "history"}
    summary["tokens_per_s"] = summary["tokens"] / max(summary["elapsed"], 1e-9)
    summary["peak_memory_mib"] = meter.peak / 2**20
    record = {"strategy": variant, "seed": seed, "config": to_dict(config), "summary": summary}
    atomic_write_text(run_dir / "summary.json", to_json(record, indent=1))
    return record


def run_tokens(config: Config, data: Dataset) -> int | None:
    """Characters one run trains on: its epochs, capped by the token budget; None when time decides."""
    t = config.train
    if t.max_time:
        return None
    per_epoch = (len(data.train) - 1) // config.data.batch_size * config.data.batch_size
    return min(t.epochs * per_epoch, t.max_tokens or math.inf)


def run_all(config: Config, variants: list[str], seeds: list[int], root: Path, data: Dataset) -> list[dict]:
    """Every (strategy, seed) run under one progress bar, in order."""
    jobs = [(v, s) for v in variants for s in seeds]
    per_run = run_tokens(config, data)
    for variant, seed in jobs:  # refuse a damaged or foreign finished run before the progress bar starts
        finished_run(config, variant, seed, root)
    records = []
    with LiveView("compare", per_run and per_run * len(jobs), unit="chars") as view:
        for i, (variant, seed) in enumerate(jobs):
            view.describe(f"{variant} s{seed} ({i + 1}/{len(jobs)})")
            records.append(run_one(config, variant, seed, root, view))
            view.advance(0, completed=per_run and per_run * (i + 1))
    return records


# ------------------------------------------------------------------ gradient quality
def draw_gradient(model, x, y, strategy: Strategy, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """One gradient of `strategy` over the window from a fresh state, and the segment lengths it drew."""
    replay = torch.Generator().set_state(generator.get_state())
    lengths = [part.stop - part.start for part, _ in segments(strategy, len(x), replay)]
    return window_gradient(model, x, y, model.init_state(x.shape[1]), strategy, generator, y.numel()), lengths


def score(grads: torch.Tensor, exact: torch.Tensor, lengths: list[list[int]]) -> dict:
    """Bias, relative sd and cosine of gradient draws [M, P] against the exact gradient; reach and memory."""
    scale, mean, window = exact.norm(), grads.mean(0), sum(lengths[0])
    spread = ((grads - mean).norm(dim=1).pow(2).sum() / max(len(grads) - 1, 1)).sqrt() / scale
    pairs = statistics.mean(sum(n * (n + 1) / 2 for n in draw) for draw in lengths)
    return {
        "bias": float((mean - exact).norm() / scale), "rel_sd": float(spread),
        "bias_floor": float(spread) / math.sqrt(len(grads)),
        "cosine": float(F.cosine_similarity(grads, exact[None]).mean()),
        "reach": pairs / (window * (window + 1) / 2),
        "memory": statistics.mean(max(draw) for draw in lengths) / window,
    }


def probe(model, windows, strategies: dict[str, Strategy], draws: int, generator: torch.Generator) -> dict[str, dict]:
    """For each strategy: its gradient quality on every window at the current weights, averaged."""
    results = {name: [] for name in strategies}
    for x, y in windows:
        exact, _ = draw_gradient(model, x, y, Full(len(x)), generator)
        for name, strategy in strategies.items():
            n = draws if isinstance(strategy, RandomTruncation) else 1
            grads, lengths = zip(*(draw_gradient(model, x, y, strategy, generator) for _ in range(n)))
            results[name].append(score(torch.stack(grads), exact, list(lengths)))
    return {name: {k: statistics.mean(r[k] for r in rows) for k in rows[0]} for name, rows in results.items()}


def gradient_quality(config: Config, variants: list[str], seed: int, root: Path, data: Dataset,
                     windows: int = WINDOWS, draws: int = DRAWS) -> dict:
    """Each strategy's gradient against exact BPTT on fixed windows, at the initial and its trained weights."""
    device = resolve_device(config.train.device)
    tau = config.strategy.tau
    length = min(WINDOW_FACTOR * tau, len(data.train) - 1)
    seed_everything(seed)
    model = build_model(config, len(data.vocab)).to(device).eval()  # the runs' initial weights; no dropout
    batcher = RandomWindows(data.train, config.data.batch_size, torch.Generator().manual_seed(seed))
    fixed = [tuple(t.to(device) for t in batcher.next(length)) for _ in range(windows)]
    strategies = {v: make_strategy(VARIANTS[v][0], tau, True, VARIANTS[v][1], config.strategy.alpha) for v in variants}
    generator = torch.Generator().manual_seed(seed)
    initial = probe(model, fixed, strategies, draws, generator)
    rows = []
    for v in variants:
        model.load_state_dict(checkpoint.load(root / f"{v}-s{seed}" / "last.pt")["model"])
        trained = probe(model, fixed, {v: strategies[v]}, draws, generator)[v]
        rows += [{"strategy": v, "at": "initial", **initial[v]}, {"strategy": v, "at": "trained", **trained}]
    return {"windows": windows, "length": length, "draws": draws, "seed": seed, "rows": rows}


# ------------------------------------------------------------------ results
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


def eval_curves(run_dir: Path) -> dict[str, list[float]]:
    """The validation perplexity a run logged, with the characters and seconds at which it did."""
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    evals = [r for r in lines if r["kind"] == "eval"]
    return {"tokens": [r["tokens"] for r in evals], "elapsed": [r["elapsed"] for r in evals],
            "val_ppl": [math.nan if r["val_ppl"] is None else r["val_ppl"] for r in evals]}  # null: overflowed


def band(curves: list[dict], x: str, points: int = 60):
    """Mean and sd of the seeds' val_ppl curves on a shared grid over the x range all of them cover."""
    curves = [c for c in curves if c[x]]
    lo, hi = max(c[x][0] for c in curves), min(c[x][-1] for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([statistics.mean(c[x][-1] for c in curves)])
    values = np.stack([np.interp(grid, c[x], c["val_ppl"]) for c in curves])
    sd = values.std(0, ddof=1) if len(curves) > 1 else None
    return grid, values.mean(0), sd


def plot_curves(path: Path, root: Path, variants: list[str], seeds: list[int], title: str) -> None:
    """Validation perplexity against characters and against wall time: mean ± sd over seeds per strategy."""
    from .plots import Panel, Series, plot_panels

    curves = {v: [eval_curves(root / f"{v}-s{s}") for s in seeds] for v in variants}
    panels = []
    for x, label in (("tokens", "training characters"), ("elapsed", "wall time (s)")):
        series = [Series(v, *band(c, x)) for v, c in curves.items() if any(run[x] for run in c)]
        panels.append(Panel(series, label, "validation perplexity", logy=True))
    plot_panels(path, panels, title)


def pm(metric: dict, fmt: str = "{:.2f}") -> str:
    return fmt.format(metric["mean"]) + (f"±{fmt.format(metric['sd'])}" if metric["sd"] else "")


RUN_COLUMNS = [  # header, cell
    ("strategy", lambda r: r["strategy"]),
    ("val ppl best", lambda r: pm(r["best_val_ppl"])),
    ("val ppl final", lambda r: pm(r["final_val_ppl"])),
    ("train ppl", lambda r: f"{r['train_ppl']['mean']:.2f}"),
    ("updates", lambda r: f"{r['updates']['mean']:.0f}"),
    ("chars", lambda r: compact(r["tokens"]["mean"])),
    ("chars/s", lambda r: compact(r["tokens_per_s"]["mean"])),
    ("wall s", lambda r: f"{r['wall_s']['mean']:.1f}"),
    ("peak MiB", lambda r: f"{r['peak_memory_mib']['mean']:.3g}"),
]
DYNAMICS_COLUMNS = [
    ("strategy", lambda r: r["strategy"]),
    ("|g| median", lambda r: f"{r['grad_norm_median']['mean']:.3g}"),
    ("|g| max", lambda r: f"{r['grad_norm_max']['mean']:.3g}"),
    ("clipped %", lambda r: f"{100 * r['clip_rate']['mean']:.0f}"),
    ("segment mean", lambda r: f"{r['segment_mean']['mean']:.1f}"),
    ("segment max", lambda r: f"{r['segment_max']['mean']:.0f}"),
    ("largest ξ", lambda r: f"{r['max_weight']['mean']:.3g}"),
]
QUALITY_COLUMNS = [
    ("strategy", lambda r: r["strategy"]),
    ("weights", lambda r: r["at"]),
    ("bias", lambda r: f"{r['bias']:.3f}"),
    ("bias floor", lambda r: f"{r['bias_floor']:.3f}"),
    ("rel sd", lambda r: f"{r['rel_sd']:.3f}"),
    ("cosine", lambda r: f"{r['cosine']:.3f}"),
    ("reach", lambda r: f"{r['reach']:.2f}"),
    ("memory", lambda r: f"{r['memory']:.2f}"),
]


def cells(columns, rows) -> tuple[list[str], list[list[str]]]:
    return [h for h, _ in columns], [[cell(r) for _, cell in columns] for r in rows]


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, caption) of the run tables and, if measured, the gradient-quality table."""
    seeds = ", ".join(map(str, results["seeds"]))
    out = [
        (results["title"], *cells(RUN_COLUMNS, results["rows"]), f"mean ± sd over seeds {seeds}; {results['memory']}"),
        ("during training", *cells(DYNAMICS_COLUMNS, results["rows"]),
         f"means over seeds {seeds}: pre-clip gradient norm, share of updates clipped, segment lengths "
         "and the largest compensation factor ξ (product of 1/(1 - c_k) over a segment)"),
    ]
    q = results["gradient_quality"]
    if q:
        out.append((
            f"gradient quality: {q['windows']} windows of {q['length']} steps, {q['draws']} draws per random strategy",
            *cells(QUALITY_COLUMNS, q["rows"]),
            "against exact BPTT over each window: bias ||E[g] - g||/||g|| (bias floor: what an unbiased "
            "estimator shows from this many draws), rel sd, cosine; reach: share of (target, earlier step) "
            "pairs the gradient connects; memory: longest segment / window. Each strategy backpropagates "
            "every step once, so the backward cost is the same for all.",
        ))
    return out


def rich_table(title: str, headers: list[str], rows: list[list[str]], caption: str) -> Table:
    columns = [Column(escape(h), min_width=max(map(len, cells))) for h, *cells in zip(headers, *rows)]
    table = Table(*columns, title=escape(title), caption=escape(caption), caption_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def markdown(results: dict) -> str:
    parts = ["# bptt compare\n"]
    for title, headers, rows, caption in tables(results):
        lines = [md_row(headers), "|" + "---|" * len(headers)] + [md_row(row) for row in rows]
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


def write_outputs(out: Path, results: dict) -> None:
    atomic_write_text(out / "results.json", to_json(results, indent=1))
    atomic_write_text(out / "results.csv", to_csv(results["rows"]))
    atomic_write_text(out / "results.md", markdown(results))
    plot_curves(out / "curves.png", out / "runs", results["strategies"], results["seeds"], results["title"])


def default_out() -> Path:
    return Path("compare") / f"{datetime.now():%Y%m%d-%H%M%S}"


def compare(config: Config, variants: list[str], seeds: list[int], out: Path | None = None,
            gradients: bool = True) -> dict:
    """Train every (strategy, seed), measure gradient quality, write results.{json,csv,md} and curves.png."""
    started = time.monotonic()
    out = ensure_dir(Path(out or default_out()), ConfigError)
    data, root = load_dataset(config), out / "runs"
    try:
        records = run_all(config, variants, seeds, root, data)
        measured = gradient_quality(config, variants, seeds[0], root, data) if gradients else None
    except (Interrupted, KeyboardInterrupt) as exc:
        finished = len(list(root.glob("*/summary.json")))
        raise Interrupted(f"interrupted; the {finished} finished runs are kept in {root}; "
                          f"rerun with --out {out} to skip them and finish", signal_number(exc)) from None
    device = resolve_device(config.train.device)
    results = {
        "out": str(out), "title": describe(config), "strategies": variants, "seeds": seeds,
        "device": device.type, "memory": memory_measure(device), "config": to_dict(config),
        "rows": aggregate(records, variants), "gradient_quality": measured,
        "runs": [{"strategy": r["strategy"], "seed": r["seed"], **r["summary"]} for r in records],
    }
    results["elapsed"] = time.monotonic() - started
    write_outputs(out, results)
    return results
