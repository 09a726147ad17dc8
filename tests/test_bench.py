"""bench/benchmark.py: a tiny run of every section, so that the script cannot rot (figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_every_section(tmp_path):
    out, docs = tmp_path / "results", ROOT / "docs/benchmark.md"
    docs_before = docs.stat().st_mtime_ns if docs.exists() else None
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/benchmark.py"), "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for section in ("correctness", "gemm", "throughput", "allocator", "memory", "recompute"):
        assert section in results, section
    assert all(row["bptt"]["best"] > 0 and row["baseline"]["best"] > 0 for row in results["throughput"]["rows"])
    assert max(row["float32"] for row in results["correctness"]["rows"]) < 1e-5
    assert all(row["peak_bytes"] > 0 for row in results["memory"]["rows"])
    markdown = (out / "results.md").read_text()
    assert "| target | measured |" in markdown and "## Peak memory" in markdown
    assert (docs.stat().st_mtime_ns if docs.exists() else None) == docs_before  # quick runs leave the docs alone
