#!/usr/bin/env python3
"""Matvec throughput per weight type and instruction set, next to memory read bandwidth.

Prints GB/s of weight bytes streamed by one matrix x vector (activations quantized once, as
in decode) with 1 thread and with all threads, for every ISA this CPU runs, beside the read
bandwidth of a plain memory sweep measured in the same run; `% bw` is the ratio.

Shapes (rows x cols): the default model's LM head 262144x640 and its FFN 2048x640. The
K-quants need rows of whole 256-blocks, so they use the same number of weights as
163840x1024 and 1280x1024.  Figures are medians of --repeat runs."""

import argparse
import sys
from pathlib import Path

import numpy as np

# Benchmark the tree this script sits in, not whatever smallmind is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.timing import median_seconds
from smallmind import _kernels, kernels
from smallmind.isa_bench import BLOCKS as BLOCK, cache_line_aligned, random_weights

SHAPES = {"lm_head": (262144, 640), "ffn": (2048, 640)}


def shape_for(wtype, shape):
    rows, cols = shape
    if BLOCK[wtype][0] == 256:
        return rows * cols // 1024, 1024
    return rows, cols


def memory_bandwidth(threads, repeat):
    buf = np.ones(1 << 30, dtype=np.uint8)
    seconds = median_seconds(lambda: _kernels.read_memory(buf, threads), repeat)
    return buf.nbytes / seconds / 1e9


BATCH_SHAPES = [
    ("Q4_0", 2048, 640),
    ("Q5_0", 2048, 640),
    ("Q4_K", 640, 2048),
    ("Q6_K", 640, 2048),
    ("Q8_0", 262144, 640),
]


def batch_table(types, isas, threads, repeat, rng):
    """Batched decode: one matmul of n_tok tokens vs n_tok single-token matvecs, for the
    shapes of BATCH_SHAPES whose type is in `types`."""
    kernels.set_threads(threads)
    print(f"\nbatched decode, {threads} thread(s): time per matmul call; speedup = n_tok x t(1) / t(n_tok)")
    print(f"{'type':6} {'rows x cols':>12} {'isa':7} {'n_tok':>5} {'ms/call':>9} {'tok/s':>9} {'speedup':>8}")
    for wtype, rows, cols in BATCH_SHAPES:
        if wtype not in types:
            continue
        w = cache_line_aligned(random_weights(wtype, rows, cols, rng))  # as GGUF tensors: aligned
        # small matrices: repeat inside one timing so each sample is well above timer noise
        inner = max(1, int(2e7 // w.nbytes))
        for isa in isas:
            kernels.select_isa(isa)
            t1 = None
            for n_tok in (1, 2, 4, 8):
                x = rng.standard_normal((n_tok, cols), dtype=np.float32)
                xq = kernels.quantize_activation(x, wtype)
                out = np.empty((n_tok, rows), dtype=np.float32)

                def run():
                    for _ in range(inner):
                        kernels.matmul_q(w, wtype, cols, xq, out=out)

                sec = median_seconds(run, repeat) / inner
                t1 = sec if n_tok == 1 else t1
                print(
                    f"{wtype:6} {f'{rows}x{cols}':>12} {isa:7} {n_tok:5d} {sec * 1e3:9.3f} "
                    f"{n_tok / sec:9.0f} {n_tok * t1 / sec:8.2f}",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--types", default=",".join(BLOCK), help="comma-separated weight types")
    parser.add_argument("--isas", default=",".join(kernels.available_isas()))
    parser.add_argument("--shapes", default="lm_head,ffn")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--batch",
        action="store_true",
        help="also time batched decode (n_tok 1, 2, 4, 8) on the default model's shapes",
    )
    parser.add_argument("--batch-only", action="store_true", help="only the batched-decode table")
    args = parser.parse_args()
    if args.batch_only:
        batch_table(args.types.split(","), args.isas.split(","), 1, args.repeat, np.random.default_rng(0))
        return

    rng = np.random.default_rng(0)
    all_threads = kernels.usable_cores()
    thread_counts = sorted({1, all_threads})
    bw = {t: memory_bandwidth(t, args.repeat) for t in thread_counts}
    print("memory read bandwidth: " + ", ".join(f"{t} thread(s) {bw[t]:.1f} GB/s" for t in thread_counts))
    print(
        f"{'type':6} {'shape':8} {'rows x cols':>14} {'MiB':>7} {'isa':7} "
        + " ".join(f"{f'{t}t GB/s':>9} {'% bw':>5}" for t in thread_counts)
    )
    for wtype in args.types.split(","):
        for shape_name in args.shapes.split(","):
            rows, cols = shape_for(wtype, SHAPES[shape_name])
            w = cache_line_aligned(random_weights(wtype, rows, cols, rng))  # as GGUF tensors: aligned
            x = rng.standard_normal((1, cols), dtype=np.float32)
            xq = kernels.quantize_activation(x, wtype)
            out = np.empty((1, rows), dtype=np.float32)
            for isa in args.isas.split(","):
                kernels.select_isa(isa)
                cells = []
                for t in thread_counts:
                    kernels.set_threads(t)
                    s = median_seconds(lambda: kernels.matmul_q(w, wtype, cols, xq, out=out), args.repeat)
                    gbps = w.nbytes / s / 1e9
                    cells.append(f"{gbps:9.1f} {100 * gbps / bw[t]:5.0f}")
                print(
                    f"{wtype:6} {shape_name:8} {f'{rows}x{cols}':>14} {w.nbytes / 2**20:7.1f} {isa:7} "
                    + " ".join(cells),
                    flush=True,
                )
    if args.batch:
        batch_table(args.types.split(","), args.isas.split(","), 1, args.repeat, rng)
    kernels.set_threads(all_threads)


if __name__ == "__main__":
    main()
