"""Training throughput and memory of the BPTT kernels against a plain PyTorch baseline, in one run.

    python bench/benchmark.py [--device auto|cpu|cuda|mps] [--quick] [--threads N] [--out bench/results]

Sections: gradient check of every kernel path (fp32 and fp64 against the unrolled autograd
reference), GEMM rates at the model's shapes, tokens/s for strategy x cell x hidden (the
trainer's own step against the d2l baseline loop, interleaved, best of several rounds), the
glibc allocator tuning, peak memory of one full-BPTT step against the window length L, and
segment checkpointing (--recompute) over a long window, and the data path on corpora generated
in a temporary directory (bench/corpora.py: preparation MB/s and peak memory, the start-up of a
first and a second run, training chars/s on the book and on the largest corpus). Writes
results.json and results.md under --out, the Markdown to docs/benchmark.md (full runs only, or
--docs PATH), and the throughput table and targets between the markers of README.md's performance
section (full runs of every section only, or --readme PATH). Each throughput row names the kernel
its bptt loop ran (recurrence/kernels.py) and the peak memory of one step of either loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bpttcli.fsutil import to_json  # noqa: E402
from bpttcli.runtime import resolve_device, tune_allocator  # noqa: E402

import corpora  # noqa: E402
import report  # noqa: E402
import sections  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT.parent / "shared/data/timemachine.txt"
SECTIONS = {**sections.SECTIONS, "data": corpora.run}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test, not for figures)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results", help="directory for results.json/.md")
    p.add_argument("--docs", type=Path, default=None, help="also write the Markdown here [full runs: docs/benchmark.md]")
    p.add_argument("--readme", type=Path, default=None,
                   help="rewrite the performance table between this file's markers [full runs: README.md]")
    p.add_argument("--data", type=Path, default=None, help="corpus [../shared/data/timemachine.txt, else random]")
    p.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"])
    p.add_argument("--hidden", nargs="+", type=int, default=None, help="[256 512; quick: 32]")
    p.add_argument("--strategies", nargs="+", default=["full", "truncated", "random"])
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds [6; quick: 1]")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per loop per round [0.5; quick: 0.05]")
    p.add_argument("--lengths", nargs="+", type=int, default=None, help="memory: window lengths [200 .. 5000]")
    p.add_argument("--memory-hidden", type=int, default=None, help="memory: hidden size [256; quick: 32]")
    p.add_argument("--recompute-length", type=int, default=None, help="checkpointing window [20000; quick: 400]")
    p.add_argument("--corpus-mb", nargs="+", type=float, default=None, help="data: generated corpus sizes [100 1000; quick: 4]")
    p.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS), help="sections to leave out")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads [torch's default] (1: figures that other jobs on the machine disturb less)")
    p.add_argument("--allocator-probe", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.hidden = args.hidden or ([32] if quick else [256, 512])
    args.rounds = args.rounds or (1 if quick else 6)
    args.seconds = args.seconds if args.seconds is not None else (0.05 if quick else 0.5)
    args.lengths = args.lengths or ([20, 60] if quick else [200, 500, 1000, 2000, 5000])
    args.memory_hidden = args.memory_hidden or (32 if quick else 256)
    args.recompute_length = args.recompute_length or (400 if quick else 20000)
    args.corpus_mb = args.corpus_mb or ([4] if quick else [100, 1000])
    if args.docs is None and not quick:
        args.docs = ROOT / "docs/benchmark.md"
    if args.readme is None and not quick and not args.skip:
        args.readme = ROOT / "README.md"
    return args


def corpus(path: Path | None, workdir: Path, quick: bool) -> Path:
    """The book if present (not for --quick), else random lowercase letters and spaces (vocabulary 28 with <unk>)."""
    if path is not None:
        return path
    if BOOK.is_file() and not quick:
        return BOOK
    generator = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    ids = torch.randint(0, len(letters), (20_000 if quick else 200_000,), generator=generator).tolist()
    random_text = workdir / "random.txt"
    random_text.write_text("".join(letters[i] for i in ids), encoding="utf-8")
    return random_text


def environment(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "device": str(device), "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu" and args.allocator_probe != "default":
        tune_allocator()
    with tempfile.TemporaryDirectory(prefix="bptt-bench-") as tmp:
        os.environ["BPTT_DATA_DIR"] = str(Path(tmp) / "data")  # the token cache of this run, deleted with it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")  # what the memory profiler makes
        data = corpus(args.data, Path(tmp), args.quick)
        if args.allocator_probe:
            print(json.dumps(sections.allocator_probe(args, data, device, args.allocator_probe == "tuned")))
            return 0
        started = time.perf_counter()
        results = {"environment": environment(device), "config": report.config_of(args, data)}
        for name, run in SECTIONS.items():
            if name not in args.skip:
                print(f"== {name}", end=" ", flush=True)
                began = time.perf_counter()
                results[name] = run(args, data, device)
                results.setdefault("section_seconds", {})[name] = time.perf_counter() - began
                print(f"{time.perf_counter() - began:.1f} s", flush=True)
        results["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        results["wall_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(to_json(results, indent=1) + "\n", encoding="utf-8")  # strict: NaN -> null
    markdown = report.markdown(results) + ("\n".join(["", *corpora.markdown(results["data"])]) if "data" in results else "")
    (args.out / "results.md").write_text(markdown, encoding="utf-8")
    if args.docs:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(markdown, encoding="utf-8")
    readme = bool(args.readme) and report.write_readme(args.readme, results)
    print(markdown)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}" + (f", {args.docs}" if args.docs else "")
          + (f", the table in {args.readme}" if readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

