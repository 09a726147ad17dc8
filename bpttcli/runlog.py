"""A run's log: the metrics it accumulates, the lines of `metrics.jsonl`, and what a checkpoint keeps of them.

The training loop records each update (`record_step`), ends a log interval (`flush`) and each
validation (`record_eval`); everything here is saved in checkpoints (`state_dict`) so that a
resumed run writes the same lines as one that never stopped (`rewind` drops the lines written
after the checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .fsutil import append_line, atomic_write_bytes, to_json
from .ui import compact


def perplexity(loss: float) -> float:
    """exp(loss), infinite rather than an OverflowError for a huge but finite loss."""
    return math.exp(loss) if loss < 709 else math.inf


def clip_rate(norms: torch.Tensor, clip: float) -> float:
    """The share of pre-clip gradient norms above `clip` (0 when clipping is off)."""
    return float((norms > clip).float().mean()) if clip > 0 else 0.0


@dataclass
class Interval:
    """What one log interval accumulates; saved in checkpoints so that resume is exact."""

    loss: float = 0.0
    tokens: int = 0
    norms: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    max_weight: float = 1.0
    started: float = field(default_factory=time.monotonic)

    def state_dict(self) -> dict:
        return {"loss": float(self.loss), "tokens": self.tokens, "norms": [float(n) for n in self.norms],
                "segments": list(self.segments), "max_weight": self.max_weight,
                "seconds": time.monotonic() - self.started}  # so that a resumed interval's chars/s stays true


def kept_lines(path: Path, count: int) -> list[bytes]:
    """The first `count` lines of metrics file `path`, refused unless each is a whole JSON line."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)[:count]
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; fix its permissions") from None
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError as exc:  # not UTF-8, or not JSON
            raise CheckpointError(f"{path} line {number} is damaged ({type(exc).__name__}); restore the "
                                  f"file or start a new run") from None
    return lines


class RunLog:
    """Metrics of one run: the current interval, the history, the best and last validation."""

    def __init__(self, path: Path, clip: float, write: bool = True):
        """`write=False` keeps the same accounts without touching `path` (the processes other than rank 0)."""
        self.path, self.clip, self.write = Path(path), clip, write
        self.sink = None  # called with every record written (the TensorBoard log), or None
        self.interval = Interval()
        self.norm_history: list[float] = []
        self.history: list[dict] = []  # per log interval: step, grad norm mean/max, ppl
        self.segment_stats = {"count": 0, "sum": 0, "max": 0, "max_weight": 1.0}
        self.last_train: dict = {}
        self.best_val, self.last_val = math.inf, math.inf
        self.evaluated_at, self.metrics_lines = -1, 0

    # ------------------------------------------------------------------ recording
    def record_step(self, loss: torch.Tensor, tokens: int, grad_norm: torch.Tensor, length: int, max_weight: float):
        """Accumulate one update without a host sync: `loss` and `grad_norm` stay tensors until `flush`."""
        i = self.interval
        i.loss, i.tokens = i.loss + loss.detach(), i.tokens + tokens
        i.norms.append(grad_norm.detach())
        i.segments.append(length)
        i.max_weight = max(i.max_weight, max_weight)

    def first_nonfinite(self, step: int) -> str | None:
        """Where the interval's loss or a gradient norm went non-finite (ending at update `step`), or None."""
        i = self.interval
        if not i.norms:
            return None
        device = next((n.device for n in i.norms if isinstance(n, torch.Tensor)), None)
        norms = torch.stack([torch.as_tensor(n, dtype=torch.float32, device=device) for n in i.norms]).cpu()
        loss, finite = float(i.loss), torch.isfinite(norms)
        if math.isfinite(loss) and bool(finite.all()):
            i.norms = norms.tolist()
            return None
        bad = 0 if finite.all() else int((~finite).nonzero()[0])
        return f"step {step - len(norms) + bad + 1} (loss {loss:.4g}, grad norm {float(norms[bad]):.4g})"

    def flush(self, position: dict, lr: float, elapsed: float) -> dict:
        """Write the train line of the interval just ended (call `first_nonfinite` first) and start a new one.

        `position` is {"step", "epoch", "tokens"} after the interval's last update.
        """
        i = self.interval
        norms = torch.tensor(i.norms)
        loss = float(i.loss) / i.tokens
        record = {
            "kind": "train", **position, "loss": loss, "ppl": perplexity(loss),
            "grad_norm_mean": float(norms.mean()), "grad_norm_max": float(norms.max()),
            "clip_rate": clip_rate(norms, self.clip), "lr": lr,
            "segment_mean": sum(i.segments) / len(i.segments), "segment_max": max(i.segments),
            "max_weight": i.max_weight,
            "tokens_per_s": i.tokens / max(time.monotonic() - i.started, 1e-9), "elapsed": elapsed,
        }
        self._write(record)
        self.norm_history.extend(i.norms)
        self.history.append({k: record[k] for k in ("step", "ppl", "grad_norm_mean", "grad_norm_max")})
        st = self.segment_stats
        st["count"] += len(i.segments)
        st["sum"] += sum(i.segments)
        st["max"] = max(st["max"], max(i.segments))
        st["max_weight"] = max(st["max_weight"], i.max_weight)
        self.interval = Interval()
        self.last_train = record
        return record

    def record_eval(self, position: dict, val_loss: float, elapsed: float) -> bool:
        """Write an eval line; True when its perplexity is the best so far."""
        self.last_val = perplexity(val_loss)
        improved = self.last_val < self.best_val
        self.best_val = min(self.best_val, self.last_val)
        self._write({"kind": "eval", **position, "val_loss": val_loss, "val_ppl": self.last_val,
                     "best_val_ppl": self.best_val, "elapsed": elapsed})
        return improved

    def record_stop(self, position: dict, reason: str, elapsed: float) -> None:
        """Write a stop line: how a run ended that leaves no checkpoint to say so (it diverged)."""
        self._write({"kind": "stop", **position, "reason": reason, "elapsed": elapsed})

    def _write(self, record: dict) -> None:
        """One strict JSON line (a non-finite number is written as null), appended whole or not at all."""
        if self.write:
            append_line(self.path, to_json(record))
        self.metrics_lines += 1
        if self.sink is not None:
            self.sink(record)

    def rewind(self) -> None:
        """Keep only the metrics lines this log accounts for, checked to be whole JSON lines (before anything
        is written); a resumed run writes the later ones again."""
        if self.write and self.path.exists():
            lines = kept_lines(self.path, self.metrics_lines)
            atomic_write_bytes(self.path, b"".join(line.rstrip(b"\n") + b"\n" for line in lines))

    # ------------------------------------------------------------------- reports
    def stats_line(self) -> str | None:
        """The live statistics line: the last interval's training numbers and the last validation."""
        r = self.last_train
        if not r:
            return None
        val = f" / {self.last_val:.2f} val" if math.isfinite(self.last_val) else ""
        return (f"loss {r['loss']:.3f} · ppl {r['ppl']:.2f} train{val} · |g| {r['grad_norm_mean']:.2f} · "
                f"clip {100 * r['clip_rate']:.0f}% · {compact(r['tokens_per_s'])} chars/s")

    def summary(self) -> dict:
        """The run's metrics summary (without the position, which the trainer adds)."""
        st = self.segment_stats
        norms = torch.tensor(self.norm_history or [math.nan])
        return {
            "best_val_ppl": self.best_val, "final_val_ppl": self.last_val,
            "train_ppl": self.last_train.get("ppl", math.nan),
            "grad_norm_median": float(norms.median()), "grad_norm_max": float(norms.max()),
            "clip_rate": clip_rate(norms, self.clip),
            "segment_mean": st["sum"] / st["count"] if st["count"] else math.nan,
            "segment_max": st["max"], "max_weight": st["max_weight"],
            "history": self.history,
        }

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The log's part of a checkpoint (top-level keys, as checkpoints have always stored them)."""
        return {
            "best_val": self.best_val, "last_val": self.last_val,
            "evaluated_at": self.evaluated_at, "metrics_lines": self.metrics_lines,
            "interval": self.interval.state_dict(), "norm_history": torch.tensor(self.norm_history),
            "segment_stats": dict(self.segment_stats), "history": list(self.history),
            "last_train": self.last_train,
        }

    def load_state_dict(self, p: dict) -> None:
        self.best_val, self.last_val = p["best_val"], p["last_val"]
        self.evaluated_at, self.metrics_lines = p["evaluated_at"], p["metrics_lines"]
        i = p["interval"]
        self.interval = Interval(i["loss"], i["tokens"], i["norms"], i["segments"], i["max_weight"],
                                 time.monotonic() - i.get("seconds", 0.0))
        self.norm_history = p["norm_history"].tolist()
        self.segment_stats, self.history, self.last_train = p["segment_stats"], p["history"], p["last_train"]
