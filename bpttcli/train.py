"""The training loop: one loop for every strategy, live metrics, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint
from .builders import build_model, build_optimizer, load_dataset, prepare_process
from .config import Config, LrSchedule, Partition, dump_yaml, from_dict, load_config, to_dict
from .data import RandomWindows, SequentialStreams
from .engine import evaluate, forward_loss
from .errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged, reason
from .fsutil import atomic_write_text, ensure_dir, timestamped_dir
from .model import detach_state
from .recurrence import GATES
from .runtime import on_sigint
from .strategies import make_strategy
from .ui import LiveView, compact
from .vocab import Vocab


def activation_bytes(config: Config, steps: int) -> int:
    """Rough bytes the backward pass keeps for `steps` steps (hidden states, gates, gradients)."""
    m = config.model
    per_step = config.data.batch_size * m.hidden * (2 * GATES[m.cell] + 2) * m.layers
    return 4 * per_step * steps


def perplexity(loss: float) -> float:
    """exp(loss), infinite rather than an OverflowError for a huge but finite loss."""
    return math.exp(loss) if loss < 709 else math.inf


def default_run_dir(config: Config) -> Path:
    return timestamped_dir("runs", config.strategy.name.value)


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
                "segments": list(self.segments), "max_weight": self.max_weight}


class Trainer:
    def __init__(
        self, config: Config, run_dir: Path, resume: dict | None = None, quiet: bool = False, view: LiveView | None = None
    ):
        self.config, self.run_dir, self.quiet, self.external_view = config, run_dir, quiet, view
        self.device, self.generator = prepare_process(config)
        self.data = load_dataset(config, quiet=quiet)
        if resume and self.data.vocab != Vocab.from_list(resume.get("vocab", [])):
            raise CheckpointError("resume: the corpus's vocabulary differs from the checkpoint's; use the same --data")
        self.model = build_model(config, len(self.data.vocab)).to(self.device)
        self.optimizer = build_optimizer(config, self.model)
        cls = SequentialStreams if config.data.partition is Partition.sequential else RandomWindows
        self.batcher = cls(self.data.train, config.data.batch_size, config.strategy.num_steps, self.generator)
        s = config.strategy
        self.strategy = make_strategy(s.name, s.num_steps, self.batcher.carries_state, s.schedule, s.alpha)
        self.norm = config.data.batch_size * self.strategy.mean_length
        self.total_tokens = config.train.epochs * self.batcher.steps_per_epoch * config.data.batch_size
        if config.train.max_tokens:
            self.total_tokens = min(self.total_tokens, config.train.max_tokens)
        self.step, self.epoch, self.tokens, self.elapsed = 0, 0, 0, 0.0
        self.best_val, self.last_val = math.inf, math.inf
        self.evaluated_at, self.metrics_lines = -1, 0
        self.norm_history: list[float] = []
        self.history: list[dict] = []  # per log interval: step, grad norm mean/max, ppl
        self.segment_stats = {"count": 0, "sum": 0, "max": 0, "max_weight": 1.0}
        self.last_train: dict = {}
        self.interval = Interval()
        self.stop_requested = False
        if resume:
            self._restore(resume)
        else:
            self.batcher.start_epoch()
            self.state = self.model.init_state(config.data.batch_size)

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        t = self.config.train
        self.started = time.monotonic() - self.elapsed
        self._rewind_metrics()
        view = self.external_view or LiveView("train", self._display_total(), self.quiet, unit="chars")
        with on_sigint(self._request_stop), contextlib.nullcontext(view) if self.external_view else view as self.view:
            self.view.advance(self.tokens)
            self._announce()
            while self._should_continue():
                self._train_step()
                if self.step % t.log_every == 0:
                    self._flush()
                if t.eval_every and self.step % t.eval_every == 0:
                    self._evaluate_and_save()
            if self.stop_requested:
                self._save()
            else:
                self._finish()
        if self.stop_requested:
            raise Interrupted(
                f"interrupted at step {self.step}; checkpoint saved; resume with: bptt train --resume {self.run_dir}"
            )
        return self.summary()

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True

    def _should_continue(self) -> bool:
        t = self.config.train
        if self.stop_requested or (t.max_steps and self.step >= t.max_steps):
            return False
        if t.max_tokens and self.tokens >= t.max_tokens:
            return False
        if t.max_time and time.monotonic() - self.started >= t.max_time:
            return False
        if self.batcher.remaining == 0:
            if self.epoch + 1 >= t.epochs:
                return False
            self.epoch += 1
            self.batcher.start_epoch()
            self.state = self.model.init_state(self.config.data.batch_size)
        return True

    def _available_steps(self) -> int:
        """Steps left in the epoch, capped near the token budget (so `full` cannot overshoot it by an epoch)."""
        budget = self.config.train.max_tokens
        if not budget:
            return self.batcher.remaining
        steps_left = -(-(budget - self.tokens) // self.config.data.batch_size)
        return min(self.batcher.remaining, max(steps_left, self.config.strategy.num_steps))

    def _train_step(self) -> None:
        segment = self.strategy.next_segment(self._available_steps(), self.generator)
        x, y = (t.to(self.device, non_blocking=True) for t in self.batcher.next(segment.length))
        if not self.batcher.carries_state:
            self.state = self.model.init_state(x.shape[1])
        xi = None if segment.xi is None else segment.xi.tolist()
        loss, state = forward_loss(self.model, x, y, self.state, xi, self.config.train.recompute)
        (loss / self.norm).backward()
        clip = self.config.optim.clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state = detach_state(state)
        self.step += 1
        self.tokens += y.numel()
        i = self.interval
        i.loss, i.tokens = i.loss + loss.detach(), i.tokens + y.numel()
        i.norms.append(grad_norm.detach())
        i.segments.append(segment.length)
        i.max_weight = max(i.max_weight, segment.max_weight)
        self.view.advance(y.numel())

    def learning_rate(self) -> float:
        """The base rate, or its cosine annealing over the token budget (epochs, or max_tokens if smaller)."""
        o = self.config.optim
        if o.schedule is LrSchedule.constant:
            return o.lr
        return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, self.tokens / self.total_tokens)))

    def _finish(self) -> None:
        """Log the partial interval and validate; last.pt resumes from before both, so a resume never doubles them."""
        state = self._state()
        if self.interval.norms:
            self._flush()
        improved = self._evaluate() if self.evaluated_at != self.step else False
        self._save(best=improved, state=state)
        if self.config.train.max_steps and self.step >= self.config.train.max_steps:
            self.view.advance(0, total=self.tokens)  # the bar's total was an estimate from --max-steps

    def _display_total(self) -> int:
        """Characters the progress bar runs to: the budget, or what --max-steps allows if fewer."""
        t, c = self.config.train, self.config
        if not t.max_steps:
            return self.total_tokens
        steps = self.batcher.steps_per_epoch if self.strategy.whole_epoch else self.strategy.mean_length
        return min(self.total_tokens, t.max_steps * steps * c.data.batch_size)

    # ------------------------------------------------------------ metrics and checks
    def _check_finite(self) -> None:
        """Stop on a non-finite loss or gradient; the last checkpoint on disk stays the last good one."""
        i = self.interval
        if not i.norms:
            return
        norms = torch.stack([torch.as_tensor(n, dtype=torch.float32, device=self.device) for n in i.norms]).cpu()
        loss = float(i.loss)
        finite = torch.isfinite(norms)
        if math.isfinite(loss) and bool(finite.all()):
            i.norms = norms.tolist()
            return
        bad = 0 if finite.all() else int((~finite).nonzero()[0])
        self._diverged(f"step {self.step - len(norms) + bad + 1} (loss {loss:.4g}, grad norm {float(norms[bad]):.4g})")

    def _diverged(self, where: str) -> None:
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(f"non-finite loss or gradient at {where}; {kept}; lower --lr or set --clip")

    def _flush(self) -> None:
        """Write one metrics line for the interval just ended (the only host sync of the interval)."""
        self._check_finite()
        i, clip = self.interval, self.config.optim.clip
        norms = torch.tensor(i.norms)
        loss = float(i.loss) / i.tokens
        record = {
            "kind": "train", "step": self.step, "epoch": self.epoch, "tokens": self.tokens,
            "loss": loss, "ppl": perplexity(loss),
            "grad_norm_mean": float(norms.mean()), "grad_norm_max": float(norms.max()),
            "clip_rate": float((norms > clip).float().mean()) if clip > 0 else 0.0,
            "lr": self.learning_rate(),
            "segment_mean": sum(i.segments) / len(i.segments), "segment_max": max(i.segments),
            "max_weight": i.max_weight,
            "tokens_per_s": i.tokens / max(time.monotonic() - i.started, 1e-9), "elapsed": self._elapsed(),
        }
        self._write_metrics(record)
        self.norm_history.extend(i.norms)
        self.history.append({k: record[k] for k in ("step", "ppl", "grad_norm_mean", "grad_norm_max")})
        st = self.segment_stats
        st["count"] += len(i.segments)
        st["sum"] += sum(i.segments)
        st["max"] = max(st["max"], max(i.segments))
        st["max_weight"] = max(st["max_weight"], i.max_weight)
        self.interval = Interval()
        self.last_train = record
        self._show()

    def _show(self) -> None:
        """The live statistics line: the last interval's training numbers and the last validation."""
        r = self.last_train
        if r:
            val = f" / {self.last_val:.2f} val" if math.isfinite(self.last_val) else ""
            self.view.stats(
                f"loss {r['loss']:.3f} · ppl {r['ppl']:.2f} train{val} · |g| {r['grad_norm_mean']:.2f} · "
                f"clip {100 * r['clip_rate']:.0f}% · {compact(r['tokens_per_s'])} chars/s"
            )

    def _write_metrics(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.metrics_lines += 1

    def _rewind_metrics(self) -> None:
        """Keep only the metrics lines the checkpoint accounts for; later ones will be written again."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            atomic_write_text(path, "".join(lines[: self.metrics_lines]))

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _evaluate(self) -> bool:
        """Write an eval line with the validation perplexity; True when it is the best so far."""
        c = self.config
        self.evaluated_at = self.step
        if len(self.data.val) < 2:
            return True  # no validation split: the latest weights are the best we know
        val_loss = evaluate(self.model, self.data.val, c.data.batch_size, c.strategy.num_steps)
        self.last_val = perplexity(val_loss)
        improved = self.last_val < self.best_val
        self.best_val = min(self.best_val, self.last_val)
        self._write_metrics({
            "kind": "eval", "step": self.step, "epoch": self.epoch, "tokens": self.tokens,
            "val_loss": val_loss, "val_ppl": self.last_val, "best_val_ppl": self.best_val,
            "elapsed": self._elapsed(),
        })
        self._show()
        return improved

    def _evaluate_and_save(self) -> None:
        self._check_finite()
        self._save(best=self._evaluate())

    # -------------------------------------------------------------- checkpoints
    def summary(self) -> dict:
        st = self.segment_stats
        norms = torch.tensor(self.norm_history or [math.nan])
        clip = self.config.optim.clip
        return {
            "step": self.step, "epoch": self.epoch, "tokens": self.tokens, "elapsed": self._elapsed(),
            "best_val_ppl": self.best_val, "final_val_ppl": self.last_val,
            "train_ppl": self.last_train.get("ppl", math.nan),
            "grad_norm_median": float(norms.median()), "grad_norm_max": float(norms.max()),
            "clip_rate": float((norms > clip).float().mean()) if clip > 0 else 0.0,
            "segment_mean": st["sum"] / st["count"] if st["count"] else math.nan,
            "segment_max": st["max"], "max_weight": st["max_weight"],
            "history": self.history,
        }

    def _state(self) -> dict:
        """Everything besides the weights that an exact resume continues from."""
        self._check_finite()
        return {
            "step": self.step, "epoch": self.epoch, "tokens": self.tokens, "elapsed": self._elapsed(),
            "best_val": self.best_val, "last_val": self.last_val,
            "evaluated_at": self.evaluated_at, "metrics_lines": self.metrics_lines,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "batcher": self.batcher.state_dict(), "hidden": [list(layer) for layer in self.state],
            "interval": self.interval.state_dict(), "norm_history": torch.tensor(self.norm_history),
            "segment_stats": dict(self.segment_stats), "history": list(self.history),
            "last_train": self.last_train,
        }

    def _save(self, best: bool = False, state: dict | None = None) -> None:
        """Write last.pt (and best.pt) atomically; `state` is the resume point if not the current one."""
        state = state or self._state()
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._diverged(f"step {self.step} (non-finite weights)")
        payload = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "vocab": self.data.vocab.to_list(), "config": to_dict(self.config), **state,
            "summary": {**self.summary(), "grad_norms": torch.tensor(self.norm_history)},
        }
        paths = [self.run_dir / "last.pt"] + ([self.run_dir / "best.pt"] if best else [])
        checkpoint.save(payload, *paths)

    def _restore(self, p: dict) -> None:
        try:
            self.model.load_state_dict(p["model"])
            self.optimizer.load_state_dict(p["optimizer"])
            self.step, self.epoch, self.tokens, self.elapsed = p["step"], p["epoch"], p["tokens"], p["elapsed"]
            self.best_val, self.last_val = p["best_val"], p["last_val"]
            self.evaluated_at, self.metrics_lines = p["evaluated_at"], p["metrics_lines"]
            torch.set_rng_state(p["rng"]["torch"])
            self.generator.set_state(p["rng"]["generator"])
            if self.device.type == "cuda" and p["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(p["rng"]["cuda"])
            self.batcher.load_state_dict(p["batcher"])
            self.state = [tuple(t.to(self.device) for t in layer) for layer in p["hidden"]]
            i = p["interval"]
            self.interval = Interval(i["loss"], i["tokens"], i["norms"], i["segments"], i["max_weight"])
            self.norm_history = p["norm_history"].tolist()
            self.segment_stats, self.history, self.last_train = p["segment_stats"], p["history"], p["last_train"]
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint does not match this model or version: {reason(exc)}") from None

    def _announce(self) -> None:
        c, b = self.config, self.batcher
        self.view.print(
            f"[bold]{c.strategy.name.value}[/] BPTT · {c.model.cell.value.upper()}-{c.model.hidden}x{c.model.layers}"
            f" · vocab {len(self.data.vocab)} · {compact(len(self.data.train))} train / "
            f"{compact(len(self.data.val))} val chars\n{c.data.batch_size} {c.data.partition.value} streams x "
            f"{compact(b.steps_per_epoch)} chars per epoch · tau {c.strategy.num_steps} · {self.device.type}\n"
            f"run: {self.run_dir}" + (f" · resuming at step {self.step}" if self.step else "")
        )
        if self.strategy.whole_epoch:
            mib = activation_bytes(c, b.steps_per_epoch) / 2**20
            self.view.print(
                f"full BPTT over the whole epoch: one update per epoch, ~{mib:,.1f} MiB of activations"
                + (" (--recompute: ~sqrt of that)" if c.train.recompute else "")
            )


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a directory that already holds a run (its checkpoint or metrics would be overwritten)."""
    if (run_dir / "last.pt").exists() or (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir")


RESUMABLE_SECTIONS = ("optim", "train")


def resume_config(saved: dict, flags: dict | None = None, sets: list[str] = ()) -> Config:
    """The checkpoint's config with optim/train changes allowed; model, data or strategy changes refused."""
    old = to_dict(from_dict(saved))
    config = load_config(None, flags, sets, base=saved)
    new = to_dict(config)
    for section in old:
        for key, value in new[section].items():
            if value != old[section][key] and section not in RESUMABLE_SECTIONS:
                raise CheckpointError(
                    f"resume: {section}.{key} is {old[section][key]!r} in the checkpoint but {value!r} was asked; "
                    f"drop that option or start a new run"
                )
    return config


def _start(trainer: Trainer) -> dict:
    """Write the run's resolved config.yaml (only once everything is known to be valid), then train."""
    ensure_dir(trainer.run_dir, ConfigError)
    atomic_write_text(trainer.run_dir / "config.yaml", dump_yaml(trainer.config))
    return trainer.run()


def train(config: Config, run_dir: Path | None = None, quiet: bool = False, view: LiveView | None = None) -> dict:
    """Start a new run; returns its summary. `view` replaces the run's own progress display."""
    run_dir = Path(run_dir or config.train.run_dir or default_run_dir(config))
    check_new_run_dir(run_dir)
    config.train.run_dir = str(run_dir)
    return _start(Trainer(config, run_dir, quiet=quiet, view=view))


def resume(run_dir: Path, flags: dict | None = None, sets: list[str] = (), quiet: bool = False) -> dict:
    """Continue the run in `run_dir` from its last.pt, exactly as if it had never stopped."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir} has no last.pt to resume from; start a run with bptt train first")
    payload = checkpoint.load(run_dir / "last.pt")
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{run_dir / 'last.pt'} holds no run config; it was not written by bptt train")
    config = resume_config(payload["config"], flags, sets)
    config.train.run_dir = str(run_dir)
    return _start(Trainer(config, run_dir, resume=payload, quiet=quiet))
