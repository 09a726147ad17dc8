"""Where a training step's time goes: torch.profiler's time per operator, per time step of the window.

    python bench/profile_step.py CELL HIDDEN STRATEGY [--impl bptt|baseline] [--steps 20] [--top 15]

Runs the benchmark's loop (bench/runners.py: the trainer's step, or the d2l baseline) on the book
(or random text), warms it up, then profiles `--steps` steps and prints each operator's self CPU
time divided by the time steps it covered (steps x tau), the calls per time step, and the kernel
the trainer's first layer ran. What a missed throughput target is measured with.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402
from runners import TrainerLoop, baseline_loop  # noqa: E402
from sections import TAU, kernel_of  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cell", choices=["rnn", "gru", "lstm"])
    p.add_argument("hidden", type=int)
    p.add_argument("strategy", choices=["full", "truncated", "random"])
    p.add_argument("--impl", choices=["bptt", "baseline"], default="bptt")
    p.add_argument("--steps", type=int, default=20, help="training steps profiled")
    p.add_argument("--top", type=int, default=15, help="operators shown")
    p.add_argument("--threads", type=int, default=None, help="torch threads [torch's default] (1: robust to other load)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bptt-profile-") as tmp:
        data = benchmark.corpus(None, Path(tmp), quick=False)
        make = TrainerLoop if args.impl == "bptt" else baseline_loop
        loop = make(data, args.cell, args.hidden, args.strategy, "cpu")
        for _ in range(5):
            loop.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens = sum(loop.step() for _ in range(args.steps))
    time_steps = tokens / 32  # batch 32: the time steps the profiled windows covered
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    kernel = kernel_of(loop.trainer) if args.impl == "bptt" else f"torch nn.{args.cell.upper()}"
    print(f"{args.impl} {args.cell}-{args.hidden} {args.strategy} ({kernel}): {total / time_steps:.0f} us of CPU per "
          f"time step (tau {TAU}, batch 32, {args.steps} steps, {torch.get_num_threads()} threads)")
    print(f"{'operator':42s} {'us/step':>9s} {'calls/step':>10s} {'share':>6s}")
    for e in events[: args.top]:
        print(f"{e.key[:42]:42s} {e.self_cpu_time_total / time_steps:9.1f} {e.count / time_steps:10.2f} "
              f"{100 * e.self_cpu_time_total / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
