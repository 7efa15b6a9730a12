# C API of csrc/kernels.h, declared nogil so every heavy call can drop the GIL.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "kernels.h" nogil:
    ctypedef struct sm_workspace:
        void *buf
        size_t cap

    int SM_OK, SM_E_TYPE, SM_E_SHAPE, SM_E_ISA, SM_E_NOMEM, SM_E_ARG
    int SM_ISA_SCALAR, SM_ISA_AVX2, SM_ISA_AVX512, SM_ISA_NEON, SM_ISA_COUNT
    int SM_TYPE_F32, SM_TYPE_Q8_0, SM_TYPE_Q8_K

    int sm_type_supported(int type)
    int64_t sm_block_size(int type)
    int64_t sm_type_size(int type)
    int64_t sm_row_size(int type, int64_t n)
    int sm_vec_dot_type(int type)

    int sm_isa_available(int isa)
    int sm_isa_emulated(int isa)
    const char *sm_isa_name(int isa)
    int sm_isa_best()
    int sm_isa_select(int isa)
    int sm_isa_current()

    void sm_set_threads(int n)
    int sm_get_threads()
    int sm_max_threads()

    int sm_dequantize_row(int type, const void *src, float *dst, int64_t n)
    int sm_quantize_activation(int wtype, const float *src, void *dst, int64_t n)
    void sm_workspace_free(sm_workspace *ws)
    int sm_matmul(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                  const float *X, int64_t n_tok, sm_workspace *ws)
    int sm_matmul_q(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                    const void *Xq, int64_t n_tok)
    int sm_matmul_q_vec_dot(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                            const void *Xq, int64_t n_tok)
    uint64_t sm_read_memory(const void *buf, size_t n_bytes, int n_threads)
