"""The error hierarchy: each expected failure is one line and an exit code."""


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
    """A checkpoint that is missing, corrupted or incompatible."""

    exit_code = 5


class TrainingDiverged(BpttError):
    """A non-finite loss or gradient stopped training."""

    exit_code = 6


class Interrupted(BpttError):
    """Ctrl-C stopped the run after saving a checkpoint to resume from."""

    exit_code = 130


def reason(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none: the 'why' of a one-line error."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__
