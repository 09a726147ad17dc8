"""Data-parallel training on torch.distributed: N processes train exactly as one process with the same global batch.

Under torchrun (launch.py) `join` makes this process a rank of the group; without a launcher it gives
`SingleProcess`, the same interface with nothing to communicate, so the training loop never asks which
one it has.

What keeps N processes equal to one:

- every rank draws the *global* layout from the same generator (the same epoch offsets, random
  windows, segment cuts, dropout and weight-drop masks) and trains its columns [r*B/N, (r+1)*B/N) of it;
- each rank's loss is its share of the global sum divided by the global B*tau, so the SUM of the
  ranks' gradients (`sum_gradients`, one all-reduce per update) is the one-process gradient, and
  clipping, the optimizer, the weight average and the logged loss and norms see global numbers on every rank;
- what depends on a rank's clock or signals (a stop signal, --max-time, a periodic checkpoint) is
  voted once per update (`vote`), so every rank stops or saves after the same update;
- checkpoints hold every stream's hidden state and TBPTT context (`all_streams`); a resume with any N
  takes its own columns back (`my_streams`). The random states are the same on every rank (they make
  the same draws), so rank 0's are everyone's.

Rank 0 alone holds the run directory's lock and reads and writes the directory (`from_main` hands its
decisions, the resumed checkpoint and its errors to the others)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from . import checkpoint
from .errors import BpttError, ConfigError, DistributedError, reason
from .fsutil import ensure_dir
from .launch import collective, env_int, init_process_group, launch_id, launched, restart_count, timeout
from .rundir import hold_run_dir

STREAM_DIMS = {"x": 1, "y": 1}  # a TBPTT context's tokens are [steps, B]; every state tensor is [B, H]


def join(batch_size: int | None = None) -> "SingleProcess":
    """This process's place in training: one process alone, or a rank of the launcher's group (joined once).

    With `batch_size`, the global batch must split evenly over the ranks (checked before joining).
    """
    if dist.is_available() and dist.is_initialized():
        group = ProcessGroup()
    elif launched():
        _check_batch(batch_size, env_int("WORLD_SIZE", 1))
        if not dist.is_available():
            raise ConfigError("this build of torch has no torch.distributed; train without torchrun")
        init_process_group()
        group = ProcessGroup()
    else:
        group = SingleProcess()
    _check_batch(batch_size, group.world_size)
    return group


class SingleProcess:
    """One process holding the whole batch: every operation of a process group, with nothing to communicate."""

    rank, world_size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run directory, the metrics and the live view (rank 0)."""
        return self.rank == 0

    def describe(self, streams: int) -> str:
        """A line for the start of training ("" for one process)."""
        return ""

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on."""
        return device

    def columns(self, streams: int) -> slice:
        """This rank's streams (batch columns) of a global batch of `streams`."""
        share = streams // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def local_batch(self, streams: int) -> int:
        return streams // self.world_size

    def columns_of(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's columns of a global batch `[L, B]`."""
        return x, y

    def sum_gradients(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Sum every rank's gradients (the one-process gradient, on every rank); returns the summed loss."""
        return loss.detach()

    def vote(self, signal: int | None, *flags: bool) -> tuple:
        """(a stop signal, each flag) as the ranks agree: the largest signal any rank received (None if
        none did), and each flag true when it is true on any rank."""
        return (signal, *(bool(f) for f in flags))

    def all_streams(self, hidden: list, replay: dict | None) -> dict:
        """A checkpoint's per-stream entries with every stream of the global batch (all ranks', in order)."""
        return {"hidden": [list(layer) for layer in hidden], "replay": replay}

    def my_streams(self, hidden: list, replay: dict | None) -> tuple[list, dict | None]:
        """This rank's streams of a checkpoint's hidden state and TBPTT context."""
        return hidden, replay

    def launch(self) -> dict:
        """A checkpoint's record of the launch that wrote it (none for one process)."""
        return {}

    def barrier(self) -> None:
        pass

    def from_main(self, compute: Callable):
        """`compute()` run by rank 0 alone; its result (or its one-line error) on every rank."""
        return compute()

    def first_on_each_node(self, compute: Callable):
        """`compute()` on local rank 0 first, then on the node's other ranks (a download happens once)."""
        return compute()

    def restore_device_rng(self, device: torch.device, states: list) -> None:
        """After a resume: the GPUs' saved random states (under a group, this rank's GPU continues rank 0's
        stream, the same on every rank)."""
        if device.type == "cuda" and states:
            torch.cuda.set_rng_state_all(states)

    @contextlib.contextmanager
    def holding(self, run_dir: Path, create: bool = False):
        """Rank 0 holds the run directory's lock inside the block (`create`: making the directory first);
        the other ranks never touch it. After a torchrun restart the killed group's lock may take a moment
        to go: rank 0 waits for it up to the timeout."""
        with contextlib.ExitStack() as stack:
            def take() -> None:
                if create:
                    ensure_dir(run_dir, ConfigError)
                deadline = time.monotonic() + (timeout() if restart_count() else 0)
                while True:
                    try:
                        return stack.enter_context(hold_run_dir(run_dir))
                    except ConfigError:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.2)

            self.from_main(take)
            yield

    def open_run_dir(self, given: str | Path | None, default: Callable[[], Path]) -> tuple[Path, bool]:
        """The run directory (rank 0's choice) and whether to resume it: torchrun restarted this launch's
        group after it saved last.pt. A restart counts if any rank's torchrun counted one."""
        restarted = self.vote(None, restart_count() > 0)[1]
        return self.from_main(lambda: _open_run_dir(given, default, restarted))


class ProcessGroup(SingleProcess):
    """A rank of the default torch.distributed group, holding columns [r*B/N, (r+1)*B/N) of every batch."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = env_int("LOCAL_RANK", 0)
        self.device = torch.device("cpu")

    def describe(self, streams: int) -> str:
        return (f"data parallel: {self.world_size} processes ({dist.get_backend()}), "
                f"each training {self.local_batch(streams)} of the {streams} streams")

    def place(self, device: torch.device) -> torch.device:
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {self.local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                                  f"here); start at most that many processes per machine (--nproc-per-node)")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise ConfigError(f"--device {device.type} cannot train in several processes; use --device cpu or cuda")
        self.device = device
        return device

    def columns_of(self, x, y):
        cols = self.columns(x.shape[1])
        return x[:, cols].contiguous(), y[:, cols].contiguous()

    def sum_gradients(self, model, loss):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
        with collective("the gradient all-reduce"):
            dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def vote(self, signal, *flags):
        votes = torch.tensor([float(signal or 0)] + [float(bool(f)) for f in flags])  # CPU: no GPU sync
        with collective("agreeing when to stop or save"):
            dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        signal, *flags = votes.tolist()
        return (int(signal) or None, *(bool(f) for f in flags))

    def all_streams(self, hidden, replay):
        gather = lambda name, t: self._gather(t, STREAM_DIMS.get(name, 0))  # noqa: E731
        return super().all_streams(*_map_streams(gather, hidden, replay))

    def my_streams(self, hidden, replay):
        def mine(name, t):
            dim = STREAM_DIMS.get(name, 0)
            cols = self.columns(t.shape[dim])
            return (t[:, cols] if dim else t[cols]).contiguous()
        return _map_streams(mine, hidden, replay)

    def _gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        pieces = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with collective("gathering every stream's state"):
            dist.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces, dim)

    def launch(self):
        return {"launch": launch_id()}

    def barrier(self) -> None:
        with collective("waiting for the other processes"):
            dist.barrier()

    def from_main(self, compute):
        box = [None]
        if self.is_main:
            try:
                box[0] = ("value", compute())
            except BpttError as exc:
                box[0] = ("error", exc)
            except Exception as exc:
                box[0] = ("error", DistributedError(f"rank 0 failed: {reason(exc)}"))
                self._broadcast(box)
                raise
        self._broadcast(box)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def _broadcast(self, box: list) -> None:
        with collective("receiving rank 0's decision"):
            dist.broadcast_object_list(box, src=0)

    def first_on_each_node(self, compute):
        if self.local_rank != 0:
            self.barrier()
        try:
            return compute()
        finally:
            if self.local_rank == 0:
                self.barrier()

    def restore_device_rng(self, device, states):
        if device.type == "cuda" and states:
            torch.cuda.set_rng_state(states[0], device)


# ----------------------------------------------------------------------------------- helpers
def _map_streams(fn: Callable, hidden: list, replay: dict | None) -> tuple[list, dict | None]:
    """`fn(name, tensor)` applied to every per-stream tensor of a hidden state and a TBPTT context."""
    hidden = [tuple(fn("state", t) for t in layer) for layer in hidden]
    if replay is not None:
        replay = {"x": fn("x", replay["x"]), "y": fn("y", replay["y"]),
                  "state": [[fn("state", t) for t in layer] for layer in replay["state"]]}
    return hidden, replay


def _open_run_dir(given: str | Path | None, default: Callable[[], Path], restarted: bool) -> tuple[Path, bool]:
    """Rank 0's decision: resume only this launch's own run after a restart (a new run's directory is
    checked later, under its lock)."""
    if not given and env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0:
        raise ConfigError("torchrun --max-restarts needs --run-dir, so that restarted processes find its last.pt")
    run_dir = Path(given or default())
    last = run_dir / "last.pt"
    return run_dir, restarted and last.is_file() and checkpoint.load(last).get("launch") == launch_id()


def _check_batch(batch_size: int | None, world_size: int) -> None:
    if batch_size is not None and batch_size % world_size:
        raise ConfigError(
            f"data.batch_size {batch_size} does not split over {world_size} processes; "
            f"use a multiple of {world_size} (each process trains batch_size / {world_size} streams)"
        )


