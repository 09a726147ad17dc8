"""What torchrun gives each process it starts: its rank, the group to join, and how long to wait for the others.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) starts the
same `bptt train` N times. `init_process_group` joins them (env://; gloo for CPU tensors, NCCL for CUDA
tensors), giving up after BPTT_DIST_TIMEOUT seconds with one line (exit 7); `collective` does the same
for every later collective, so a lost peer is one line instead of a traceback or a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
from typing import Callable, NoReturn

import torch
import torch.distributed as dist

from .errors import ConfigError, DistributedError, reason

TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "BPTT_DIST_TIMEOUT", 300.0


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of a group."""
    return "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher), known before joining."""
    return env_int("RANK", 0)


def restart_count() -> int:
    """How often torchrun --max-restarts has restarted the group (0: the first start)."""
    return env_int("TORCHELASTIC_RESTART_COUNT", 0)


def launch_id() -> str | None:
    """torchrun's id of this launch (the same across its restarts), recorded in checkpoints."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def timeout() -> float:
    """Seconds a rank waits for the others (joining, or any collective) before it gives up."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds > 0; unset it or use e.g. 300")
    return seconds


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text.strip() else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer; launch with torchrun") from None


def init_process_group() -> None:
    """Join the launcher's group (env://): gloo for CPU tensors, and NCCL for CUDA tensors when there is a GPU."""
    seconds, local_rank = timeout(), env_int("LOCAL_RANK", 0)
    several_machines = env_int("LOCAL_WORLD_SIZE", 0) != env_int("WORLD_SIZE", 1)
    if _shared_store() and several_machines and env_int("TORCHELASTIC_MAX_RESTARTS", 0):
        raise ConfigError("torchrun --max-restarts over several machines needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                          "set for torchrun on every machine (else a restart can reuse stale addresses)")
    backend = "gloo"
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        with _quiet_stderr():  # c10d logs every retry, with C++ stack traces, to fd 2
            _init(backend, datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {launched_rank()} could not join the process group at {where} within {seconds:g} s "
            f"({_detail(exc)}); check that every node reaches it, or raise {TIMEOUT_VARIABLE}"
        ) from None


def _init(backend: str, limit: datetime.timedelta) -> None:
    """env:// as usual; under torchrun's shared store, with keys of this restart's own.

    torchrun keeps one store across restarts and hands it over without a per-restart prefix, so a
    restarted rank could read the previous attempt's addresses and fail to connect (pytorch#135712).
    """
    if not _shared_store():
        dist.init_process_group(backend, timeout=limit)
        return
    world = env_int("WORLD_SIZE", 1)
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], env_int("MASTER_PORT", 0), world, is_master=False, timeout=limit)
    store = dist.PrefixStore(f"bptt/restart-{restart_count()}", shared)
    dist.init_process_group(backend, store=store, rank=launched_rank(), world_size=world, timeout=limit)


def _shared_store() -> bool:
    """Whether torchrun hands its own store (one for every restart) to the processes."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def run_and_exit(command: Callable[[], object]) -> NoReturn:
    """Run `command` (the command line) in a process a launcher started, then leave the group and end the process.

    The process ends with os._exit once its output is flushed, skipping the interpreter's shutdown: there,
    C++ destructors of gloo's threads could abort a process that had finished its work ("terminate called
    without an active exception", exit -6, seen on about 1 launch in 10), and torchrun reports the run as failed.
    """
    try:
        command()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextlib.contextmanager
def collective(what: str):
    """Turn a lost peer or a timed-out collective into one line (and exit code 7) instead of a traceback."""
    try:
        yield
    except RuntimeError as exc:
        raise DistributedError(
            f"rank {dist.get_rank()} lost the other processes while {what} ({_detail(exc)}); "
            f"torchrun --max-restarts K restarts the group from last.pt"
        ) from None


def _detail(exc: BaseException) -> str:
    """The first line of a c10d error, without its source locations (and no brackets, which rich reads as markup)."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", reason(exc)).split(". ")[0].rstrip(".")
    return text.replace("[", "(").replace("]", ")")


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null inside the block (where C++ code writes, not only Python)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
