"""bpttcli.signals: stop signals asked for (training) or unwinding (every other command), and their exit codes."""

from __future__ import annotations

import signal
import threading

import pytest

from bpttcli.errors import Interrupted, exit_code
from bpttcli.signals import STOP_SIGNALS, Signalled, StopSignals, signal_number, unwind_on_signals


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_stop_signals_record_the_first_signal_and_put_the_old_handlers_back(signum):
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopSignals() as stop:
        assert stop.received is None
        signal.raise_signal(signum)
        assert stop.received == signum
        with pytest.raises(Signalled) as second:  # a second signal stops at once
            signal.raise_signal(signal.SIGINT)
    assert second.value.signum == signal.SIGINT and isinstance(second.value, KeyboardInterrupt)
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_stop_signals_outside_the_main_thread_leave_signals_alone():
    errors = []

    def body() -> None:
        try:
            with StopSignals():
                pass
        except ValueError as exc:  # signal.signal() outside the main thread
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == []


def test_unwinding_raises_sigterm_and_sighup_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Signalled) as caught:
        with unwind_on_signals():
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:
                cleaned.append(True)  # with-blocks and finally clauses still run
    assert caught.value.signum == signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_exit_codes_are_128_plus_the_signal():
    assert [exit_code(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == [130, 143, 129]
    assert Interrupted("x").exit_code == 130 and Interrupted("x", signal.SIGTERM).exit_code == 143
    assert signal_number(KeyboardInterrupt()) == signal.SIGINT
    assert signal_number(Signalled(signal.SIGHUP)) == signal.SIGHUP
