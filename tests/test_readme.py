"""The README's Python API example, executed as written on a small corpus where it expects the book."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite matter to us. "
        "His grey eyes shone and twinkled, and his usually pale face was flushed and animated.\n") * 40


def api_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("\n## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "timemachine.txt").write_text(TEXT, encoding="utf-8")
    exec(compile(api_example(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "20 steps, best val ppl " in out and "stopped by max_steps" in out
    assert "bits per character" in out and "the time traveller" in out
    assert re.search(r"truncated +bias \d\.\d{3}", out) and re.search(r"random +bias \d\.\d{3}", out)
    assert (tmp_path / "runs" / "notebook" / "best.pt").is_file()
