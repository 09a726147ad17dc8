"""The data section: preparing, starting on and training from corpora of any size.

Corpora are generated on the fly in a temporary directory (the book, or random words, repeated
to the size; a "mixed" one adds a line of accented and CJK text every ten lines of it), never
committed, and deleted at the end. Each command runs in a fresh process, so that its peak
resident memory (getrusage of that child, via wait4) is its own:

- `bptt prepare FILE [--preprocess raw]` into an empty cache: MB/s of the preparation proper
  (both passes and the fsync, from the entry's meta.json) and of the whole command;
- `bptt train --data FILE --hidden 32 --max-steps 5 --eval-every 0` twice on an empty cache:
  the first run prepares, the second starts from the cache; the book's second run is the baseline;
- the trainer's step on the book and on the largest corpus (memory-mapped), in alternating rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MIXED_LINE = "Zoë's café — naïve Straße — 東京の夜は静かだった。 «Ça va?» 🚀\n".encode("utf-8")
WORDS = b"the time traveller said and of a to in was it his that he i you with for had but"


def generate(path: Path, megabytes: float, source: Path | None, mixed: bool = False) -> Path:
    """`megabytes` of text: `source` repeated (or random words), with MIXED_LINE every ten lines if `mixed`."""
    if source is not None and source.is_file():
        block = source.read_bytes()
    else:
        words = WORDS.split()
        rng = np.random.default_rng(0)
        block = b" ".join(words[i] for i in rng.integers(0, len(words), 200_000)) + b".\n"
    if mixed:
        lines = block.splitlines(keepends=True)
        block = b"".join(line + (MIXED_LINE if i % 10 == 9 else b"") for i, line in enumerate(lines))
    size = int(megabytes * 1e6)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])
    return path


def measured(argv: list[str], data_dir: Path) -> dict:
    """Run `bptt ARGV` in a fresh process with $BPTT_DATA_DIR; its wall seconds and peak RSS (MiB)."""
    env = {**os.environ, "BPTT_DATA_DIR": str(data_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # files, not pipes: nothing to drain
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", "from bpttcli.cli import main; main()", *argv], env=env,
                                 stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN is a max over all)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode:
            raise RuntimeError(f"bptt {' '.join(argv)} failed: {err.read().decode()[-2000:]}")
        return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out.read().decode()}


def prepare_figures(path: Path, mode: str, work: Path) -> dict:
    cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))
    run = measured(["prepare", str(path), "--preprocess", mode, "-q"], cache)
    meta = json.loads(next((cache / "prepared").glob("v*/*/meta.json")).read_text())
    megabytes = path.stat().st_size / 1e6
    return {"corpus": path.name, "mb": megabytes, "mode": mode, "tokens": meta["tokens"], "vocab": len(meta["vocab"]) + 1,
            "dtype": meta["dtype"], "prepare_seconds": meta["seconds"], "prepare_mb_s": megabytes / meta["seconds"],
            "command_seconds": run["seconds"], "command_mb_s": megabytes / run["seconds"], "peak_rss_mib": run["peak_rss_mib"]}


def train_figures(path: Path, cache: Path) -> dict:
    """The first (preparing) and second (cached) `bptt train --hidden 32 --max-steps 5 --eval-every 0`, and the
    data path's own share of a start-up: load_dataset from the cache, in this process."""
    from bpttcli.builders import load_dataset
    from bpttcli.config import load_config

    argv = ["train", "--data", str(path), "--hidden", "32", "--max-steps", "5", "--eval-every", "0", "-q"]
    runs = {}
    for which in ("first", "second"):
        runs[which] = measured([*argv, "--run-dir", str(cache / f"run-{which}")], cache)
        runs[which].pop("stdout")
    started = time.perf_counter()
    load_dataset(load_config(None, {"data.path": str(path), "data.data_dir": str(cache)}), quiet=True)
    return {"corpus": path.name, "mb": path.stat().st_size / 1e6, **runs, "load_dataset_s": time.perf_counter() - started}


def _rates(step, seconds: float, sync) -> tuple[float, float]:
    """(chars per CPU second, chars per wall second) of `step` over about `seconds`."""
    sync()
    cpu, wall, chars = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - wall < seconds:
        chars += step()
    sync()
    return chars / max(time.process_time() - cpu, 1e-9), chars / (time.perf_counter() - wall)


def training_rates(small: Path, large: Path, cache: Path, args, device) -> dict:
    """chars/s of the trainer's step on a small and a large (memory-mapped) corpus, in alternating rounds.

    One intra-op thread, and chars per CPU second: on a machine shared with other jobs a second thread
    waits for a core and wall-clock rates swing by 10x, which would hide a difference or invent one.
    """
    from runners import TrainerLoop
    from sections import synchronize

    saved, threads = os.environ.get("BPTT_DATA_DIR"), torch.get_num_threads()
    os.environ["BPTT_DATA_DIR"] = str(cache)  # where the train runs above prepared the large corpus
    try:
        hidden = min(args.hidden)
        loops = {p.name: TrainerLoop(p, "rnn", hidden, "truncated", str(device)) for p in (small, large)}
    finally:
        if saved is None:
            del os.environ["BPTT_DATA_DIR"]
        else:
            os.environ["BPTT_DATA_DIR"] = saved
    samples = {name: [] for name in loops}
    torch.set_num_threads(1)
    try:
        for loop in loops.values():
            loop.step()
        for r in range(2 * max(args.rounds, 2)):
            for name in list(loops)[:: 1 if r % 2 == 0 else -1]:
                samples[name].append(_rates(loops[name].step, args.seconds, synchronize(device)))
    finally:
        torch.set_num_threads(threads)
    return {"hidden": hidden, "rows": [
        {"corpus": name, "mb": p.stat().st_size / 1e6, "chars_per_cpu_s": statistics.median(c for c, _ in got),
         "chars_per_s": max(w for _, w in got), "samples": got}
        for (name, got), p in zip(samples.items(), (small, large))]}


def run(args, data, device) -> dict:
    """Every figure of the section, on corpora generated in a temporary directory that is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="bptt-corpora-") as tmp:
        work = Path(tmp)
        corpora = [generate(work / f"corpus-{mb:g}mb.txt", mb, data) for mb in args.corpus_mb]
        out = {"sizes_mb": args.corpus_mb, "prepare": [], "train": []}
        modes = ["letters"] if args.quick else ["letters", "raw"]
        for path in ([] if args.quick else [data]) + corpora:
            out["prepare"] += [prepare_figures(path, mode, work) for mode in modes]
        if not args.quick:
            mixed = generate(work / f"mixed-{args.corpus_mb[0]:g}mb.txt", args.corpus_mb[0], data, mixed=True)
            out["prepare"] += [prepare_figures(mixed, mode, work) for mode in modes]
            mixed.unlink()
        caches = {path: Path(tempfile.mkdtemp(dir=work, prefix="cache-")) for path in corpora}
        for path in ([] if args.quick else [data]) + corpora:
            out["train"].append(train_figures(path, caches.get(path) or Path(tempfile.mkdtemp(dir=work))))
        out["training"] = training_rates(data, corpora[-1], caches[corpora[-1]], args, device)
    return out


TARGETS = {"letters_mb_s": 50.0, "first_s": 90.0, "second_s": 20.0, "rss_mib": 1024.0, "rate_ratio": 0.9}


def targets(section: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) on the largest corpus; the issue states the run figures for 200 MB."""
    largest = max(r["mb"] for r in section["train"])
    prep = [r for r in section["prepare"] if r["mode"] == "letters" and r["mb"] == largest and r["corpus"].startswith("corpus")]
    run = next(r for r in section["train"] if r["mb"] == largest)
    small, large = (r["chars_per_cpu_s"] for r in section["training"]["rows"])
    rss = max(run["first"]["peak_rss_mib"], run["second"]["peak_rss_mib"])
    t = TARGETS
    return [
        (f"letters preparation >= {t['letters_mb_s']:g} MB/s", f"{prep[0]['prepare_mb_s']:,.0f} MB/s ({largest:,.0f} MB)",
         prep[0]["prepare_mb_s"] >= t["letters_mb_s"]),
        (f"first run <= {t['first_s']:g} s, second <= {t['second_s']:g} s",
         f"{run['first']['seconds']:.1f} s, {run['second']['seconds']:.1f} s ({largest:,.0f} MB)",
         run["first"]["seconds"] <= t["first_s"] and run["second"]["seconds"] <= t["second_s"]),
        (f"peak RSS <= {t['rss_mib']:g} MiB, both runs", f"{rss:,.0f} MiB", rss <= t["rss_mib"]),
        (f"training chars per CPU s, largest corpus >= {t['rate_ratio']:g}x the book's", f"{large / small:.2f}x",
         large / small >= t["rate_ratio"]),
    ]


def markdown(section: dict) -> list[str]:
    lines = [
        "## Corpora of any size",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[f"| {target} | {got} | {'met' if ok else '**missed**'} |" for target, got, ok in targets(section)],
        "",
        "Corpora generated on the fly (the book repeated to the size; `mixed` adds a line of accented and CJK text "
        "every ten lines), each command in a fresh process with an empty cache; peak RSS of that process "
        "(getrusage via wait4; torch's import alone is about 230 MiB of it). `prepare MB/s` is the preparation "
        "proper (two passes over the file and the fsync, from meta.json), `command` the whole `bptt prepare` run "
        "(start-up and SHA-1 included).",
        "",
        "| corpus | MB | mode | vocab | ids | prepare MB/s | command s (MB/s) | peak RSS |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in section["prepare"]:
        lines.append(f"| {r['corpus']} | {r['mb']:,.1f} | {r['mode']} | {r['vocab']} | {r['dtype']} | "
                     f"{r['prepare_mb_s']:,.0f} | {r['command_seconds']:.1f} ({r['command_mb_s']:,.0f}) | "
                     f"{r['peak_rss_mib']:,.0f} MiB |")
    lines += [
        "",
        "`bptt train --data FILE --hidden 32 --max-steps 5 --eval-every 0`, twice on an empty cache: the first "
        "run prepares the corpus, the second memory-maps it (validation covers the first train.eval_tokens "
        "characters).",
        "",
        "| corpus | MB | first run | first peak RSS | second run | second peak RSS | load_dataset, cached |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["train"]:
        first, second = r["first"], r["second"]
        lines.append(f"| {r['corpus']} | {r['mb']:,.1f} | {first['seconds']:.1f} s | {first['peak_rss_mib']:,.0f} MiB | "
                     f"{second['seconds']:.1f} s | {second['peak_rss_mib']:,.0f} MiB | {1e3 * r['load_dataset_s']:.1f} ms |")
    t = section["training"]
    rows = t["rows"]
    lines += [
        "",
        f"Training from the memory map: the trainer's step (truncated, RNN-{t['hidden']}, batch 32, tau 35, one thread) "
        f"on each corpus in alternating rounds; median chars per CPU second (best wall-clock chars/s): "
        + ", ".join(f"{r['corpus']} {r['chars_per_cpu_s'] / 1e3:,.1f}k ({r['chars_per_s'] / 1e3:,.1f}k)" for r in rows)
        + f"; ratio {rows[1]['chars_per_cpu_s'] / rows[0]['chars_per_cpu_s']:.2f}x.",
    ]
    return lines
