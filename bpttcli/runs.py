"""`bptt runs`: the runs under a directory, one row each: what trained, how far, how well, how it ended.

A run is a directory with a config.yaml (written when training starts). Its numbers come from the
last lines of its metrics.jsonl; how it ended from its last.pt (the trainer records a stop reason
there when it stops on its own or on a signal) and from a `stop` line in metrics.jsonl (a run that
diverged keeps its last good checkpoint, so the line says it). A run is *running* while a process
holds the lock on its `.lock` file.
"""

from __future__ import annotations

import fcntl
import json
import math
from pathlib import Path

import yaml
from rich import box
from rich.table import Table

from .errors import ConfigError
from .ui import compact, duration

FINISHED = {"epochs", "max_steps", "max_tokens", "max_time"}  # stop reasons of a run that ended as planned


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short (a run writing it right now) is skipped."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def find(root: Path) -> list[Path]:
    """Every run directory under `root` (itself included), in name order (the default names are timestamps)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; pass the directory that holds your runs (default: runs)")
    return sorted(p.parent for p in root.rglob("config.yaml") if not p.parent.name.startswith("."))


def locked(run_dir: Path) -> bool:
    """True while a training process holds `<run_dir>/.lock` (a non-blocking shared lock fails)."""
    path = Path(run_dir) / ".lock"
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def last_checkpoint(run_dir: Path) -> dict | None:
    """Position and stop reason of last.pt: {"step", "tokens", "elapsed", "stop_reason"}; None without one.

    `stop_reason` is None for a periodic checkpoint and '?' for a checkpoint that records none (an older
    bptt) or cannot be read."""
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        return None
    import torch  # only here: `bptt --help` does not need it

    try:  # mmap: the summary is read, not the weights
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {**{k: payload[k] for k in ("step", "tokens", "elapsed")},
                "stop_reason": payload["summary"].get("stop_reason", "?")}
    except Exception:  # a damaged or foreign file: the table says so rather than fail
        return {"stop_reason": "?"}


def status(run_dir: Path, records: list[dict], saved: dict | None) -> str:
    """running, finished, interrupted, diverged, killed (no end recorded, nothing running) or unknown."""
    if locked(run_dir):
        return "running"
    if records and records[-1]["kind"] == "stop" and records[-1]["reason"].startswith("diverged"):
        return "diverged"
    reason = saved and saved["stop_reason"]
    if reason in FINISHED:
        return "finished"
    if reason == "interrupted":
        return "interrupted"
    return "killed" if reason is None else "unknown"


def describe(run_dir: Path, root: Path) -> dict:
    """One run's row: name, model, strategy, steps, chars, best val ppl, wall seconds, status."""
    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = {}
    m, s = config.get("model", {}), config.get("strategy", {})
    records = read_metrics(run_dir / "metrics.jsonl")
    saved = last_checkpoint(run_dir)
    logged = records[-1] if records else {}
    last = saved if saved and saved.get("step", -1) > logged.get("step", 0) else logged  # the later of the two
    evals = [r["val_ppl"] for r in records if r["kind"] == "eval" and math.isfinite(r["val_ppl"])]
    return {
        "run": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
        "model": f"{str(m.get('cell', '?')).upper()}-{m.get('hidden', '?')}x{m.get('layers', '?')}",
        "strategy": s.get("name", "?"), "schedule": s.get("schedule"), "tau": s.get("tau"),
        "steps": last.get("step", 0), "chars": last.get("tokens", 0),
        "best_val_ppl": min(evals) if evals else None, "wall_s": last.get("elapsed", 0.0),
        "status": status(run_dir, records, saved),
    }


def collect(root: Path) -> list[dict]:
    root = Path(root)
    return [describe(run, root) for run in find(root)]


def table(rows: list[dict], root: Path) -> Table:
    """The rows as a table; a long run name folds onto a second line rather than lose characters."""
    t = Table(title=f"runs under {root}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              padding=(0, 1, 0, 0))
    t.add_column("run", overflow="fold", min_width=8)
    for header in ("model", "strategy", "steps", "chars", "best\nval ppl", "wall", "status"):
        t.add_column(header, no_wrap=True, justify="left" if header in ("model", "strategy", "status") else "right")
    for r in rows:
        best = "-" if r["best_val_ppl"] is None else f"{r['best_val_ppl']:.2f}"
        t.add_row(r["run"], r["model"], r["strategy"], str(r["steps"]), compact(r["chars"]), best,
                  duration(r["wall_s"]), r["status"])
    return t
