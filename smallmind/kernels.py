"""Python face of the native kernels: type names, ISA choice, threads, typed errors.

The instruction set is chosen once, at import: SMALLMIND_ISA (scalar|avx2|avx512|neon)
forces one and is an error if this CPU lacks it; otherwise the best available is used.
SMALLMIND_THREADS sets the OpenMP thread count (default: the physical cores this process may
use, within its cgroup CPU quota).  SMALLMIND_REPACK=0/1 turns the load-time repacking of
Q4_K matrices (csrc/repack.h) off or on; unset, it is on where it was measured faster."""

from __future__ import annotations

import os

import numpy as np

from smallmind import _kernels
from smallmind.cpu_budget import default_threads
from smallmind.errors import ConfigError, IsaError, KernelError

# ggml type ids of the weight types the kernels read.
TYPE_IDS = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q5_0": 6,
    "Q8_0": 8,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
    "BF16": 30,
}
ISA_IDS = {_kernels.isa_name(i): i for i in range(_kernels.isa_count())}


def type_id(t: int | str) -> int:
    if isinstance(t, str):
        try:
            return TYPE_IDS[t.upper()]
        except KeyError:
            raise KernelError(f"unsupported weight type {t!r}; supported: {', '.join(TYPE_IDS)}") from None
    if not _kernels.type_supported(int(t)):
        raise KernelError(f"unsupported weight type id {t}")
    return int(t)


def type_supported(type_id: int) -> bool:
    """Whether the matmul kernels read weights of this ggml type id."""
    return bool(_kernels.type_supported(type_id))


def available_isas() -> list[str]:
    return [name for name, i in ISA_IDS.items() if _kernels.isa_available(i)]


def emulated_isas() -> list[str]:
    """ISAs compiled through SIMDe (a test build, setup.py's SMALLMIND_EMULATE); never
    chosen unless SMALLMIND_ISA names them."""
    return [name for name, i in ISA_IDS.items() if _kernels.isa_emulated(i)]


def current_isa() -> str:
    return _kernels.isa_name(_kernels.isa_current())


def select_isa(name: str, unit_only: bool = False) -> None:
    """Run the kernels of instruction set `name`.  unit_only: every entry its unit has from
    that unit, without dispatch.c's measured per-CPU choices (what the timing tool compares)."""
    if name not in ISA_IDS:
        raise IsaError(f"unknown instruction set {name!r}; known: {', '.join(ISA_IDS)}")
    if not _kernels.isa_available(ISA_IDS[name]):
        raise IsaError(
            f"instruction set {name!r} is not available on this CPU "
            f"(available: {', '.join(available_isas())})"
        )
    (_kernels.isa_select_unit if unit_only else _kernels.isa_select)(ISA_IDS[name])


# Entries of the kernel table chosen per weight type (kernels.h sm_entry): "dot" is vec_dot
# with its batched kernels (always from one unit), "dequant" the row decoder.
ENTRIES = {"dot": _kernels.ENTRY_DOT, "dequant": _kernels.ENTRY_DEQUANT}


def entry_unit(entry: str, wtype) -> str:
    """The unit (ISA name) whose kernel the current table runs for `entry` of `wtype`."""
    return _kernels.isa_name(_call(_kernels.entry_unit, ENTRIES[entry], type_id(wtype)))


def set_threads(n: int) -> None:
    """n OpenMP threads for the kernels; 0: the default (usable_cores)."""
    if n < 0:
        raise ConfigError(f"thread count must be >= 0 (0 = the default), got {n}")
    _kernels.set_threads(n or usable_cores())


def get_threads() -> int:
    return _kernels.get_threads()


def thread_counts() -> dict[str, int]:
    """Since the process started: forks of the threads (one per multi-threaded forward step
    or standalone matmul), barriers passed between the step's operations, and barrier waits
    that ended in a sleep (the rest spun)."""
    forks, barriers, sleeps = _kernels.thread_counts()
    return {"forks": forks, "barriers": barriers, "sleeps": sleeps}


def usable_cores() -> int:
    """The default thread count: physical cores this process may use, within its cgroup CPU
    quota (see cpu_budget)."""
    return default_threads()


def set_repack(on: bool | None) -> None:
    """Whether models loaded from now on keep repacked copies of their Q4_K matrices (where
    the kernel table's Q4_K dot kernels are the avx2 unit's); same logits either way.  None
    (the default): only on the CPU class it was measured faster on (csrc/forward.h)."""
    _kernels.set_repack(None if on is None else bool(on))


def repack_enabled() -> bool:
    return _kernels.get_repack()


def configure_from_env(environ=os.environ) -> None:
    """Apply SMALLMIND_ISA, SMALLMIND_THREADS and SMALLMIND_REPACK."""
    repack = environ.get("SMALLMIND_REPACK", "").strip()
    if repack not in ("", "0", "1"):
        raise ConfigError(f"SMALLMIND_REPACK must be 0 or 1, got {repack!r}")
    set_repack(None if repack == "" else repack == "1")
    isa = environ.get("SMALLMIND_ISA", "").strip().lower()
    select_isa(isa if isa else _kernels.isa_name(_kernels.isa_best()))
    threads = environ.get("SMALLMIND_THREADS", "").strip()
    if threads:
        try:
            n = int(threads)
        except ValueError:
            raise ConfigError(f"SMALLMIND_THREADS must be an integer, got {threads!r}") from None
        set_threads(n)
    else:
        set_threads(usable_cores())


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except _kernels.NativeError as e:
        raise KernelError(str(e)) from None


def row_size(wtype, n_cols: int) -> int:
    return _kernels.row_size(type_id(wtype), n_cols)


def dequantize(raw: np.ndarray, wtype, n_cols: int) -> np.ndarray:
    """Raw rows of `wtype` with `n_cols` values each -> float32 (n_rows, n_cols)."""
    return _call(_kernels.dequantize, np.ascontiguousarray(raw), type_id(wtype), n_cols)


def quantize_activation(x: np.ndarray, wtype) -> np.ndarray:
    """f32 rows -> raw rows in the activation type `wtype` dots against (Q8_0, Q8_K or F32)."""
    return _call(_kernels.quantize_activation, np.asarray(x), type_id(wtype))


Workspace = _kernels.Workspace
# The transformer step (csrc/forward.h); smallmind.engine.model wraps it.  NativeError is what
# it raises: the caller knows the batch and turns the error code into a precise message.
NativeModel = _kernels.NativeModel
NativeError = _kernels.NativeError


def matmul(raw_w: np.ndarray, wtype, n_cols: int, x: np.ndarray, out=None, workspace=None) -> np.ndarray:
    """Y (n_tok, n_rows) = X (n_tok, n_cols) @ W^T with W given as raw rows of `wtype`."""
    return _call(
        _kernels.matmul, np.ascontiguousarray(raw_w), type_id(wtype), n_cols, np.asarray(x), out, workspace
    )


def matmul_q(
    raw_w: np.ndarray, wtype, n_cols: int, xq: np.ndarray, out=None, vec_dot_only: bool = False
) -> np.ndarray:
    """As matmul with quantized activations.  vec_dot_only: each element from the current
    table's one-row vec_dot, one by one (the reference the batched kernels must equal)."""
    return _call(
        _kernels.matmul_q, np.ascontiguousarray(raw_w), type_id(wtype), n_cols, xq, out, vec_dot_only
    )


configure_from_env()


# ---- sampling (csrc/sample.c) ----

# What sample_batch() returns instead of a token id: NaN logits, every logit -inf, or a path that
# stays with numpy (its float32 exponentials; see csrc/sample.h).
SAMPLE_NAN = _kernels.SAMPLE_NAN
SAMPLE_ALL_INF = _kernels.SAMPLE_ALL_INF
SAMPLE_FALLBACK = _kernels.SAMPLE_FALLBACK
SampleSettings = _kernels.SampleSettings


def sample_scratch(n_vocab: int) -> np.ndarray:
    """The float32 scratch sample_batch() works in (one for the whole batch)."""
    return np.empty(_kernels.sample_scratch_floats(n_vocab), np.float32)


def sample_batch(
    settings: list[SampleSettings],
    logits: np.ndarray,
    allowed: list[np.ndarray | None],
    windows: list[np.ndarray],
    u: list[float],
    processed: np.ndarray,
    scratch: np.ndarray,
) -> list[int]:
    """One token per row of float32 ``logits`` (rows, n_vocab), every row in one native call
    with the GIL released once.  Per row: its SampleSettings, the grammar's uint32 bit mask or
    None, the penalty window (int64, sorted in place), the uniform draw.  A token id >= 0 or
    one of the SAMPLE_* codes per row; a SAMPLE_FALLBACK row that applied a mask, a bias or
    penalties leaves its processed logits in its row of ``processed`` (rows, n_vocab)."""
    return _call(_kernels.sample_batch, settings, logits, allowed, windows, u, processed, scratch)


# ---- load-time repacking (csrc/repack.h; the model makes its own copies in csrc/model.c) ----


def repack_q4_K_x8(raw_w: np.ndarray, n_cols: int) -> np.ndarray:
    """Raw Q4_K rows -> a uint8 copy with rows interleaved in groups of 8 (csrc/repack.h)."""
    return _call(_kernels.repack_q4_K_x8, np.ascontiguousarray(raw_w), n_cols)


def matmul_q4_K_x8(repacked: np.ndarray, n_rows: int, n_cols: int, xq: np.ndarray, out=None) -> np.ndarray:
    """As matmul_q for Q4_K weights, over their repack_q4_K_x8 copy, on one thread; the same
    floats as matmul_q where the table's Q4_K kernels are the avx2 unit's.  KernelError
    where the CPU lacks AVX2."""
    return _call(_kernels.matmul_q4_K_x8, repacked, n_rows, n_cols, xq, out)
