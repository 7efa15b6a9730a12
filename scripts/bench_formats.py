#!/usr/bin/env python3
"""Decode (and prefill) speed of the same weights as GGUF and as .smq, in one time window.

    python scripts/bench_formats.py                      # default model, converted to .smq in a temp dir
    python scripts/bench_formats.py --gguf a.gguf --smq a.smq --rounds 7

Both models stay loaded; every round measures each (in alternating order) with
bench_engine.py's prefill and batch-1 greedy decode, and the figures printed are the medians
over the rounds, with the .smq / GGUF ratio."""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmark this tree, not an installed smallmind

from scripts import bench_engine  # noqa: E402
from smallmind import kernels  # noqa: E402
from smallmind.convert import convert  # noqa: E402
from smallmind.engine.model import Model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF file (default: Gemma 3 270M package)")
    parser.add_argument("--smq", default=None, help=".smq of the same weights (default: convert --gguf)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=32, help="decode steps per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    gguf = args.gguf or bench_engine.default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        smq = args.smq
        if smq is None:
            smq = str(Path(tmp) / "model.smq")
            convert(gguf, smq)
        kernels.set_threads(args.threads)
        models = {
            "gguf": Model.load(gguf, n_ctx=1024, n_slots=1, max_batch_tokens=512),
            "smq": Model.load(smq, n_ctx=1024, n_slots=1, max_batch_tokens=512),
        }
        figures = {name: {"prefill": [], "decode": []} for name in models}
        for r in range(args.rounds):
            for name in list(models) if r % 2 == 0 else list(reversed(models)):
                figures[name]["prefill"].append(
                    bench_engine.bench_prefill(models[name], args.prompt, args.repeat)
                )
                figures[name]["decode"].append(
                    bench_engine.bench_decode(models[name], 1, args.new, args.repeat)
                )
    med = {n: {k: statistics.median(v) for k, v in f.items()} for n, f in figures.items()}
    print(f"threads {args.threads}, {args.rounds} rounds, medians (tok/s):")
    for name in models:
        print(
            f"  {name:5s} prefill {med[name]['prefill']:8.1f}   decode (batch 1) {med[name]['decode']:7.1f}"
        )
    print(
        f"  smq/gguf: prefill {med['smq']['prefill'] / med['gguf']['prefill']:.3f}, "
        f"decode {med['smq']['decode'] / med['gguf']['decode']:.3f}"
    )


if __name__ == "__main__":
    main()
