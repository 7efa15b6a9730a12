"""Types of the native extension (smallmind/_kernels.pyx and _engine.pxi) for mypy.

Checked against the built module by tests/test_lint.py (mypy's stubtest), so a wrapper
added or renamed in the .pyx without its line here fails the suite."""

from typing import Any

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]

class NativeError(Exception):
    code: int
    def __init__(self, code: int, what: str) -> None: ...

def isa_count() -> int: ...
def isa_name(isa: int) -> str: ...
def isa_available(isa: int) -> bool: ...
def isa_emulated(isa: int) -> bool: ...
def isa_best() -> int: ...
def isa_select(isa: int) -> None: ...
def isa_select_unit(isa: int) -> None: ...
def isa_current() -> int: ...

ENTRY_DOT: int
ENTRY_DEQUANT: int

def entry_unit(entry: int, t: int) -> int: ...
def set_threads(n: int) -> None: ...
def get_threads() -> int: ...
def max_threads() -> int: ...
def thread_counts() -> tuple[int, int, int]: ...
def type_supported(t: int) -> bool: ...
def block_size(t: int) -> int: ...
def row_size(t: int, n: int) -> int: ...
def vec_dot_type(t: int) -> int: ...
def dequantize(w: np.ndarray, wtype: int, n_cols: int) -> _F32: ...
def quantize_activation(x: np.ndarray, wtype: int) -> npt.NDArray[np.uint8]: ...

class Workspace:
    @property
    def capacity(self) -> int: ...

def matmul(
    w: np.ndarray,
    wtype: int,
    n_cols: int,
    x: np.ndarray,
    out: np.ndarray | None = None,
    workspace: Workspace | None = None,
) -> _F32: ...
def matmul_q(
    w: np.ndarray,
    wtype: int,
    n_cols: int,
    xq: np.ndarray,
    out: np.ndarray | None = None,
    vec_dot_only: bool = False,
) -> _F32: ...
def read_memory(buf: np.ndarray, n_threads: int) -> int: ...

SAMPLE_NAN: int
SAMPLE_ALL_INF: int
SAMPLE_FALLBACK: int

def sample_scratch_floats(n_vocab: int) -> int: ...

class SampleSettings:
    def __init__(
        self,
        temperature: float,
        top_k: int,
        top_p: float,
        has_min_p: bool,
        log_min_p: float,
        repetition_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        bias_ids: np.ndarray,
        bias_vals: np.ndarray,
    ) -> None: ...

def sample_batch(
    settings: list[SampleSettings],
    logits: np.ndarray,
    allowed: list[np.ndarray | None],
    windows: list[np.ndarray],
    u: list[float],
    processed: np.ndarray,
    scratch: np.ndarray,
) -> list[int]: ...
def set_repack(on: bool | None) -> None: ...
def get_repack() -> bool: ...

class NativeModel:
    vocab_size: int
    dim: int
    n_ctx: int
    n_slots: int
    max_batch_tokens: int
    def __init__(self, config: dict, weights: dict) -> None: ...
    def kv_bytes(self) -> int: ...
    def repacked(self) -> int: ...
    # logits (n_out, vocab_size); with want_hidden, (logits, hidden (n_tokens, dim))
    def forward(
        self,
        tokens: npt.ArrayLike,
        slots: npt.ArrayLike,
        positions: npt.ArrayLike,
        out_rows: npt.ArrayLike,
        want_hidden: bool = False,
        out: np.ndarray | None = None,
    ) -> Any: ...
    def copy_slot(self, src: int, dst: int, n_positions: int) -> None: ...

# ---- load-time repacking (csrc/repack.h), called directly by tests and benchmarks ----
def repack_q4_K_x8(w: np.ndarray, n_cols: int) -> npt.NDArray[np.uint8]: ...
def matmul_q4_K_x8(
    wr: np.ndarray, n_rows: int, n_cols: int, xq: np.ndarray, out: np.ndarray | None = None
) -> _F32: ...
