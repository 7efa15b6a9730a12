"""Time every kernel-table entry of every instruction set this CPU runs natively, and say
which unit is faster per entry beside the unit the automatic table runs (the one chosen
without SMALLMIND_ISA; `python -m smallmind bench --isa`).

The entries chosen per weight type (kernels.h sm_entry): "dot" (vec_dot with its batched
kernels, which always come from one unit) timed as a matmul of 1 token (decode) and of 8
tokens (a batch, and the token groups of a prefill), single-threaded, on the default
model's FFN size (at most 1 MiB of weights: in L2, so the kernels' own speed shows); and
"dequant" (the row decoder).  Each unit runs in its own table (kernels.select_isa
unit_only: for the avx512 unit, its vec_dot with no batched kernels beside it, as the
AVX-512 table would run it if it took that entry).

A unit wins an entry only where it is at least as fast at every shape: dispatch.c takes
the avx512 unit's entries only where they are never slower than AVX2's, so where no unit
wins everywhere the fallback (AVX2's entry where AVX2 exists) stands.  Figures are the
fastest of a few interleaved rounds: another process on the machine only ever adds time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallmind import _kernels, kernels

# (rows, cols) per weight type: the default model's FFN (2048x640), with the same number
# of weights for the K-quants, whose rows are whole 256-blocks; fewer rows where that
# would not fit in DOT_BYTES, so the weights stay in L2 and the timing shows the kernels'
# own speed, not the memory bandwidth other processes on the machine share (out of cache,
# every unit streams at the same bandwidth: scripts/bench_kernels.py)
DOT_SHAPES = {"K": (1280, 1024), "other": (2048, 640)}
DOT_BYTES = 1 << 20
DOT_TOKENS = (1, 8)
DEQUANT_ROWS = 256  # rows per dequant call: long enough that the call's overhead does not hide it
# weight type -> (values, bytes) per block, as the kernels define them
BLOCKS = {
    name: (_kernels.block_size(tid), kernels.row_size(tid, _kernels.block_size(tid)))
    for name, tid in kernels.TYPE_IDS.items()
}
# byte offsets of the fp16 scales in a block: kept finite so the data is a real block
SCALE_OFFSETS = {"Q4_0": [0], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
SAMPLE_S = 0.0005  # target length of one timed sample: short, so that some fall between preemptions


@dataclass
class EntryTiming:
    """Seconds per call of one entry of one weight type, per shape and unit."""

    wtype: str
    entry: str  # "dot" or "dequant"
    shapes: list[str]  # e.g. ["1 tok", "8 tok"]
    seconds: dict[str, dict[str, float]]  # unit -> shape -> best seconds per call
    table_unit: str  # the unit whose kernel the automatic table runs
    fallback: str  # the unit kept where no unit wins at every shape


def random_weights(wtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random rows of `wtype` with small finite scales (speed does not depend on values)."""
    block, nbytes = BLOCKS[wtype]
    if wtype == "F32":
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if wtype == "F16":
        return rng.standard_normal((rows, cols), dtype=np.float32).astype(np.float16).view(np.uint8)
    if wtype == "BF16":
        bits = rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[wtype]:
        scales = (rng.random(n_blocks, dtype=np.float32) * 0.01).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def cache_line_aligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` starting on a 64-byte boundary.  numpy's large arrays start 16 bytes
    past one, where every other 512-bit load splits a cache line and the avx512 unit loses
    up to 15% (the GGUF tensors the engine runs on are 32-byte aligned, which costs none)."""
    buf = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = -buf.ctypes.data % 64
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def automatic_isa() -> str:
    """The table dispatch chooses when SMALLMIND_ISA does not force one."""
    return _kernels.isa_name(_kernels.isa_best())


def candidate_units() -> list[str]:
    """The instruction sets this CPU runs natively (emulated ones are not timed)."""
    emulated = set(kernels.emulated_isas())
    return [name for name in kernels.available_isas() if name not in emulated]


def fallback_unit(units: list[str]) -> str:
    """The unit an entry keeps unless another wins it: AVX2's on x86 (the table the AVX-512
    one must never be slower than), else the best table's own."""
    return "avx2" if "avx2" in units else automatic_isa()


def _calls(wtype: str, entry: str, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """One call per shape of the entry, run on whatever table is selected."""
    tid = kernels.type_id(wtype)
    rows, cols = DOT_SHAPES["K" if BLOCKS[wtype][0] == 256 else "other"]
    rows = min(rows, DOT_BYTES // kernels.row_size(wtype, cols) // 16 * 16)
    if entry == "dequant":
        w = cache_line_aligned(random_weights(wtype, DEQUANT_ROWS, cols, rng))
        return {f"{DEQUANT_ROWS} rows": lambda: _kernels.dequantize(w, tid, cols)}
    w = cache_line_aligned(random_weights(wtype, rows, cols, rng))
    calls = {}
    for n_tok in DOT_TOKENS:
        # quantized once here, by the scalar quantizer every table shares (dot_avx2.c)
        x = rng.standard_normal((n_tok, cols), dtype=np.float32)
        xq = cache_line_aligned(_kernels.quantize_activation(x, tid))
        out = cache_line_aligned(np.empty((n_tok, rows), dtype=np.float32))
        calls[f"{n_tok} tok"] = lambda w=w, xq=xq, out=out: _kernels.matmul_q(w, tid, cols, xq, out)
    return calls


def _repeats(call: Callable[[], object]) -> int:
    """Calls per sample, so that a sample lasts about SAMPLE_S."""
    t0 = time.perf_counter()
    call()
    return max(1, int(SAMPLE_S / max(time.perf_counter() - t0, 1e-7)))


def _time_entry(
    wtype: str, entry: str, units: list[str], table_unit: str, rounds: int, rng: np.random.Generator
) -> EntryTiming:
    calls = _calls(wtype, entry, rng)
    has_entry = []
    for unit in units:
        kernels.select_isa(unit, unit_only=True)
        if kernels.entry_unit(entry, wtype) == unit:
            has_entry.append(unit)
    repeats: dict[str, dict[str, int]] = {}
    for unit in has_entry:
        kernels.select_isa(unit, unit_only=True)
        repeats[unit] = {shape: _repeats(call) for shape, call in calls.items()}
    best = {unit: dict.fromkeys(calls, float("inf")) for unit in has_entry}
    for _ in range(rounds):  # interleaved: a burst of load hits every unit alike
        for unit in has_entry:
            kernels.select_isa(unit, unit_only=True)
            for shape, call in calls.items():
                n = repeats[unit][shape]
                t0 = time.perf_counter()
                for _ in range(n):
                    call()
                best[unit][shape] = min(best[unit][shape], (time.perf_counter() - t0) / n)
    return EntryTiming(wtype, entry, list(calls), best, table_unit, fallback_unit(units))


def measure(
    types: list[str] | None = None, entries: tuple[str, ...] = ("dot", "dequant"), rounds: int = 15
) -> list[EntryTiming]:
    """Every entry of `types` (default: all) on every native unit; the selected table and
    the thread count are restored afterwards.  Entries only one unit has are left out."""
    units = candidate_units()
    selected, threads = kernels.current_isa(), kernels.get_threads()
    rng = np.random.default_rng(0)
    timings = []
    try:
        kernels.set_threads(1)
        for wtype in types or list(BLOCKS):
            for entry in entries:
                kernels.select_isa(automatic_isa())
                table_unit = kernels.entry_unit(entry, wtype)
                timing = _time_entry(wtype, entry, units, table_unit, rounds, rng)
                if len(timing.seconds) > 1:
                    timings.append(timing)
    finally:
        kernels.select_isa(selected)
        kernels.set_threads(threads)
    return timings


def beats(t: EntryTiming, a: str, b: str, margin: float = 0.0) -> bool:
    """Unit a faster than unit b by more than `margin` (a fraction) at every shape."""
    return all(t.seconds[a][s] < (1 - margin) * t.seconds[b][s] for s in t.shapes)


def slower_somewhere(t: EntryTiming, a: str, b: str, margin: float = 0.0) -> bool:
    """Unit a slower than unit b by more than `margin` at some shape."""
    return any(t.seconds[a][s] > (1 + margin) * t.seconds[b][s] for s in t.shapes)


def faster_unit(t: EntryTiming) -> str:
    """The tool's choice: the unit at least as fast as every other at every shape, else
    the fallback (where timed; else the fastest at the first shape)."""
    units = list(t.seconds)
    for a in units:
        if all(not slower_somewhere(t, a, b) for b in units if b != a):
            return a
    return t.fallback if t.fallback in t.seconds else min(units, key=lambda u: t.seconds[u][t.shapes[0]])


def table_disagreement(t: EntryTiming, margin: float) -> str | None:
    """Why the automatic table's unit for this entry contradicts the timing by more than
    `margin`, or None: another unit faster at every shape, or a unit other than the
    fallback taken although slower than the fallback at some shape.  Closer calls are
    ties, where either choice is right."""
    chosen = t.table_unit
    if chosen not in t.seconds:
        return f"the table runs {chosen}, which was not timed"
    for other in t.seconds:
        if other != chosen and beats(t, other, chosen, margin):
            return f"{other} is faster than the table's {chosen} by > {margin:.0%} at every shape"
    if chosen != t.fallback and t.fallback in t.seconds and slower_somewhere(t, chosen, t.fallback, margin):
        return f"the table's {chosen} is slower than {t.fallback} by > {margin:.0%} at some shape"
    return None


def cpu_description() -> str:
    fields = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break
    if "model name" not in fields:
        import platform

        return platform.processor() or platform.machine()
    return (
        f"{fields['model name']} ({fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')})"
    )


def report(timings: list[EntryTiming], margin: float) -> str:
    """A table: microseconds per call per unit and shape; on each entry's last line the
    faster unit and the automatic table's, `!` where they differ by more than `margin`."""
    units = [u for u in kernels.available_isas() if any(u in t.seconds for t in timings)]
    head = f"{'type':5} {'entry':8} {'shape':>8} " + " ".join(f"{u + ' us':>11}" for u in units)
    lines = [head + f" {'faster':>7} {'table':>7}"]
    for t in timings:
        for i, shape in enumerate(t.shapes):
            cells = " ".join(
                f"{t.seconds[u][shape] * 1e6:11.1f}" if u in t.seconds else f"{'-':>11}" for u in units
            )
            line = f"{t.wtype:5} {t.entry:8} {shape:>8} {cells}"
            if i == len(t.shapes) - 1:
                flag = " !" if table_disagreement(t, margin) else ""
                line += f" {faster_unit(t):>7} {t.table_unit:>7}{flag}"
            lines.append(line)
    return "\n".join(lines)


def run(rounds: int = 15, margin: float = 0.10) -> int:
    """`smallmind bench --isa`: print the timings; exit status 1 where the automatic table
    contradicts them by more than `margin`."""
    t0 = time.perf_counter()
    timings = measure(rounds=rounds)
    print(f"cpu: {cpu_description()}")
    print(
        f"automatic table: {automatic_isa()}; units timed: {', '.join(candidate_units())}; "
        f"1 thread, fastest of {rounds} interleaved rounds"
    )
    print(report(timings, margin))
    wrong = [(t, why) for t in timings if (why := table_disagreement(t, margin))]
    for t, why in wrong:
        print(f"! {t.wtype} {t.entry}: {why}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    if not timings:
        print("one unit only: nothing to choose on this CPU")
    return 1 if wrong else 0
