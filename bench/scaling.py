"""Data-parallel scaling: 1 process against N processes (torchrun) at the same global batch, in one run.

    python bench/scaling.py [--processes 2] [--threads 2] [--device cpu|cuda] [--hidden 256] [--batch 32] [--quick]

Each side is a real `bptt train` run on the same corpus, model, strategy and global batch: on the CPU,
1 process x T threads against N processes x T/N threads (the same cores), with 1 process x T/N threads
as a third row (what one of the N processes alone would do); with `--device cuda`, 1 GPU against N GPUs.
The figure is characters/s from the run's metrics.jsonl (the median over its log intervals, leaving out
the first, which includes start-up); the sides alternate over --rounds and the best round counts. It
also times one all-reduce among N processes (gloo on the CPU) for a few sizes, and prints a table, the
ratio, and the torchrun command for a multi-GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import ROOT, corpus  # noqa: E402  (the book, else random letters)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2, help="N: processes of the data-parallel side [2]")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all, on each side [2]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", type=Path, default=None, help="corpus [../shared/data/timemachine.txt, else random]")
    p.add_argument("--cell", default="rnn", choices=["rnn", "gru", "lstm"])
    p.add_argument("--hidden", type=int, default=None, help="[256; quick: 16]")
    p.add_argument("--batch", type=int, default=32, help="global batch B, split over the processes [32]")
    p.add_argument("--tau", type=int, default=None, help="[35; quick: 5]")
    p.add_argument("--steps", type=int, default=None, help="updates per run [300; quick: 4]")
    p.add_argument("--log-every", type=int, default=None, help="updates per measured interval [25; quick: 1]")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds [2; quick: 1]")
    p.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test, not for figures)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--allreduce-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.hidden = args.hidden or (16 if args.quick else 256)
    args.tau = args.tau or (5 if args.quick else 35)
    args.steps = args.steps or (4 if args.quick else 300)
    args.log_every = args.log_every or (1 if args.quick else 25)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.batch % args.processes or (args.device == "cpu" and args.threads % args.processes):
        p.error("--batch (and on the CPU --threads) must be multiples of --processes")
    return args


# a plain model and optimizer (no regularisers, no averaging) and no time limit: the steps measure the all-reduce
PLAIN = ["--weight-drop", "0", "--locked-dropout", "0", "--average", "0", "--optimizer", "sgd", "--lr", "1",
         "--lr-schedule", "constant", "--max-time", "0", "--epochs", "1000"]


def train_args(args, data: Path, run_dir: Path) -> list[str]:
    return ["train", "--data", str(data), "--model", args.cell, "--hidden", str(args.hidden), "-b", str(args.batch),
            "-t", str(args.tau), "--strategy", "truncated", *PLAIN, "--device", args.device,
            "--max-steps", str(args.steps), "--log-every", str(args.log_every), "--eval-every", "0",
            "--set", "train.checkpoint_every=0", "--run-dir", str(run_dir), "-q"]


def command(args, processes: int, data: Path, run_dir: Path) -> list[str]:
    """`bptt train` in one process, or under torchrun in `processes`."""
    launcher = [sys.executable, "-m", "bpttcli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                    "-m", "bpttcli"]
    return launcher + train_args(args, data, run_dir)


def measure(args, processes: int, threads: int | None, data: Path, run_dir: Path) -> dict:
    """One run: the median characters/s over its log intervals after the first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run(command(args, processes, data, run_dir), env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{processes}-process run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in lines if r["kind"] == "train"][1:]
    return {"chars_per_s": statistics.median(rates), "intervals": len(rates), "wall_s": time.perf_counter() - started}


def sides(args) -> list[tuple[int, int | None]]:
    """(processes, threads per process): 1 x T, N x T/N, and on the CPU 1 x T/N (not with --quick)."""
    if args.device != "cpu":
        return [(1, None), (args.processes, None)]
    share = args.threads // args.processes
    alone = [(1, share)] if share != args.threads and not args.quick else []
    return [(1, args.threads), (args.processes, share)] + alone


ALLREDUCE_SIZES = (2, 80_000, 800_000)  # the stop vote; about RNN-256's gradient; ten times that


def allreduce_probe() -> None:
    """In each of torchrun's processes: the mean time of one all-reduce per size; rank 0 prints them as JSON."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    times = {}
    for size in ALLREDUCE_SIZES:
        tensor, reps = torch.ones(size), 20 if size > 100_000 else 100
        dist.all_reduce(tensor)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(tensor)
        times[size] = (time.perf_counter() - started) / reps
    if dist.get_rank() == 0:
        print(json.dumps(times))
    dist.destroy_process_group()


def allreduce_times(args) -> dict:
    """{floats: seconds} of one all-reduce among --processes CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(args.processes), __file__, "--allreduce-probe"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"all-reduce probe failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling(args) -> dict:
    """Every side, alternating round by round so that load drifts hit them alike."""
    runs = {side: [] for side in sides(args)}
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="bptt-scaling-") as tmp:
        data = corpus(args.data, Path(tmp), args.quick)
        for r in range(args.rounds):
            for processes, threads in list(runs)[:: 1 if r % 2 == 0 else -1]:
                run_dir = Path(tmp) / f"run-{r}-{processes}x{threads}"
                runs[processes, threads].append(measure(args, processes, threads, data, run_dir))
    rows = [{"processes": p, "threads_per_process": t, "best": max(run["chars_per_s"] for run in got), "runs": got}
            for (p, t), got in runs.items()]
    return {"device": args.device, "cell": args.cell, "hidden": args.hidden, "batch": args.batch, "tau": args.tau,
            "steps": args.steps, "corpus": str(data), "rows": rows, "ratio": rows[1]["best"] / rows[0]["best"],
            "cores": os.cpu_count(), "load_average": [load_start, os.getloadavg() if load_start else None],
            "allreduce_s": {} if args.quick else allreduce_times(args)}


def markdown(results: dict) -> str:
    """The table (one row per side) and the ratio of the N-process side to 1 process with every thread or GPU."""
    lines = ["| processes | each process | chars/s (best of rounds) |", "|---:|---|---:|"]
    for row in results["rows"]:
        threads = row["threads_per_process"]
        unit = "1 GPU" if threads is None else f"{threads} thread{'s' * (threads != 1)}"
        streams = results["batch"] // row["processes"]
        lines.append(f"| {row['processes']} | {streams} streams, {unit} | {row['best']:,.0f} |")
    start, end = results["load_average"]
    load = f"; 1-min load average {start[0]:.1f} at the start, {end[0]:.1f} at the end" if start else ""
    lines.append(f"\n{results['rows'][1]['processes']} processes / 1 process: {results['ratio']:.2f}x "
                 f"({results['cell']}-{results['hidden']}, global batch {results['batch']}, tau {results['tau']}, "
                 f"{results['device']}, {results['cores']} cores{load})")
    if results["allreduce_s"]:
        lines.append(f"one all-reduce among {results['rows'][1]['processes']} CPU processes (gloo): " + ", ".join(
            f"{int(size):,} floats {seconds * 1e3:.2f} ms" for size, seconds in results["allreduce_s"].items()))
    return "\n".join(lines)


def gpu_command(args) -> str:
    """The torchrun command for the same comparison on a machine with several GPUs (one process per GPU)."""
    return ("python bench/scaling.py --device cuda --processes $(nvidia-smi -L | wc -l) --batch 256 --hidden 512\n"
            "# which runs, on the N-GPU side:\n"
            "torchrun --standalone --nproc-per-node $(nvidia-smi -L | wc -l) -m bpttcli train --device cuda "
            f"--model {args.cell} -b 256 --hidden 512 -t {args.tau} --strategy truncated {' '.join(PLAIN)} "
            f"--max-steps {args.steps} "
            "--eval-every 0")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.allreduce_probe:
        allreduce_probe()
        return 0
    results = scaling(args)
    print(markdown(results))
    print(f"\nmulti-GPU (not measured here):\n{gpu_command(args)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
