"""A run directory: its default name, the refusal to overwrite a run, the lock a run holds, the corpus it
trained on, and the config a resume continues with."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Iterator

from . import checkpoint
from .config import Config, DataConfig, from_dict, load_config, saved_config, to_dict
from .errors import CheckpointError, ConfigError, shown
from .fsutil import Locked, exclusive_lock, remove_stale_temps, timestamped_dir, write_error
from .tokencache import corpus_sha1

LOCK = ".lock"  # held (flock) by the one process training in the directory; holds its PID


def default_run_dir(config: Config) -> Path:
    return timestamped_dir("runs", config.strategy.name.value)


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a directory that holds a checkpoint; one without (a run that stopped before its first) is reused."""
    if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir")


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the (existing) run directory's lock for the life of a run: a second process is refused, naming
    the holder's PID. The holder first removes temp files that a killed writer left."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(run_dir / LOCK))
        except Locked as exc:
            pid = exc.holder or "unknown"
            raise ConfigError(f"{run_dir} is in use by another bptt process (PID {pid}); wait for it to finish "
                              f"or stop it, or choose another --run-dir") from None
        except OSError as exc:
            raise write_error(run_dir / LOCK, exc) from None
        remove_stale_temps(run_dir)
        yield


# ------------------------------------------------------------------ the corpus
def absolute(path: str) -> str:
    """The path as an absolute one (symlinks kept): a run resumes from any working directory."""
    return os.path.abspath(os.path.expanduser(path))


def corpus_record(data: DataConfig) -> dict | None:
    """What checkpoints store of a local corpus: its path and SHA-1 (the downloaded book is identified by
    the config's url and sha1)."""
    return {"path": data.path, "sha1": corpus_sha1(Path(data.path), data.data_dir)} if data.path else None


def check_same_corpus(saved: dict | None, current: dict | None) -> None:
    """A resumed run reads the same text it trained on, wherever the file now is."""
    if not (isinstance(saved, dict) and isinstance(saved.get("sha1"), str) and current):
        return  # a checkpoint from before corpora were recorded, or the downloaded book
    if saved["sha1"] != current["sha1"]:
        raise CheckpointError(
            f"resume: {current['path']} is not the text this run trained on (SHA-1 {current['sha1'][:12]}..., "
            f"the run's {saved['sha1'][:12]}...); pass the original corpus with --data"
        )


# ------------------------------------------------------------------ resume
RESUMABLE_SECTIONS = ("optim", "train")


def resume_config(saved: dict, flags: dict | None = None, sets: list[str] = (), corpus: dict | None = None,
                  source: Path | str = "the checkpoint") -> Config:
    """The checkpoint's config with optim/train changes allowed; model, data or strategy changes refused.

    With a recorded `corpus`, --data may name another path: its content is checked once it is read.
    """
    saved = saved_config(saved)
    try:
        old = to_dict(from_dict(saved))
    except ConfigError as exc:
        raise CheckpointError(
            f"{source} holds an invalid config ({exc}); use a checkpoint written by bptt train"
        ) from None
    flags, saved = dict(flags or {}), copy.deepcopy(saved)
    if corpus is not None and flags.get("data.path"):
        path = absolute(flags.pop("data.path"))
        saved["data"] = {**(saved.get("data") or {}), "path": path}
        old["data"]["path"] = path
    config = load_config(None, flags, sets, base=saved)
    new = to_dict(config)
    for section in old:
        for key, value in new[section].items():
            if value != old[section][key] and section not in RESUMABLE_SECTIONS:
                raise CheckpointError(
                    f"resume: {section}.{key} is {shown(old[section][key])} in the checkpoint but {shown(value)} "
                    f"was asked; drop that option or start a new run"
                )
    return config


def load_resume(run_dir: Path, flags: dict | None = None, sets: list[str] = ()) -> tuple[Config, dict]:
    """The config and checkpoint payload that the run in `run_dir` continues from."""
    last = run_dir / "last.pt"
    payload = checkpoint.load(last)
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{last} holds no run config; it was not written by bptt train")
    config = resume_config(payload["config"], flags, sets, payload.get("corpus"), last)
    config.train.run_dir = str(run_dir)
    return config, payload
