"""The error hierarchy: each expected failure is one line and an exit code.

Exit codes: 2 usage or config, 3 data, 4 download, 5 checkpoint or run file (damaged, or cannot be
written), 6 diverged, 7 process group (torchrun's processes could not join, or lost each other), and
128 + the signal's number when a signal stopped the work: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

import reprlib
import signal

SHOWN = 80  # characters of a bad value that an error message repeats


class BpttError(Exception):
    """An expected failure: the CLI prints its message on one line and exits with `exit_code`."""

    exit_code = 1


class ConfigError(BpttError):
    """A bad option, config key or value."""

    exit_code = 2


class DataError(BpttError):
    """A corpus that cannot be read or is too small."""

    exit_code = 3


class DownloadError(BpttError):
    """The corpus could not be fetched or verified."""

    exit_code = 4


class CheckpointError(BpttError):
    """A checkpoint or run file that is missing, damaged or incompatible."""

    exit_code = 5


class WriteError(CheckpointError):
    """A run file could not be written (disk full, file too large, no permission); what is on disk stays whole."""


class TrainingDiverged(BpttError):
    """A non-finite loss or gradient stopped training."""

    exit_code = 6


class DistributedError(BpttError):
    """The process group could not be formed, or lost a process (a timeout or a closed connection)."""

    exit_code = 7


class Interrupted(BpttError):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped the work; exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum
        self.exit_code = exit_code(signum)


def exit_code(signum: int) -> int:
    """The shell's convention for a process stopped by a signal: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(signum)


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none: the 'why' of a one-line error."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = SHOWN
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6


def shown(value, limit: int = SHOWN) -> str:
    """A value as an error message repeats it: its repr, cut to `limit` characters (never expanding a huge
    or deeply shared structure in full), on one line."""
    text = _REPR.repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
