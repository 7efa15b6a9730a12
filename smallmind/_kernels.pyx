# cython: language_level=3
"""Thin nogil wrappers over csrc/: shape checks here, error codes turned into exceptions
here, all O(n) work in C with the GIL released.  Use smallmind.kernels, not this module."""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint64_t

from smallmind._kernels cimport *

cnp.import_array()


class NativeError(Exception):
    """A C kernel returned an error code (converted to typed errors by smallmind.kernels)."""

    def __init__(self, code, what):
        super().__init__(f"{what}: {_ERROR_TEXT.get(code, 'error %d' % code)}")
        self.code = code


_ERROR_TEXT = {
    -1: "unsupported tensor type",
    -2: "row length is not a whole number of blocks, or bad sizes",
    -3: "instruction set not available on this CPU",
    -4: "out of memory",
    -5: "bad argument",
}


cdef inline void check(int rc, str what) except *:
    if rc != 0:
        raise NativeError(rc, what)


def isa_count():
    return SM_ISA_COUNT


def isa_name(int isa):
    return sm_isa_name(isa).decode()


def isa_available(int isa):
    return bool(sm_isa_available(isa))


def isa_emulated(int isa):
    return bool(sm_isa_emulated(isa))


def isa_best():
    return sm_isa_best()


def isa_select(int isa):
    check(sm_isa_select(isa), f"select ISA {sm_isa_name(isa).decode()}")


def isa_select_unit(int isa):
    """The table of every entry isa's unit has, the per-CPU choices not applied (timing)."""
    check(sm_isa_select_unit(isa), f"select ISA unit {sm_isa_name(isa).decode()}")


def isa_current():
    return sm_isa_current()


ENTRY_DOT = SM_ENTRY_DOT
ENTRY_DEQUANT = SM_ENTRY_DEQUANT


def entry_unit(int entry, int t):
    """The unit (an ISA id) the current table took the entry (ENTRY_*) of weight type t from."""
    cdef int unit = sm_entry_unit(entry, t)
    if unit < 0:
        raise NativeError(unit, f"entry {entry} of type {t}")
    return unit


def set_threads(int n):
    sm_set_threads(n)


def get_threads():
    return sm_get_threads()


def max_threads():
    return sm_max_threads()


def type_supported(int t):
    return bool(sm_type_supported(t))


def block_size(int t):
    return sm_block_size(t)


def row_size(int t, int64_t n):
    return sm_row_size(t, n)


def vec_dot_type(int t):
    return sm_vec_dot_type(t)


cdef int64_t _weight_rows(cnp.ndarray w, int wtype, int64_t n_cols) except -1:
    cdef int64_t row_bytes = sm_row_size(wtype, n_cols)
    if not sm_type_supported(wtype):
        raise NativeError(SM_E_TYPE, f"weight type {wtype}")
    if row_bytes < 0:
        raise NativeError(SM_E_SHAPE, f"{n_cols} columns for type {wtype}")
    if not w.flags.c_contiguous:
        raise ValueError("weights must be C-contiguous")
    if w.nbytes % row_bytes != 0:
        raise ValueError(f"weights hold {w.nbytes} bytes, not a whole number of {row_bytes}-byte rows")
    return w.nbytes // row_bytes


cdef int _convert_rows(bint to_f32, int wtype, const uint8_t *src, int64_t src_row_bytes,
                       uint8_t *dst, int64_t dst_row_bytes, int64_t n, int64_t n_rows) noexcept nogil:
    """Row by row, `wtype` rows of n values -> f32 (to_f32), or f32 -> the activation type
    `wtype` dots against; 0, or the first error code."""
    cdef int64_t r
    cdef int rc
    for r in range(n_rows):
        if to_f32:
            rc = sm_dequantize_row(wtype, src + r * src_row_bytes, <float *>(dst + r * dst_row_bytes), n)
        else:
            rc = sm_quantize_activation(wtype, <const float *>(src + r * src_row_bytes),
                                        dst + r * dst_row_bytes, n)
        if rc != 0:
            return rc
    return 0


def dequantize(cnp.ndarray w not None, int wtype, int64_t n_cols):
    """Raw rows (any shape, C-contiguous) of `wtype` with `n_cols` values each -> f32 (rows, n_cols)."""
    cdef int64_t n_rows = _weight_rows(w, wtype, n_cols)
    cdef int64_t row_bytes = sm_row_size(wtype, n_cols)
    cdef cnp.ndarray[cnp.float32_t, ndim=2] out = np.empty((n_rows, n_cols), dtype=np.float32)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(w)
    cdef uint8_t *dst = <uint8_t *>cnp.PyArray_DATA(out)
    cdef int rc
    with nogil:
        rc = _convert_rows(True, wtype, src, row_bytes, dst, n_cols * sizeof(float), n_cols, n_rows)
    check(rc, "dequantize")
    return out


def quantize_activation(cnp.ndarray x not None, int wtype):
    """f32 rows (n_tok, n) -> raw rows in the vec_dot type of `wtype` (uint8, (n_tok, row_bytes))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    cdef int64_t n = x.shape[x.ndim - 1]
    cdef int64_t n_tok = x.size // n if n else 0
    cdef int64_t row_bytes = sm_row_size(sm_vec_dot_type(wtype), n)
    if not sm_type_supported(wtype):
        raise NativeError(SM_E_TYPE, f"weight type {wtype}")
    if row_bytes < 0:
        raise NativeError(SM_E_SHAPE, f"{n} values for type {wtype}")
    cdef cnp.ndarray out = np.empty((n_tok, row_bytes), dtype=np.uint8)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(x)
    cdef uint8_t *dst = <uint8_t *>cnp.PyArray_DATA(out)
    cdef int rc
    with nogil:
        rc = _convert_rows(False, wtype, src, n * sizeof(float), dst, row_bytes, n, n_tok)
    check(rc, "quantize activation")
    return out


def _output(cnp.ndarray out, int64_t n_tok, int64_t n_rows):
    """`out` checked for use as a (n_tok, n_rows) float32 result, or a new array."""
    if out is None:
        return np.empty((n_tok, n_rows), dtype=np.float32)
    if (out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable
            or out.size != n_tok * n_rows):
        raise ValueError(f"out must be a writable C-contiguous float32 array of {n_tok * n_rows} values")
    return out


cdef class Workspace:
    """Scratch memory reused across matmul calls, so the hot path does not allocate."""
    cdef sm_workspace ws

    def __dealloc__(self):
        sm_workspace_free(&self.ws)

    @property
    def capacity(self):
        return self.ws.cap


def matmul(cnp.ndarray w not None, int wtype, int64_t n_cols, cnp.ndarray x not None,
           cnp.ndarray out=None, Workspace workspace=None):
    """Y (n_tok, n_rows) = X (n_tok, n_cols) @ W^T; W raw rows of `wtype`."""
    cdef int64_t n_rows = _weight_rows(w, wtype, n_cols)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[x.ndim - 1] != n_cols:
        raise ValueError(f"activations have {x.shape[x.ndim - 1]} columns, weights {n_cols}")
    cdef int64_t n_tok = x.size // n_cols
    out = _output(out, n_tok, n_rows)
    if workspace is None:
        workspace = Workspace()
    cdef float *Y = <float *>cnp.PyArray_DATA(out)
    cdef const void *W = cnp.PyArray_DATA(w)
    cdef const float *X = <const float *>cnp.PyArray_DATA(x)
    cdef sm_workspace *ws = &workspace.ws
    cdef int rc
    with nogil:
        rc = sm_matmul(Y, W, wtype, n_rows, n_cols, X, n_tok, ws)
    check(rc, "matmul")
    return out


def matmul_q(cnp.ndarray w not None, int wtype, int64_t n_cols, cnp.ndarray xq not None,
             cnp.ndarray out=None, bint vec_dot_only=False):
    """As matmul, with activations already quantized by quantize_activation.  vec_dot_only:
    every element from the kernel table's one-row vec_dot (the reference for tests)."""
    cdef int64_t n_rows = _weight_rows(w, wtype, n_cols)
    cdef int64_t x_row = sm_row_size(sm_vec_dot_type(wtype), n_cols)
    if not xq.flags.c_contiguous or xq.nbytes % x_row != 0:
        raise ValueError("quantized activations must be C-contiguous whole rows")
    cdef int64_t n_tok = xq.nbytes // x_row
    out = _output(out, n_tok, n_rows)
    cdef float *Y = <float *>cnp.PyArray_DATA(out)
    cdef const void *W = cnp.PyArray_DATA(w)
    cdef const void *Xq = cnp.PyArray_DATA(xq)
    cdef int rc
    with nogil:
        if vec_dot_only:
            rc = sm_matmul_q_vec_dot(Y, W, wtype, n_rows, n_cols, Xq, n_tok)
        else:
            rc = sm_matmul_q(Y, W, wtype, n_rows, n_cols, Xq, n_tok)
    check(rc, "matmul")
    return out


def read_memory(cnp.ndarray buf not None, int n_threads):
    """Stream every byte of `buf` (the bandwidth probe of the benchmarks); returns a checksum."""
    if not buf.flags.c_contiguous:
        raise ValueError("buffer must be C-contiguous")
    cdef const void *p = cnp.PyArray_DATA(buf)
    cdef size_t n = buf.nbytes
    cdef uint64_t total
    with nogil:
        total = sm_read_memory(p, n, n_threads)
    return total


include "_engine.pxi"
