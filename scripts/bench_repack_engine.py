#!/usr/bin/env python3
"""The engine with and without the load-time repacking of Q4_K matrices (SMALLMIND_REPACK).

Both models are loaded in one process and measured in alternation (off, on, off, on, ...),
so a busy neighbour slows both alike: prefill of one 512-token prompt (bench_engine's
bench_prefill) and greedy decode at batch 1 and 8 through Engine.step (bench_decode), at 1
and 2 threads; medians over --rounds and the ratio on/off.  Then the resident memory
(VmRSS) after load and after that prefill, each setting in a fresh process of its own.
The machine's load average is printed before and after."""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_engine import bench_decode, bench_prefill, default_model_path, prompt_ids
from smallmind import kernels
from smallmind.engine.model import Model

SETTINGS = {"off": False, "on": True}


def load(path: str, repack: bool, n_prompt: int) -> Model:
    kernels.set_repack(repack)
    return Model.load(path, n_ctx=max(1024, n_prompt + 64), n_slots=8, max_batch_tokens=n_prompt)


def vm_rss_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def rss_child(path: str, n_prompt: int) -> None:
    """Prints {"load": MiB, "prefill": MiB, "repacked": n} for SMALLMIND_REPACK as set."""
    model = Model.load(path, n_ctx=max(1024, n_prompt + 64), n_slots=8, max_batch_tokens=n_prompt)
    after_load = vm_rss_mib()
    ids = np.asarray(prompt_ids(model.vocab_size, n_prompt), np.int32)
    model.forward(
        ids, np.zeros(n_prompt, np.int32), np.arange(n_prompt, dtype=np.int32), np.int32([n_prompt - 1])
    )
    print(json.dumps({"load": after_load, "prefill": vm_rss_mib(), "repacked": model.repacked_matrices()}))


def rss(path: str, n_prompt: int) -> dict:
    out = {}
    for name, on in SETTINGS.items():
        env = dict(os.environ, SMALLMIND_REPACK="1" if on else "0")
        res = subprocess.run(
            [sys.executable, __file__, "--rss-child", "-m", path, "--prompt", str(n_prompt)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out[name] = json.loads(res.stdout)
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.model or default_model_path()
    if args.rss_child:
        rss_child(path, args.prompt)
        return
    print("load average before:", os.getloadavg())
    models = {name: load(path, on, args.prompt) for name, on in SETTINGS.items()}
    print("repacked matrices:", {name: m.repacked_matrices() for name, m in models.items()})
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    figures = {}  # (what, threads, setting) -> [tok/s per round]
    for _ in range(args.rounds):
        for t in threads:
            kernels.set_threads(t)
            for name, model in models.items():
                figures.setdefault((f"prefill {args.prompt}", t, name), []).append(
                    bench_prefill(model, args.prompt, args.repeat)
                )
                for b in batches:
                    figures.setdefault((f"decode batch {b}", t, name), []).append(
                        bench_decode(model, b, args.new, args.repeat)
                    )
    print(f"medians over {args.rounds} rounds, tok/s")
    print(f"{'':18} {'thr':>3} {'off':>9} {'on':>9} {'on/off':>7}")
    for what, t in dict.fromkeys((w, t) for w, t, _ in figures):
        off, on = (statistics.median(figures[(what, t, n)]) for n in SETTINGS)
        print(f"{what:18} {t:3d} {off:9.1f} {on:9.1f} {on / off:7.2f}")
    print("load average after:", os.getloadavg())
    for name, r in rss(path, args.prompt).items():
        print(
            f"VmRSS repack {name}: {r['load']:.1f} MiB after load, {r['prefill']:.1f} MiB after a "
            f"{args.prompt}-token prefill ({r['repacked']} matrices repacked)"
        )


if __name__ == "__main__":
    main()
