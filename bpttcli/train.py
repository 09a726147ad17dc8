"""The training loop: one loop for every strategy, live metrics, checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path

import torch

from . import checkpoint
from .announce import header
from .averaging import WeightAverage
from .builders import build_model, build_optimizer, load_dataset, prepare_process, scheduled_lr
from .config import Config, Partition, dump_yaml, to_dict
from .data import head, make_batcher
from .distributed import join
from .engine import Replay, evaluate
from .errors import CheckpointError, Interrupted, TrainingDiverged, WriteError, reason
from .fsutil import atomic_write_text
from .model import detach_state
from .runlog import RunLog, kept_lines
from .rundir import absolute, check_new_run_dir, check_same_corpus, corpus_record, default_run_dir, load_resume
from .signals import StopSignals, name
from .strategies import make_strategy
from .tensorboard_log import TensorBoardLog
from .ui import LiveView
from .vocab import Vocab


class Trainer:
    """The training loop: segments from the strategy, an update per segment, logging, checkpoints."""

    def __init__(
        self, config: Config, run_dir: Path, resume: dict | None = None, quiet: bool = False, view: LiveView | None = None
    ):
        self.config, self.run_dir = config, run_dir
        if config.train.tensorboard:
            TensorBoardLog.require()
        self.device, self.generator = prepare_process(config)
        self.group = join(config.data.batch_size)  # torchrun's process group, or this process alone
        self.device, quiet = self.group.place(self.device), quiet or not self.group.is_main
        self.corpus = self.group.first_on_each_node(lambda: corpus_record(config.data))
        if resume:  # before the corpus is prepared: another text is refused without writing anything
            check_same_corpus(resume.get("corpus"), self.corpus)
        self.data = self.group.first_on_each_node(lambda: load_dataset(config, quiet=quiet))
        if resume and self.data.vocab != Vocab.from_list(resume.get("vocab", [])):
            raise CheckpointError("resume: the corpus's vocabulary differs from the checkpoint's; use the same --data")
        self.model = build_model(config, len(self.data.vocab)).to(self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.average = WeightAverage(self.model, config.optim.average)
        d, s = config.data, config.strategy
        self.streams = self.group.local_batch(d.batch_size)  # this process's columns of the batch (all, alone)
        self.model.train_columns(d.batch_size, self.group.columns(d.batch_size))
        self.batcher = make_batcher(self.data.train, d.batch_size, s.tau, self.generator,
                                    d.partition is Partition.sequential)
        self.strategy = make_strategy(s.name, s.tau, self.batcher.carries_state, s.schedule, s.alpha, s.floor, s.k2)
        self.replay = Replay()  # the context of TBPTT's segments
        self.norm = d.batch_size * s.tau
        epochs_tokens = config.train.epochs * self.batcher.steps_per_epoch * d.batch_size
        self.total_tokens = min(epochs_tokens, config.train.max_tokens or epochs_tokens)
        self.updates, self.epoch, self.tokens, elapsed = 0, 0, 0, 0.0
        self.log = RunLog(run_dir / "metrics.jsonl", config.optim.clip, write=self.group.is_main)
        self.stop = StopSignals()  # SIGINT, SIGTERM, SIGHUP: finish the update, save, exit 128 + signal
        self.stop_reason: str | None = None  # why the run stopped, once it has
        self.saved_at, self.checkpoint_due = time.monotonic(), False
        if resume:
            elapsed = self._restore(resume)
        else:
            self.batcher.start_epoch()
            self.state = self.model.init_state(self.streams)
        self.invocation_started = time.monotonic()  # --max-time counts this invocation's time
        self.started = self.invocation_started - elapsed  # the whole run's clock, resumed parts included
        self.owns_view = view is None
        deadline = self.invocation_started + config.train.max_time if config.train.max_time else None
        self.view = view or LiveView("train", self._display_total(), quiet, unit="chars", deadline=deadline,
                                     progress_every=config.train.progress_every, completed=self.tokens)

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        board = (TensorBoardLog(self.run_dir, self.log, self.updates)
                 if self.config.train.tensorboard and self.group.is_main else None)
        try:
            with board or contextlib.nullcontext(), self.stop, self.view if self.owns_view else contextlib.nullcontext():
                self._announce()
                while self.step():
                    pass
                stopped = self.group.vote(self.stop.received)[0]  # every rank saves, or none
                if stopped:
                    self._save()
                else:
                    self._finish()
        except WriteError as exc:
            then = (f"resume with: bptt train --resume {self.run_dir}" if (self.run_dir / "last.pt").exists()
                    else f"start again with --run-dir {self.run_dir}")
            raise WriteError(f"{exc}; then {then}") from None
        if stopped:
            raise Interrupted(f"interrupted ({name(stopped)}) at step {self.updates}; checkpoint saved; "
                              f"resume with: bptt train --resume {self.run_dir}", stopped)
        return self.summary()

    def step(self) -> bool:
        """One update, with its log line and evaluation when due; False (and nothing done) once the run is over."""
        if not self._should_continue():
            return False
        self._train_step()
        t = self.config.train
        if self.updates % t.log_every == 0:
            self._flush()
        if t.eval_every and self.updates % t.eval_every == 0:
            self._check_finite()
            self._save(best=self._evaluate())
        elif self.checkpoint_due:
            self._save()  # at an update boundary, like every checkpoint: resuming from it is exact
        return True

    def _should_continue(self) -> bool:
        """True to train one more update; otherwise False, with the reason in `stop_reason`. What depends on
        a process's clock or signals is voted, so that every process stops (or saves) after the same update."""
        t, now = self.config.train, time.monotonic()
        signal, out_of_time, self.checkpoint_due = self.group.vote(
            self.stop.received, t.max_time and now - self.invocation_started >= t.max_time,
            t.checkpoint_every and now - self.saved_at >= t.checkpoint_every)
        if signal:
            return self._stop("interrupted")
        if t.max_steps and self.updates >= t.max_steps:
            return self._stop("max_steps")
        if t.max_tokens and self.tokens >= t.max_tokens:
            return self._stop("max_tokens")
        if out_of_time:
            return self._stop("max_time")
        if self.batcher.remaining == 0:
            if self.epoch + 1 >= t.epochs:
                return self._stop("epochs")
            self.epoch += 1
            self.batcher.start_epoch()
            self.state = self.model.init_state(self.streams)
            self.replay.clear()
        return True

    def _stop(self, reason: str) -> bool:
        self.stop_reason = reason
        return False

    def _available_steps(self) -> int:
        """Steps left in the epoch, capped near the token budget (so `full` cannot overshoot it by an epoch)."""
        budget = self.config.train.max_tokens
        if not budget:
            return self.batcher.remaining
        steps_left = -(-(budget - self.tokens) // self.config.data.batch_size)
        return min(self.batcher.remaining, max(steps_left, self.strategy.tau))

    def _train_step(self) -> None:
        segment = self.strategy.next_segment(self._available_steps(), self.generator)
        batch = self.group.columns_of(*self.batcher.next(segment.length))  # this process's streams
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        if not self.batcher.carries_state:
            self.state = self.model.init_state(x.shape[1])
        self.model.draw_masks(x.shape[1])
        loss, state = self.replay.forward(self.model, x, y, self.state, segment, self.config.train.recompute)
        (loss / self.norm).backward()
        loss = self.group.sum_gradients(self.model, loss)  # the global gradient and loss, on every process
        tokens = y.numel() * self.group.world_size
        clip = self.config.optim.clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.average.update(self.model)
        self.state = detach_state(state)
        self.updates += 1
        self.tokens += tokens
        self.log.record_step(loss, tokens, grad_norm, segment.length, segment.max_weight)
        self.view.advance(tokens, step=self.updates, epoch=self.epoch + 1)

    def learning_rate(self) -> float:
        return scheduled_lr(self.config.optim, self.tokens / self.total_tokens)

    def _finish(self) -> None:
        """Log the partial interval and validate; last.pt resumes from before both, so a resume never doubles them."""
        state = self._state()
        if self.log.interval.norms:
            self._flush()
        improved = self._evaluate() if self.log.evaluated_at != self.updates else False
        self._save(best=improved, state=state)
        if self.config.train.max_steps and self.updates >= self.config.train.max_steps:
            self.view.advance(0, total=self.tokens)  # the bar's total was an estimate from --max-steps

    def _display_total(self) -> int:
        """Characters the progress bar runs to: the budget, or what --max-steps allows if fewer."""
        t, c = self.config.train, self.config
        if not t.max_steps:
            return self.total_tokens
        steps = self.batcher.steps_per_epoch if self.strategy.whole_epoch else self.strategy.tau
        return min(self.total_tokens, t.max_steps * steps * c.data.batch_size)

    # ------------------------------------------------------------ metrics and checks
    def _position(self) -> dict:
        return {"step": self.updates, "epoch": self.epoch, "tokens": self.tokens}

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _check_finite(self) -> None:
        """Stop on a non-finite loss or gradient; the last checkpoint on disk stays the last good one."""
        if where := self.log.first_nonfinite(self.updates):
            self._diverged(where)

    def _diverged(self, where: str) -> None:
        self.stop_reason = "diverged"
        self.log.record_stop(self._position(), f"diverged: non-finite loss or gradient at {where}", self._elapsed())
        last = self.run_dir / "last.pt"
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written"
        raise TrainingDiverged(f"non-finite loss or gradient at {where}; {kept}; lower --lr or set --clip")

    def _flush(self) -> None:
        """Write one metrics line for the interval just ended (the only host sync of the interval)."""
        self._check_finite()
        self.log.flush(self._position(), self.learning_rate(), self._elapsed())
        self._show()

    def _show(self) -> None:
        if line := self.log.stats_line():
            self.view.stats(line)

    def _evaluate(self) -> bool:
        """An eval line on the first train.eval_tokens validation characters (all if 0); True if the best so far."""
        c = self.config
        self.log.evaluated_at = self.updates
        val = head(self.data.val, c.train.eval_tokens)
        if len(val) < 2:
            return True  # no validation split: the latest weights are the best we know
        with self.average.applied(self.model):
            val_loss = evaluate(self.model, val, c.data.batch_size, c.strategy.tau)
        improved = self.log.record_eval({**self._position(), "val_chars": len(val) - 1}, val_loss, self._elapsed())
        self._show()
        return improved

    # -------------------------------------------------------------- checkpoints
    def summary(self) -> dict:
        return {**self._position(), "elapsed": self._elapsed(), "stop_reason": self.stop_reason, **self.log.summary()}

    def _state(self) -> dict:
        """Everything besides the weights that an exact resume continues from."""
        self._check_finite()
        return {
            **self._position(), "elapsed": self._elapsed(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "batcher": self.batcher.state_dict(), **self.group.all_streams(self.state, self.replay.state_dict()),
            **self.log.state_dict(), **self.group.launch(),
        }

    def _save(self, best: bool = False, state: dict | None = None) -> None:
        """Write last.pt (and best.pt) atomically; `state` is the resume point if not the current one."""
        state = state or self._state()
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._diverged(f"step {self.updates} (non-finite weights)")
        payload = {
            "model": self.model.state_dict(), **self.average.checkpoint(self.model),
            "optimizer": self.optimizer.state_dict(),
            "vocab": self.data.vocab.to_list(), "config": to_dict(self.config), "corpus": self.corpus, **state,
            "summary": {**self.summary(), "grad_norms": torch.tensor(self.log.norm_history)},
        }
        paths = [self.run_dir / "last.pt"] + ([self.run_dir / "best.pt"] if best else [])
        self.group.from_main(lambda: checkpoint.save(payload, *paths))  # rank 0 writes; the others wait
        self.saved_at = time.monotonic()

    def _restore(self, p: dict) -> float:
        """Continue from checkpoint payload `p`; returns the run's elapsed time so far."""
        try:
            self.model.load_state_dict(p.get("train_model", p["model"]))
            self.average.load_state_dict(p.get("average"), self.device)
            self.optimizer.load_state_dict(p["optimizer"])
            self.updates, self.epoch, self.tokens = p["step"], p["epoch"], p["tokens"]
            torch.set_rng_state(p["rng"]["torch"])
            self.generator.set_state(p["rng"]["generator"])
            self.group.restore_device_rng(self.device, p["rng"]["cuda"])
            self.batcher.load_state_dict(p["batcher"])
            hidden, replay = self.group.my_streams(p["hidden"], p.get("replay"))  # at any number of processes
            self.state = [tuple(t.to(self.device) for t in layer) for layer in hidden]
            self.replay.load_state_dict(replay, self.device)
            self.log.load_state_dict(p)
            return p["elapsed"]
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint does not match this model or version: {reason(exc)}") from None

    def _announce(self) -> None:
        params = sum(p.numel() for p in self.model.parameters())
        if line := self.group.describe(self.config.data.batch_size):
            self.view.print(line)
        self.view.print(header(self.config, params, self.device, self.data, self.batcher.steps_per_epoch,
                               self.run_dir, self.updates, self.strategy.whole_epoch))


def _start(trainer: Trainer) -> dict:
    """Check and trim metrics.jsonl, write the run's resolved config.yaml (only once everything is known to be
    valid; rank 0 alone), then train. The caller holds the run directory's lock."""
    trainer.group.from_main(lambda: _write_run_files(trainer))
    return trainer.run()


def _write_run_files(trainer: Trainer) -> None:
    trainer.log.rewind()
    atomic_write_text(trainer.run_dir / "config.yaml", dump_yaml(trainer.config))


def train(config: Config, run_dir: Path | None = None, quiet: bool = False, view: LiveView | None = None) -> dict:
    """Start a new run; returns its summary. `view` replaces the run's own progress display."""
    config, group = copy.deepcopy(config), join(config.data.batch_size)  # the run's own config
    run_dir, restarted = group.open_run_dir(run_dir or config.train.run_dir, lambda: default_run_dir(config))
    if restarted:  # torchrun restarted the processes of this run: continue it
        return resume(run_dir, quiet=quiet)
    group.from_main(lambda: check_new_run_dir(run_dir))
    config.train.run_dir = str(run_dir)  # its directory set, its corpus path made absolute
    if config.data.path:
        config.data.path = absolute(config.data.path)
    trainer = Trainer(config, run_dir, quiet=quiet, view=view)
    with group.holding(run_dir, create=True):
        group.from_main(lambda: check_new_run_dir(run_dir))  # again, now that no other process can start a run here
        return _start(trainer)


def resume(run_dir: Path, flags: dict | None = None, sets: list[str] = (), quiet: bool = False) -> dict:
    """Continue the run in `run_dir` from its last.pt, exactly as if it had never stopped."""
    run_dir, group = Path(run_dir), join()
    group.from_main(lambda: _check_resumable(run_dir))
    with group.holding(run_dir):  # rank 0 reads the run; every process gets its config and checkpoint
        config, payload = group.from_main(lambda: _resume_point(run_dir, flags, sets))
        return _start(Trainer(config, run_dir, resume=payload, quiet=quiet))


def _check_resumable(run_dir: Path) -> None:
    if not (run_dir / "last.pt").is_file():
        raise CheckpointError(f"{run_dir} has no last.pt to resume from; start a run with bptt train first")


def _resume_point(run_dir: Path, flags: dict | None, sets: list[str]) -> tuple[Config, dict]:
    """The config and checkpoint the run continues from, with its metrics file checked (nothing written yet)."""
    config, payload = load_resume(run_dir, flags, sets)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():  # refuse a damaged metrics file before anything is prepared or written
        kept_lines(metrics, payload.get("metrics_lines", 0))
    return config, payload
