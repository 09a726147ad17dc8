"""bench/benchmark.py: a tiny run of every section, so that the script cannot rot (figures are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_every_section(tmp_path):
    out, docs, scratch = tmp_path / "results", ROOT / "docs/benchmark.md", tmp_path / "tmp"
    scratch.mkdir()
    docs_before = docs.stat().st_mtime_ns if docs.exists() else None
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/benchmark.py"), "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for section in ("correctness", "gemm", "throughput", "allocator", "memory", "recompute", "data"):
        assert section in results, section
    assert all(row["bptt"]["best"] > 0 and row["baseline"]["best"] > 0 for row in results["throughput"]["rows"])
    assert max(row["float32"] for row in results["correctness"]["rows"]) < 1e-5
    assert all(row["peak_bytes"] > 0 for row in results["memory"]["rows"])
    data = results["data"]
    assert [r["mb"] for r in data["prepare"]] == [4.0] and data["prepare"][0]["prepare_mb_s"] > 0
    assert all(r[run]["seconds"] > 0 and r[run]["peak_rss_mib"] > 0 for r in data["train"] for run in ("first", "second"))
    assert all(r["chars_per_s"] > 0 and r["chars_per_cpu_s"] > 0 for r in data["training"]["rows"])
    assert list(scratch.iterdir()) == []  # the generated corpora and their caches are deleted
    markdown = (out / "results.md").read_text()
    assert "| target | measured |" in markdown and "## Peak memory" in markdown and "## Corpora of any size" in markdown
    assert (docs.stat().st_mtime_ns if docs.exists() else None) == docs_before  # quick runs leave the docs alone
