"""Atomic writes and writable directories."""

from __future__ import annotations

import os
import stat

import pytest

from bpttcli.errors import BpttError, DownloadError
from bpttcli.fsutil import atomic_open, atomic_write_bytes, atomic_write_text, ensure_dir


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_text_is_utf8_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "naïve 東京 🚀\n")
    assert path.read_bytes() == "naïve 東京 🚀\n".encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_bytes_replaces(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"


def test_new_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "new.txt"
    atomic_write_text(path, "x")
    assert mode(path) == 0o666 & ~umask()


def test_existing_permissions_are_kept(tmp_path):
    path = tmp_path / "script.sh"
    path.write_text("old")
    path.chmod(0o750)
    atomic_write_text(path, "new")
    assert mode(path) == 0o750 and path.read_text() == "new"


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_ensure_dir_creates_parents(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_dir(target) == target and target.is_dir()
    assert list(target.iterdir()) == []  # the write probe is gone
    ensure_dir(str(target))  # existing, and a str is fine


@pytest.mark.parametrize("error", [BpttError, DownloadError])
def test_ensure_dir_reports_unwritable_paths(tmp_path, error):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(error) as info:
        ensure_dir(blocker / "sub", error)
    assert str(blocker / "sub") in str(info.value) and "\n" not in str(info.value)
