"""Stop signals: Ctrl-C (SIGINT), SIGTERM (schedulers, `docker stop`, systemd) and SIGHUP (a closed terminal).

Two ways to stop. Training asks to stop (`StopSignals`): the first signal is recorded and the loop
ends after the current update, saving a checkpoint; a second one stops at once. Every other command
unwinds (`unwind_on_signals`): SIGTERM and SIGHUP raise `Signalled` as Ctrl-C raises
KeyboardInterrupt, so with-blocks still run (a progress bar gives the cursor back, a temp file goes).
Either way the process exits with 128 + the signal's number (errors.exit_code).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class Signalled(KeyboardInterrupt):
    """A stop signal raised in the main thread, like Ctrl-C's KeyboardInterrupt; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_number(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: its own for `Signalled`, SIGINT for a plain Ctrl-C."""
    return getattr(exc, "signum", signal.SIGINT)


def name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def _handling(signals, handler) -> Iterator[None]:
    """Route `signals` to `handler` inside the block, then put the previous handlers back (main thread only:
    signals cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class StopSignals:
    """Inside the block a stop signal asks the work to stop: `received` is the first one's number (None
    until one arrives); a second one raises `Signalled` at once."""

    def __init__(self):
        self.received: int | None = None
        self._block = None

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise Signalled(signum)
        self.received = signum

    def __enter__(self) -> "StopSignals":
        self._block = _handling(STOP_SIGNALS, self._handle)
        self._block.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._block.__exit__(*exc)


def _raise(signum, frame) -> None:
    raise Signalled(signum)


def unwind_on_signals() -> contextlib.AbstractContextManager:
    """SIGTERM and SIGHUP raise `Signalled` inside the block (Ctrl-C keeps raising KeyboardInterrupt)."""
    return _handling([s for s in STOP_SIGNALS if s != signal.SIGINT], _raise)
