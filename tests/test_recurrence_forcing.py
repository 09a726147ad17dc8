"""bpttcli.recurrence.forcing: a choice forced in one thread, for a while, and only among the known ones."""

from __future__ import annotations

import threading

import pytest

from bpttcli.recurrence.forcing import Forcing


def test_a_forced_choice_holds_inside_the_block_nests_and_is_undone_after():
    forcing = Forcing("path", ("a", "b"))
    assert forcing.name is None
    with forcing.use("a"):
        assert forcing.name == "a"
        with forcing.use("b"):
            assert forcing.name == "b"
        assert forcing.name == "a"
    assert forcing.name is None


def test_a_forced_choice_is_undone_after_an_error_and_stays_in_its_thread():
    forcing, seen = Forcing("kernel", ("fused",)), []
    with pytest.raises(RuntimeError), forcing.use("fused"):
        other = threading.Thread(target=lambda: seen.append(forcing.name))
        other.start()
        other.join()
        raise RuntimeError("boom")
    assert seen == [None] and forcing.name is None


def test_an_unknown_choice_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown kernel 'cudnn'; choose from fused, hand-written"):
        with Forcing("kernel", ("fused", "hand-written")).use("cudnn"):
            pass
