"""`bptt compare`: every strategy trained on the same data, model, initial weights and budget, side by side.

Each run lives in OUT/runs/<strategy>-s<seed>/ and is complete once its summary.json exists (written
atomically last), so an interrupted comparison keeps its finished runs and a rerun skips them. Each run's
peak memory comes from bpttcli.memory, its gradient against exact BPTT from bpttcli.gradient_quality,
and the tables and files from bpttcli.compare_report.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path

from .builders import load_dataset
from .compare_report import aggregate, describe, write_outputs
from .config import MAX_SEED, Config, Partition, load_config, to_dict
from .data import Dataset
from .errors import CheckpointError, ConfigError, Interrupted, shown
from .fsutil import atomic_write_text, ensure_dir, timestamped_dir, to_json
from .gradient_quality import gradient_quality
from .memory import memory_measure, memory_meter
from .runtime import resolve_device
from .signals import signal_number
from .strategies import GROUPS, VARIANTS, StrategyName, make_variant
from .train import train
from .ui import LiveView

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "compare.yaml"
OPTION_KEYS = {  # compare's option -> the config key it sets
    "data": "data.path", "budget_tokens": "train.max_tokens", "max_time": "train.max_time",
}


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
    flags = {OPTION_KEYS["data"]: str(data) if data else None}
    if budget_tokens is not None or max_time is not None:
        flags |= {"train.epochs": 10**9, OPTION_KEYS["budget_tokens"]: budget_tokens or 0,
                  OPTION_KEYS["max_time"]: max_time or 0.0}
    return load_config(path or DEFAULT_CONFIG, flags, sets)


def run_dir(root: Path, variant: str, seed: int) -> Path:
    """Where one (strategy, seed) run lives."""
    return root / f"{variant}-s{seed}"


def run_config(base: Config, variant: str, seed: int, directory: Path) -> Config:
    config = copy.deepcopy(base)
    v, tau = VARIANTS[variant], config.strategy.tau
    config.strategy.name, config.strategy.schedule, config.strategy.floor, config.strategy.k2 = (
        v.name, v.schedule, v.floor(tau), v.k2(tau))
    if not v.carries_state:
        config.data.partition = Partition.random
    config.train.seed, config.train.run_dir = seed, str(directory)
    if config.strategy.name is StrategyName.full and config.data.partition is Partition.sequential:
        config.train.log_every = config.train.eval_every = 1  # one update per epoch: log and validate each
    return config


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
    directory = run_dir(root, variant, seed)
    done = directory / "summary.json"
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_bytes())
        same = comparable(record["config"]) == comparable(to_dict(run_config(base, variant, seed, directory)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not UTF-8, not JSON, not a record
        raise CheckpointError(f"{done} is damaged ({type(exc).__name__}); delete {directory} to redo that run") from None
    if not same:
        raise ConfigError(f"{directory} was trained with another config; use a new --out or delete that run")
    return record


def run_one(base: Config, variant: str, seed: int, root: Path, view: LiveView) -> dict:
    """Train one strategy with one seed, or reuse the finished run in root/<variant>-s<seed>."""
    record = finished_run(base, variant, seed, root)
    if record is not None:
        return record
    directory = run_dir(root, variant, seed)
    config = run_config(base, variant, seed, directory)
    shutil.rmtree(directory, ignore_errors=True)  # an unfinished run starts over
    with memory_meter(resolve_device(config.train.device)) as meter:
        summary = train(config, directory, quiet=True, view=RunView(view))
    summary = {k: v for k, v in summary.items() if k != "history"}
    summary["tokens_per_s"] = summary["tokens"] / max(summary["elapsed"], 1e-9)
    summary["peak_memory_mib"] = meter.peak / 2**20
    record = {"strategy": variant, "seed": seed, "config": to_dict(config), "summary": summary}
    atomic_write_text(directory / "summary.json", to_json(record, indent=1))
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
    records = []
    with LiveView("compare", per_run and per_run * len(jobs), unit="chars") as view:
        for i, (variant, seed) in enumerate(jobs):
            view.describe(f"{variant} s{seed} ({i + 1}/{len(jobs)})")
            records.append(run_one(config, variant, seed, root, view))
            view.advance(0, completed=per_run and per_run * (i + 1))
    return records


def measure_gradients(config: Config, variants: list[str], seed: int, root: Path, data: Dataset) -> dict:
    """Each strategy's gradient against exact BPTT, at the initial weights and at those of its run with `seed`."""
    strategies = {v: make_variant(v, config.strategy.tau, config.strategy.alpha) for v in variants}
    trained = {v: run_dir(root, v, seed) / "last.pt" for v in variants}
    return gradient_quality(config, strategies, trained, seed, data)


def compare(config: Config, variants: list[str], seeds: list[int], out: Path | None = None,
            gradients: bool = True) -> dict:
    """Train every (strategy, seed), measure gradient quality, write results.{json,csv,md} and curves.png."""
    started = time.monotonic()
    out = ensure_dir(Path(out or timestamped_dir("compare")), ConfigError)
    root = out / "runs"
    for variant in variants:  # refuse a damaged or foreign finished run before anything is prepared or shown
        for seed in seeds:
            finished_run(config, variant, seed, root)
    data = load_dataset(config)
    try:
        records = run_all(config, variants, seeds, root, data)
        measured = measure_gradients(config, variants, seeds[0], root, data) if gradients else None
    except (Interrupted, KeyboardInterrupt) as exc:
        finished = len(list(root.glob("*/summary.json")))
        raise Interrupted(f"interrupted; the {finished} finished runs are kept in {root}; "
                          f"rerun with --out {out} to skip them and finish", signal_number(exc)) from None
    device = resolve_device(config.train.device)
    results = {
        "out": str(out), "title": describe(config), "strategies": variants, "seeds": seeds,
        "device": device.type, "memory": f"peak MiB: {memory_measure(device)}", "config": to_dict(config),
        "rows": aggregate(records, variants), "gradient_quality": measured,
        "runs": [{"strategy": r["strategy"], "seed": r["seed"], **r["summary"]} for r in records],
    }
    results["elapsed"] = time.monotonic() - started
    write_outputs(out, results, {v: [run_dir(root, v, s) for s in seeds] for v in variants})
    return results
