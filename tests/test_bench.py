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
    assert all(row["kernel"] and row["bptt"]["peak_bytes"] > 0 for row in results["throughput"]["rows"])
    assert {r["kernel"] for r in results["correctness"]["rows"]} == {"hand-written", "fused"}
    assert all(row["alloc_bytes"] > 0 for row in results["memory"]["rows"])


def test_readme_table_is_written_between_its_markers(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import report

    results = {"environment": {"command": "python bench/benchmark.py", "cpu": "a CPU", "cores": 2, "threads": 2,
                               "torch": "2", "device": "cpu"}, "wall_seconds": 9.0}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    assert report.write_readme(readme, results)
    text = readme.read_text()
    assert "old table" not in text and "Measured by `python bench/benchmark.py` in 9 s on a CPU" in text
    assert text.startswith("intro\n") and text.endswith(f"{report.README_END}\nafter\n")
    readme.write_text("no markers\n")
    assert not report.write_readme(readme, results) and readme.read_text() == "no markers\n"


def test_profile_step_prints_time_per_operator_per_step():
    done = subprocess.run([sys.executable, str(ROOT / "bench/profile_step.py"), "gru", "16", "random", "--steps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bptt gru-16 random (hand-written " in done.stdout and "us of CPU per time step" in done.stdout
    assert "aten::" in done.stdout
