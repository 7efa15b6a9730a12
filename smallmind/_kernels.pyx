# cython: language_level=3
"""Thin nogil wrappers over csrc/: shape checks here, error codes turned into exceptions
here, all O(n) work in C with the GIL released.  Use smallmind.kernels, not this module."""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

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


def thread_counts():
    cdef int64_t forks, barriers, sleeps
    sm_thread_counts(&forks, &barriers, &sleeps)
    return forks, barriers, sleeps


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


cdef int64_t _quantized_rows(cnp.ndarray xq, int64_t x_row) except -1:
    """How many activation rows of x_row bytes `xq` (from quantize_activation) holds."""
    if not xq.flags.c_contiguous or xq.nbytes % x_row != 0:
        raise ValueError("quantized activations must be C-contiguous whole rows")
    return xq.nbytes // x_row


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
    cdef int64_t n_tok = _quantized_rows(xq, sm_row_size(sm_vec_dot_type(wtype), n_cols))
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


# ---- sampling (csrc/sample.c) ----

SAMPLE_NAN = SM_SAMPLE_NAN
SAMPLE_ALL_INF = SM_SAMPLE_ALL_INF
SAMPLE_FALLBACK = SM_SAMPLE_FALLBACK

# numpy.exp's own float64 loop: the sampler's exponentials must be numpy's, bit for bit (on
# CPUs with AVX-512F numpy uses its own kernel, which differs from libm's in the last bit).
cdef sm_exp _numpy_exp


cdef void _find_numpy_exp() except *:
    cdef cnp.ufunc uf = np.exp
    cdef int i
    for i in range(uf.ntypes):
        if uf.types[2 * i] == cnp.NPY_DOUBLE and uf.types[2 * i + 1] == cnp.NPY_DOUBLE:
            _numpy_exp.exp_f64 = <sm_exp_loop><void *>uf.functions[i]
            _numpy_exp.exp_f64_data = uf.data[i]
            return
    raise ImportError("numpy.exp has no float64 -> float64 loop")


_find_numpy_exp()


def sample_scratch_floats(int64_t n_vocab):
    """float32 entries of scratch that sample() needs for this vocabulary."""
    return sm_sample_scratch_floats(n_vocab)


cdef class SampleSettings:
    """What stays fixed of one sequence's sampling: its settings as sm_sample takes them and
    its logit bias (built once per sequence)."""
    cdef sm_sampling p
    cdef const int64_t[::1] bias_ids
    cdef const float[::1] bias_vals

    def __init__(self, double temperature, int64_t top_k, double top_p, bint has_min_p, double log_min_p,
                 double repetition_penalty, double frequency_penalty, double presence_penalty,
                 const int64_t[::1] bias_ids not None, const float[::1] bias_vals not None):
        if bias_ids.shape[0] != bias_vals.shape[0]:
            raise ValueError("bias_ids and bias_vals differ in length")
        self.p.temperature = temperature
        self.p.top_k = top_k
        self.p.top_p = top_p
        self.p.has_min_p = has_min_p
        self.p.log_min_p = log_min_p
        self.p.repetition_penalty = repetition_penalty
        self.p.frequency_penalty = frequency_penalty
        self.p.presence_penalty = presence_penalty
        self.bias_ids = bias_ids
        self.bias_vals = bias_vals


cdef int64_t _empty_vector = 0   # what an empty vector points to (sm_sample reads none of it)


cdef void *_vector_data(object a, int typenum, bint writable, str what) except NULL:
    """The data of a 1-D C-contiguous numpy array of `typenum` (a pointer the caller's
    reference keeps valid); ValueError otherwise."""
    if (not isinstance(a, cnp.ndarray) or cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_TYPE(a) != typenum
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        raise ValueError(f"{what} must be a one-dimensional C-contiguous {'writable ' if writable else ''}"
                         f"array of {cnp.PyArray_DescrFromType(typenum)}")
    return cnp.PyArray_DATA(a) if cnp.PyArray_SIZE(a) else <void *>&_empty_vector


cdef void _sample_row(sm_sample_row *row, SampleSettings settings, const float *logits, int64_t n,
                      object allowed, object window, double u, float *processed) except *:
    """Fills one row of sm_sample_batch; its arrays stay alive in the caller's lists."""
    if settings is None:
        raise TypeError("no SampleSettings")
    row.logits = logits
    row.allowed = NULL
    if allowed is not None:
        row.allowed = <const uint32_t *>_vector_data(allowed, cnp.NPY_UINT32, False, "a grammar mask")
        if cnp.PyArray_SIZE(allowed) * 32 < n:
            raise ValueError(f"the grammar mask covers {cnp.PyArray_SIZE(allowed) * 32} tokens, the logits {n}")
    row.n_bias = settings.bias_ids.shape[0]
    row.bias_ids = &settings.bias_ids[0] if row.n_bias else NULL
    row.bias_vals = &settings.bias_vals[0] if row.n_bias else NULL
    row.window = <int64_t *>_vector_data(window, cnp.NPY_INT64, True, "a penalty window")
    row.n_window = cnp.PyArray_SIZE(window)
    row.p = &settings.p
    row.u = u
    row.processed = processed
    row.token = SM_SAMPLE_ARG


def sample_batch(list settings not None, const float[:, ::1] logits not None, list allowed not None,
                 list windows not None, list u not None, float[:, ::1] processed not None,
                 float[::1] scratch not None):
    """One token id per row of ``logits`` (a list), or SAMPLE_NAN / SAMPLE_ALL_INF /
    SAMPLE_FALLBACK (see csrc/sample.h), in one call with the GIL released.  Per row:
    ``settings`` a SampleSettings, ``allowed`` a uint32 grammar mask or None, ``windows`` an
    int64 penalty window (sorted in place), ``u`` the uniform draw, ``processed`` where a
    falling-back row's processed logits go."""
    cdef Py_ssize_t n_rows = logits.shape[0], n = logits.shape[1], r
    if not len(settings) == len(allowed) == len(windows) == len(u) == n_rows:
        raise ValueError(f"{n_rows} rows of logits, {len(settings)} settings, {len(allowed)} masks, "
                         f"{len(windows)} windows and {len(u)} draws")
    if n == 0:
        raise ValueError("the logits rows are empty")
    if processed.shape[0] < n_rows or processed.shape[1] != n:
        raise ValueError(f"processed logits must hold ({n_rows}, {n}) values")
    if scratch.shape[0] < sm_sample_scratch_floats(n):
        raise ValueError("sampling scratch too small")
    if n_rows == 0:
        return []
    cdef sm_sample_row *rows = <sm_sample_row *>PyMem_Malloc(n_rows * sizeof(sm_sample_row))
    if rows == NULL:
        raise MemoryError()
    try:
        for r in range(n_rows):
            _sample_row(&rows[r], settings[r], &logits[r, 0], n, allowed[r], windows[r], u[r], &processed[r, 0])
        with nogil:
            sm_sample_batch(rows, n_rows, n, &_numpy_exp, &scratch[0])
        tokens = [rows[r].token for r in range(n_rows)]
    finally:
        PyMem_Free(rows)
    if SM_SAMPLE_ARG in tokens:
        raise NativeError(-5, f"sample row {tokens.index(SM_SAMPLE_ARG)}")
    return tokens


include "_engine.pxi"


# ---- load-time repacking (csrc/repack.h), called directly by tests and benchmarks ----

def repack_q4_K_x8(cnp.ndarray w not None, int64_t n_cols):
    """Q4_K rows (n_rows, n_cols) -> a new uint8 array in the 8-row interleaved layout."""
    cdef int64_t n_rows = _weight_rows(w, SM_TYPE_Q4_K, n_cols)
    cdef int64_t size = sm_repack_q4_K_x8_size(n_rows, n_cols)
    if size < 0:
        raise NativeError(SM_E_SHAPE, f"{n_cols} columns for Q4_K")
    out = np.empty(size, dtype=np.uint8)
    cdef void *dst = cnp.PyArray_DATA(out)
    cdef const void *W = cnp.PyArray_DATA(w)
    cdef int rc
    with nogil:
        rc = sm_repack_q4_K_x8(dst, W, n_rows, n_cols)
    check(rc, "repack")
    return out


def matmul_q4_K_x8(cnp.ndarray wr not None, int64_t n_rows, int64_t n_cols, cnp.ndarray xq not None,
                   cnp.ndarray out=None):
    """As matmul_q for Q4_K weights, over their repack_q4_K_x8 copy; one thread."""
    if not wr.flags.c_contiguous or wr.nbytes != sm_repack_q4_K_x8_size(n_rows, n_cols):
        raise ValueError(f"repacked weights must be the C-contiguous repack of {n_rows}x{n_cols} Q4_K")
    cdef int64_t n_tok = _quantized_rows(xq, sm_row_size(SM_TYPE_Q8_K, n_cols))
    out = _output(out, n_tok, n_rows)
    cdef float *Y = <float *>cnp.PyArray_DATA(out)
    cdef const void *Wr = cnp.PyArray_DATA(wr)
    cdef const void *Xq = cnp.PyArray_DATA(xq)
    cdef int rc
    with nogil:
        rc = sm_matmul_q4_K_x8(Y, Wr, n_rows, n_cols, Xq, n_tok)
    check(rc, "matmul_q4_K_x8")
    return out
