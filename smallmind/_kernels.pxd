# The C API of csrc/ (kernels.h, forward.h): the one place the extension declares it, nogil so
# every heavy call can drop the GIL.  _kernels.pyx and the _engine.pxi it includes use these.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "kernels.h" nogil:
    ctypedef struct sm_workspace:
        void *buf
        size_t cap

    int SM_OK, SM_E_TYPE, SM_E_SHAPE, SM_E_ISA, SM_E_NOMEM, SM_E_ARG
    int SM_ISA_SCALAR, SM_ISA_AVX2, SM_ISA_AVX512, SM_ISA_NEON, SM_ISA_COUNT
    int SM_TYPE_F32, SM_TYPE_Q8_0, SM_TYPE_Q8_K
    int SM_ENTRY_DOT, SM_ENTRY_DEQUANT

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
    int sm_isa_select_unit(int isa)
    int sm_entry_unit(int entry, int type)
    int sm_isa_current()

    void sm_set_threads(int n)
    int sm_get_threads()
    int sm_max_threads()
    void sm_thread_counts(int64_t *forks, int64_t *barriers, int64_t *sleeps)

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


cdef extern from "forward.h" nogil:
    ctypedef struct sm_tensor:
        const void *data
        int type
        int64_t n_rows
        int64_t n_cols

    # One sm_tensor per layer weight, in the order smallmind.engine.model.LAYER_TENSORS gives
    # (tests/test_model.py checks that order against forward.h); filled as an array of
    # sm_tensor, so its fields are not repeated here.
    ctypedef struct sm_layer_weights:
        pass

    ctypedef struct sm_weights:
        sm_tensor token_embd, output_norm, output, rope_freqs
        sm_layer_weights *layers

    ctypedef struct sm_config:
        int arch, act
        int dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, vocab_size
        float norm_eps, rope_base, rope_base_swa, rope_freq_scale
        int rope_neox
        float attn_scale, embed_scale
        int sliding_window
        const uint8_t *layer_swa
        int n_ctx, n_slots, max_batch_tokens

    ctypedef struct sm_model:
        pass

    sm_model *sm_model_create(const sm_config *cfg, const sm_weights *w, int *err)
    void sm_model_free(sm_model *m)
    int64_t sm_model_kv_bytes(const sm_model *m)
    void sm_set_repack(int on)
    int sm_get_repack()
    int sm_model_repacked(const sm_model *m)
    void sm_model_release_originals(sm_model *m)
    int sm_forward(sm_model *m, int n_tokens, const int32_t *tokens, const int32_t *slots,
                   const int32_t *positions, int n_out, const int32_t *out_rows, float *logits,
                   float *hidden)
    int sm_model_copy_slot(sm_model *m, int src, int dst, int n_positions)


cdef extern from "sample.h" nogil:
    ctypedef void (*sm_exp_loop)(char **args, const Py_ssize_t *dims, const Py_ssize_t *steps, void *data)

    ctypedef struct sm_exp:
        sm_exp_loop exp_f64
        void *exp_f64_data

    ctypedef struct sm_sampling:
        double temperature
        int64_t top_k
        double top_p
        int has_min_p
        double log_min_p
        double repetition_penalty, frequency_penalty, presence_penalty

    int SM_SAMPLE_NAN, SM_SAMPLE_ALL_INF, SM_SAMPLE_FALLBACK, SM_SAMPLE_ARG

    ctypedef struct sm_sample_row:
        const float *logits
        const uint32_t *allowed
        const int64_t *bias_ids
        const float *bias_vals
        int64_t n_bias
        int64_t *window
        int64_t n_window
        const sm_sampling *p
        double u
        float *processed
        int64_t token

    int64_t sm_sample_scratch_floats(int64_t n_vocab)
    void sm_sample_batch(sm_sample_row *rows, int64_t n_rows, int64_t n_vocab, const sm_exp *ex,
                         float *scratch)


# ---- load-time repacking (csrc/repack.h), called directly by tests and benchmarks ----
cdef extern from "repack.h" nogil:
    int SM_TYPE_Q4_K
    int64_t sm_repack_q4_K_x8_size(int64_t n_rows, int64_t n_cols)
    int sm_repack_q4_K_x8(void *dst, const void *W, int64_t n_rows, int64_t n_cols)
    int sm_matmul_q4_K_x8(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok)
