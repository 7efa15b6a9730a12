#!/usr/bin/env python3
"""Sampling cost per token: the native sampler (csrc/sample.c) against the numpy one it
replaced (Sampler.sample_numpy), one native call per sequence against one for the whole
batch, in the same run, and decode tok/s through Engine.step with each.

Figures (medians):
  ms per sample   one Sampler.sample call on a vocabulary of --vocab logits shaped like a
                  real LM's (a Zipf-like head over a normal bulk), for: greedy; top-k 40 +
                  top-p 0.95 + min-p 0.05 (the defaults); the defaults with repetition,
                  frequency and presence penalties over a 64-token window and a 4-entry
                  logit bias
  ms per step     a batch of --batch-rows sequences with those settings (8 different rows):
                  one Sampler.sample call per sequence against one sample_batch call,
                  alternated
  decode tok/s    Engine.step on the default model at batch 1 and 8 with the default
                  sampling settings: numpy sampler per sequence, native per sequence, native
                  batched (what Engine.step does; skipped with --no-engine)
Machine load matters on a shared machine: `uptime` is printed before and after."""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Benchmark the tree this script sits in, not whatever smallmind is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smallmind.engine import engine as engine_module
from smallmind.engine.sampling import Sampler, sample_batch
from smallmind.engine.sampling_params import SamplingParams

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "top-k 40 + top-p 0.95 + min-p 0.05": dict(top_k=40, top_p=0.95, min_p=0.05),
    "same + penalties + logit bias": dict(
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repetition_penalty=1.1,
        frequency_penalty=0.3,
        presence_penalty=0.2,
        logit_bias={10: 2.0, 200: -100.0, 3000: 5.0, 40000: -1.5},
    ),
}


def lm_like_logits(vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(vocab) * 3).astype(np.float32)
    head = rng.choice(vocab, 200, replace=False)
    x[head] = (22 - 2.5 * np.log(np.arange(1, 201))).astype(np.float32)
    return x


def ms_per_sample(sample, rows: list[np.ndarray], recent: list[int], repeat: int) -> float:
    times = []
    for i in range(repeat):
        row = rows[i % len(rows)]
        t0 = time.perf_counter()
        sample(row, recent)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_samplers(vocab: int, repeat: int) -> None:
    rows = [lm_like_logits(vocab, seed) for seed in range(8)]
    recent = np.random.default_rng(1).integers(0, vocab, 64).tolist()
    print(f"ms per sample, vocabulary {vocab}, medians of {repeat}")
    print(f"{'settings':38} {'numpy':>8} {'native':>8} {'speed-up':>9}")
    for name, values in SETTINGS.items():
        params = SamplingParams(seed=0, **values)
        old = ms_per_sample(Sampler(params, vocab).sample_numpy, rows, recent, repeat)
        new = ms_per_sample(Sampler(params, vocab).sample, rows, recent, repeat)
        print(f"{name:38} {old:8.3f} {new:8.3f} {old / new:8.1f}x")


def bench_batch(vocab: int, n_rows: int, repeat: int) -> None:
    rows = np.stack([lm_like_logits(vocab, seed) for seed in range(n_rows)])
    recent = np.random.default_rng(1).integers(0, vocab, 64).tolist()
    print(f"\nms per step, {n_rows} sequences, vocabulary {vocab}, medians of {repeat}")
    print(f"{'settings':38} {'per seq':>8} {'batched':>8} {'speed-up':>9}")
    for name, values in SETTINGS.items():
        samplers = [Sampler(SamplingParams(seed=i, **values), vocab) for i in range(n_rows)]
        recents, masks = [recent] * n_rows, [None] * n_rows
        times: dict[str, list[float]] = {"per seq": [], "batched": []}
        for _ in range(repeat):  # alternated, so both see the same machine load
            t0 = time.perf_counter()
            for s, row in zip(samplers, rows):
                s.sample(row, recent)
            t1 = time.perf_counter()
            sample_batch(samplers, rows, recents, masks)
            t2 = time.perf_counter()
            times["per seq"].append(t1 - t0)
            times["batched"].append(t2 - t1)
        old, new = (1e3 * statistics.median(times[k]) for k in ("per seq", "batched"))
        print(f"{name:38} {old:8.3f} {new:8.3f} {old / new:8.2f}x")


def per_sequence(method):
    """An Engine.step sampler that calls `method` (Sampler.sample or sample_numpy) once per
    sequence, as the engine did before sample_batch."""

    def sample(samplers, logits, recent_tokens, allowed):
        return [method(s, row, r, a) for s, row, r, a in zip(samplers, logits, recent_tokens, allowed)]

    return sample


def bench_decode(batch_sizes: list[int], n_new: int, rounds: int) -> None:
    from bench_engine import bench_decode as decode_rate, default_model_path

    from smallmind import kernels
    from smallmind.engine.model import Model

    model = Model.load(default_model_path(), n_ctx=2048, n_slots=max(batch_sizes))
    samplers = {
        "numpy": per_sequence(Sampler.sample_numpy),
        "per seq": per_sequence(Sampler.sample),
        "batched": sample_batch,
    }
    print(
        f"\ndecode tok/s through Engine.step, default sampling settings (seeded), {n_new} new tokens, "
        f"median of {rounds} rounds, {kernels.get_threads()} threads, ISA {kernels.current_isa()}"
    )
    print(f"{'batch':>5} {'numpy':>8} {'per seq':>8} {'batched':>8}")
    for batch in batch_sizes:
        figures: dict[str, list[float]] = {name: [] for name in samplers}
        for _ in range(rounds):  # alternated, so all see the same machine load
            for name, sample in samplers.items():
                engine_module.sample_batch = sample  # type: ignore[assignment]
                try:
                    figures[name].append(decode_rate(model, batch, n_new, 1, sampling={}))
                finally:
                    engine_module.sample_batch = sample_batch
        print(f"{batch:5d} " + " ".join(f"{statistics.median(figures[name]):8.1f}" for name in samplers))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--repeat", type=int, default=400)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batch-rows", type=int, default=8, help="sequences of the ms-per-step figures")
    ap.add_argument("--new", type=int, default=64, help="tokens decoded per sequence")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-engine", action="store_true", help="only the sampler figures")
    args = ap.parse_args()
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    bench_samplers(args.vocab, args.repeat)
    bench_batch(args.vocab, args.batch_rows, args.repeat // 4)
    if not args.no_engine:
        bench_decode(args.batch, args.new, args.rounds)
    print("load after: ", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
