"""A run directory: its default name, the refusal to overwrite a run, and the config a resume continues with."""

from __future__ import annotations

from pathlib import Path

from .config import Config, from_dict, load_config, to_dict
from .errors import CheckpointError, ConfigError
from .fsutil import timestamped_dir


def default_run_dir(config: Config) -> Path:
    return timestamped_dir("runs", config.strategy.name.value)


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
