#!/usr/bin/env python3
"""Does repacking Q4_K weights at load time (csrc/repack.h: rows interleaved in groups of 8)
make the batched matmul faster?  Times one matmul of n_tok tokens on the default model's Q4_K
shapes, today's path (sm_matmul_q over the GGUF rows) against the repacked kernel, 1 thread,
the two alternated sample by sample; prints medians and the median of the per-sample ratios.
Then the resident-memory cost of a repacked copy of the default model's Q4_K tensors, with
and without giving the mmap'd pages of the originals back.

Both paths give the same floats (tests/test_repack.py); the table is forced to avx2 because
the repacked kernel is AVX2 code and equals the avx2 unit's Q4_K kernels."""

import argparse
import mmap
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Benchmark the tree this script sits in, not whatever smallmind is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smallmind import kernels
from smallmind.isa_bench import cache_line_aligned, random_weights

# (name, rows, cols) of the default model's Q4_K matrices (GGUF ne reversed)
SHAPES = [("ffn_down", 640, 2048), ("attn_output", 640, 1024)]
TOKENS = (1, 8, 32, 64)


def alternated_medians(calls, repeat):
    """Median seconds of each of `calls`, timed in turn within every sample, and the median
    over samples of each call's time relative to the first's."""
    for call in calls:
        call()  # warm: pages, caches
    times = [[] for _ in calls]
    for _ in range(repeat):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - t0)
    ratios = [statistics.median(t / b for t, b in zip(ts, times[0])) for ts in times]
    return [statistics.median(ts) for ts in times], ratios


# The weights one forward step streams past a matrix before it is used again (the default
# model's layers hold ~65 MiB besides the embedding): --cold cycles through this many bytes of
# copies, so that every call reads its weights from beyond L2 as in the model.
COLD_BYTES = 64 << 20


def copies(a, n):
    return [cache_line_aligned(a) for _ in range(n)]


def speed_table(repeat, rng, cold):
    kernels.select_isa("avx2")
    kernels.set_threads(1)
    where = f"weights cycled through {COLD_BYTES >> 20} MiB of copies" if cold else "weights hot in cache"
    print(f"Q4_K matmul, 1 thread, avx2 table, {where}:")
    print("ms per call (medians); ratio: median over samples of repacked / current")
    print(
        f"{'matrix':12} {'rows x cols':>11} {'n_tok':>5} {'current':>9} {'repacked':>9} "
        f"{'ratio':>6} {'speedup':>8}"
    )
    for name, rows, cols in SHAPES:
        w0 = random_weights("Q4_K", rows, cols, rng)
        n_copies = -(-COLD_BYTES // w0.nbytes) if cold else 1
        ws = copies(w0, n_copies)
        wrs = copies(kernels.repack_q4_K_x8(w0, cols), n_copies)
        for n_tok in TOKENS:
            x = rng.standard_normal((n_tok, cols), dtype=np.float32)
            xq = cache_line_aligned(kernels.quantize_activation(x, "Q4_K"))
            out = np.empty((n_tok, rows), dtype=np.float32)
            out_r = np.empty((n_tok, rows), dtype=np.float32)
            inner = max(n_copies, int(4e7 // (w0.nbytes * max(n_tok, 4))))  # samples of a few ms

            def current():
                for i in range(inner):
                    kernels.matmul_q(ws[i % n_copies], "Q4_K", cols, xq, out=out)

            def repacked():
                for i in range(inner):
                    kernels.matmul_q4_K_x8(wrs[i % n_copies], rows, cols, xq, out=out_r)

            (cur, rep), (_, ratio) = alternated_medians([current, repacked], repeat)
            same = np.array_equal(out.view(np.uint32), out_r.view(np.uint32))
            print(
                f"{name:12} {f'{rows}x{cols}':>11} {n_tok:5d} {cur / inner * 1e3:9.4f} "
                f"{rep / inner * 1e3:9.4f} {ratio:6.3f} {1 / ratio:7.2f}x"
                + ("" if same else "  RESULTS DIFFER"),
                flush=True,
            )


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


def rss_table():
    """RSS of the default model's Q4_K tensors read from the mmap, then with a repacked copy
    beside them, then with the originals' pages dropped (MADV_DONTNEED on a read-only file
    mapping: they leave RSS and would fault back in, from the file, only if read again)."""
    from smallmind.default_model import default_model
    from smallmind.gguf import GGUFFile

    gguf = GGUFFile(default_model().assemble())
    q4k = [t for t in gguf.tensors.values() if t.type_name == "Q4_K"]
    n_bytes = sum(t.n_bytes for t in q4k)
    with open(gguf.path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, dtype=np.uint8)
    base = rss_bytes()
    checksum = sum(int(view[t.offset : t.offset + t.n_bytes : 4096].sum()) for t in q4k)  # touch every page
    touched = rss_bytes()
    repacked = [kernels.repack_q4_K_x8(view[t.offset : t.offset + t.n_bytes], t.ne[0]) for t in q4k]
    with_copy = rss_bytes()
    page = mmap.PAGESIZE
    for t in q4k:  # whole pages inside each tensor (neighbours' pages stay)
        start = -(-t.offset // page) * page
        end = (t.offset + t.n_bytes) // page * page
        if end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
    dropped = rss_bytes()
    mib = 2**20
    print(f"\nRSS above the start; the default model's {len(q4k)} Q4_K tensors: {n_bytes / mib:.2f} MiB")
    print(f"  their mmap'd pages read (checksum {checksum}):  +{(touched - base) / mib:6.2f} MiB")
    repacked_mib = sum(c.nbytes for c in repacked) / mib
    print(f"  + repacked copies ({repacked_mib:.2f} MiB):  +{(with_copy - base) / mib:6.2f} MiB")
    print(f"  + the originals' pages dropped (MADV_DONTNEED):  +{(dropped - base) / mib:6.2f} MiB")
    del view
    mm.close()
    gguf.close()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=9, help="samples per path (alternated)")
    parser.add_argument("--cold", action="store_true", help="also time with the weights beyond L2")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory table (default model)")
    args = parser.parse_args()
    speed_table(args.repeat, np.random.default_rng(0), cold=False)
    if args.cold:
        print()
        speed_table(args.repeat, np.random.default_rng(0), cold=True)
    if not args.no_rss:
        rss_table()


if __name__ == "__main__":
    main()
