"""bench/scaling.py: a tiny run of both sides, so that the script cannot rot (figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_scaling_benchmark_compares_one_process_with_two(tmp_path):
    out = tmp_path / "scaling.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench/scaling.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [(row["processes"], row["threads_per_process"]) for row in results["rows"]] == [(1, 2), (2, 1)]
    assert all(row["best"] > 0 for row in results["rows"]) and results["ratio"] > 0
    assert "2 processes / 1 process:" in done.stdout and "torchrun --standalone --nproc-per-node" in done.stdout
