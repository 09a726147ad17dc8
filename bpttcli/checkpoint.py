"""Checkpoints: written atomically, always on the CPU, and loaded with `weights_only=True`."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .fsutil import atomic_open, write_error

FORMAT = 1


def to_cpu(value):
    """Recursively move tensors to the CPU, so a GPU checkpoint loads on a CPU-only machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def save(payload: dict, *paths: Path) -> None:
    """Serialise once, then write every path atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **to_cpu(payload)}, buffer)
    for path in paths:
        try:
            with atomic_open(path, "wb") as handle:
                handle.write(buffer.getvalue())
        except OSError as exc:
            raise write_error(path, exc, "checkpoint ") from None


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run directory or a .pt file written by bptt train")
    try:
        with warnings.catch_warnings():  # e.g. torch's warning about a legacy (non-zip) file: the error says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated (torch.load: {type(exc).__name__}); use another checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bptt checkpoint (format {FORMAT}); use one written by bptt train")
    vocab = payload.get("vocab", [])
    if not (isinstance(vocab, list) and all(isinstance(c, str) for c in vocab)):
        raise CheckpointError(f"{path} has a damaged vocabulary (not a list of characters); use another checkpoint")
    return payload


def resolve(target: Path, which: str = "best") -> Path:
    """A run directory means its `<which>.pt` (falling back to last.pt); a file means itself."""
    target = Path(target)
    if target.is_dir():
        for name in (f"{which}.pt", "last.pt"):
            if (target / name).is_file():
                return target / name
        raise CheckpointError(f"run directory {target} has no checkpoint (best.pt or last.pt); train first")
    return target
