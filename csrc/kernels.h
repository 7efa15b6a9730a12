/* The C API of SmallMind's kernels.
 *
 * A weight row of n values of type t is dotted with an activation row that was quantized
 * once into t's "vec_dot type" (Q8_0 for the 32-blocks, Q8_K for the K-quants, F32 for the
 * float types).  Each instruction set fills an sm_kernels table; the best table for the CPU
 * is chosen once (dispatch.c) and everything else goes through it.
 *
 * Library C never prints or exits: errors are negative SM_E* codes. */
#ifndef SMALLMIND_KERNELS_H
#define SMALLMIND_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

enum sm_error {
    SM_OK = 0,
    SM_E_TYPE = -1,     /* unsupported tensor type */
    SM_E_SHAPE = -2,    /* n not a multiple of the type's block size, or bad sizes */
    SM_E_ISA = -3,      /* requested instruction set not available on this CPU */
    SM_E_NOMEM = -4,    /* allocation failed */
    SM_E_ARG = -5,      /* other bad argument */
};

enum sm_isa { SM_ISA_SCALAR = 0, SM_ISA_AVX2 = 1, SM_ISA_AVX512 = 2, SM_ISA_NEON = 3, SM_ISA_COUNT = 4 };

/* src: n values of a weight type -> dst: n floats.  n is a multiple of the block size. */
typedef void (*sm_dequant_fn)(float *dst, const void *src, int64_t n);
/* src: n floats -> dst: n values of an activation type (Q8_0 or Q8_K). */
typedef void (*sm_quantize_fn)(void *dst, const float *src, int64_t n);
/* *s = dot(w[0:n], a[0:n]); w in the weight type, a in its vec_dot type. */
typedef void (*sm_vec_dot_fn)(float *s, const void *w, const void *a, int n);
/* Several activation rows against one weight row, decoding each weight block once:
 * s[j * s_stride] = dot(w[0:n], a + j * a_stride) for j < n_act, 1 <= n_act <=
 * SM_VEC_DOT_N_MAX (a_stride in bytes, s_stride in floats).  Same integer sums as vec_dot;
 * an ISA unit's vec_dot_n gives the same floats as its vec_dot.
 * a_d: for Q8_0 activations, the n_act rows' block scales as floats, block-major with
 * sm_vec_dot_n_pad(n_act) entries per block: scale of block b of row j at
 * a_d[b * pad + j], the pad - n_act unused entries 0; then, from a_d + nb * pad (nb = n /
 * 32), the sums of the rows' 32 quants per block as int32 in the same layout (0 where
 * unused).  The caller forms both once per matmul, so that the kernels neither convert
 * fp16 scales for every weight row nor gather them one by one, and can take a weight
 * zero point out of a block's total at once.  NULL for the other activation types (Q8_K
 * has float scales and its own bsums). */
#define SM_VEC_DOT_N_MAX 8
typedef void (*sm_vec_dot_n_fn)(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act);
/* Rows per block in a_d for n_act rows: 1, 2, 4 or 8, the kernels' row-group sizes. */
static inline int sm_vec_dot_n_pad(int n_act) { return n_act <= 1 ? 1 : n_act <= 2 ? 2 : n_act <= 4 ? 4 : 8; }
/* A tile of a matmul: n_rows weight rows (w_stride bytes apart) against n_act activation
 * rows, 1 <= n_act <= SM_VEC_DOT_N_MAX: s[j * s_stride + r] = dot(w + r * w_stride, a + j *
 * a_stride) over n values, for r < n_rows, j < n_act.  a_d: the activation panel of
 * vec_dot_n (same layout, pad = sm_vec_dot_n_pad(n_act)), never NULL, also for n_act == 1.
 * Each weight block is decoded once for all n_act rows, and the block sums of several
 * weight rows come out side by side, so no per-row horizontal reduction is needed.  Every
 * s is bit-identical to the same unit's vec_dot for that (weight row, activation row),
 * whatever n_rows and n_act: results do not depend on tiling or batching. */
typedef void (*sm_vec_dot_tile_fn)(float *s, size_t s_stride, const void *w, size_t w_stride, int n_rows,
                                   const void *a, size_t a_stride, const float *a_d, int n, int n_act);

/* Attention scores: s[i * s_stride + j] = dot(q + i * q_stride, k + j * k_stride) over n
 * values, for i < n_q, j < n_k; q f32, k f16 (cache rows).  Each sum is formed in an order
 * that depends only on n, never on n_q, n_k or the other rows of the call, so a score does
 * not depend on how the rows were grouped. */
typedef void (*sm_attn_scores_fn)(float *s, size_t s_stride, const float *q, size_t q_stride, int n_q,
                                  const sm_half *k, size_t k_stride, int n_k, int n);
/* Attention values: o[i * o_stride + d] += sum_j p[i * p_stride + j] * v[j * v_stride + d]
 * for i < n_q, d < n; the j terms are added into o one at a time, j = 0, 1, ..., n_k - 1
 * (a zero p leaves o unchanged). */
typedef void (*sm_attn_pv_fn)(float *o, size_t o_stride, const float *p, size_t p_stride, int n_q,
                              const sm_half *v, size_t v_stride, int n_k, int n);

typedef struct {
    sm_dequant_fn dequant[SM_TYPE_COUNT];    /* per weight type */
    sm_vec_dot_fn vec_dot[SM_TYPE_COUNT];    /* per weight type, against vec_dot_type[t] */
    sm_quantize_fn quantize[SM_TYPE_COUNT];  /* per activation type (Q8_0, Q8_K) */
    /* per weight type; NULL: no multi-row kernel, callers loop over vec_dot (the scalar
     * table leaves them NULL so that a unit which overrides only vec_dot, e.g. NEON, keeps
     * using its own vec_dot for batches instead of inheriting scalar code) */
    sm_vec_dot_n_fn vec_dot_n[SM_TYPE_COUNT];
    /* per weight type; NULL: none, callers use vec_dot_n / vec_dot.  Matched to the vec_dot
     * of its own unit: a table takes a type's vec_dot, vec_dot_n and vec_dot_tile from one
     * unit together (dispatch.c). */
    sm_vec_dot_tile_fn vec_dot_tile[SM_TYPE_COUNT];
    /* attention over the f16 KV cache (forward.c); never NULL */
    sm_attn_scores_fn attn_scores;
    sm_attn_pv_fn attn_pv;
} sm_kernels;

/* ---- per-type facts (dispatch.c) ---- */
int sm_type_supported(int type);       /* weight types we can read: 1/0 */
int64_t sm_block_size(int type);       /* weights per block (1 for float types) */
int64_t sm_type_size(int type);        /* bytes per block */
int64_t sm_row_size(int type, int64_t n); /* bytes for n values, or -1 if n is not whole blocks */
int sm_vec_dot_type(int type);         /* activation type the weight type dots against */

/* ---- instruction sets (cpu_features.c, dispatch.c) ---- */
int sm_isa_available(int isa);         /* 1 if this CPU (and OS) can run it and it was compiled in */
int sm_isa_emulated(int isa);          /* 1 if compiled through SIMDe (test builds); never chosen as best */
/* CPU classes dispatch.c has measured choices for */
enum sm_cpu_class { SM_CPU_OTHER = 0, SM_CPU_AMD = 1, SM_CPU_INTEL_AMX = 2 };
int sm_cpu_class(void);
const char *sm_isa_name(int isa);
int sm_isa_best(void);
/* Select the table used by everything below. SM_E_ISA if unavailable. */
int sm_isa_select(int isa);
/* Select instead the table that takes every entry isa's unit has from that unit (no
 * per-CPU choice applied; for the avx512 unit: its lone vec_dot per type, no batched
 * kernels): the candidates the kernel timing tool compares. */
int sm_isa_select_unit(int isa);
/* The unit (an sm_isa) the current table took an entry of weight type `type` from;
 * SM_E_TYPE or SM_E_ARG for a bad argument.  Entries chosen per type: */
enum sm_entry {
    SM_ENTRY_DOT = 0,     /* vec_dot with vec_dot_n and vec_dot_tile: always from one unit */
    SM_ENTRY_DEQUANT = 1, /* dequant */
};
int sm_entry_unit(int entry, int type);
int sm_isa_current(void);
const sm_kernels *sm_kernels_current(void);

/* Filled by each ISA unit; each starts from the scalar table and overrides what it has. */
void sm_fill_kernels_scalar(sm_kernels *k);
void sm_fill_kernels_avx2(sm_kernels *k);
void sm_fill_kernels_avx512(sm_kernels *k);
void sm_fill_kernels_neon(sm_kernels *k);

/* ---- threads ---- */
void sm_set_threads(int n);
int sm_get_threads(void);
int sm_max_threads(void);
/* Since the process started: forks of more than one thread (a forward step forks once),
 * barriers those threads passed, and waits at a barrier that ended in a sleep (team.c). */
void sm_thread_counts(int64_t *forks, int64_t *barriers, int64_t *sleeps);

/* ---- row and matrix operations (matmul.c) ---- */
/* dst[0:n] = dequantized row.  */
int sm_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* Quantize an f32 row into the activation type of `wtype` (for tests/introspection). */
int sm_quantize_activation(int wtype, const float *src, void *dst, int64_t n);

/* Work space for sm_matmul, reused across calls so the hot path does not allocate. */
typedef struct {
    void *buf;
    size_t cap;
} sm_workspace;
void sm_workspace_free(sm_workspace *ws);

/* Y (n_tok, n_rows) = X (n_tok, n_cols) @ W^T, W (n_rows, n_cols) of type wtype, rows
 * contiguous (row stride = sm_row_size(wtype, n_cols)).  Activations are quantized once per
 * row of X; output rows are split over the threads. */
int sm_matmul(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
              const float *X, int64_t n_tok, sm_workspace *ws);
/* The same with X already quantized into the vec_dot type (Xq rows of sm_row_size). */
int sm_matmul_q(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                const void *Xq, int64_t n_tok);
/* As sm_matmul_q, every element from the table's vec_dot alone (one weight row against one
 * activation row; no tile or multi-row kernels, no threads): the reference that the other
 * paths must equal bit for bit (tests). */
int sm_matmul_q_vec_dot(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                        const void *Xq, int64_t n_tok);

/* Several matmuls over the same X in one parallel region: Y_p (n_tok, n_rows_p) =
 * X @ W_p^T for every part, all W_p with n_cols columns and the same vec_dot type (else
 * SM_E_TYPE).  X is quantized once (rows split over the threads), then the row tiles of
 * all parts are shared out as one list.  Same results as one sm_matmul per part.  One
 * fork of the threads per call: a forward step uses sm_matmul_team instead. */
#define SM_MATMUL_MAX_PARTS 4
typedef struct {
    float *Y;
    const void *W;
    int wtype;
    int64_t n_rows;
    const void *W_x8; /* Q4_K: W repacked by sm_repack_q4_K_x8 (repack.h), else NULL */
} sm_matmul_part;
int sm_matmul_multi(const sm_matmul_part *parts, int n_parts, int64_t n_cols, const float *X, int64_t n_tok,
                    sm_workspace *ws);

/* Workspace bytes sm_matmul and sm_matmul_multi need for n_tok rows of n_cols (0 when the
 * activations are used as they are). */
size_t sm_matmul_workspace_bytes(int wtype, int64_t n_cols, int64_t n_tok);

/* sm_matmul_multi as one operation of a step's team (team.h): called by every thread of
 * the team with the same arguments, ws already holding sm_matmul_workspace_bytes (else
 * SM_E_NOMEM, from every thread).  Each thread quantizes the rows of X it owns
 * (sm_team_owns_token), which it must have written itself or before a barrier; returns
 * after a barrier, with every Y complete. */
struct sm_team;
int sm_matmul_team(struct sm_team *tm, int tid, const sm_matmul_part *parts, int n_parts, int64_t n_cols,
                   const float *X, int64_t n_tok, sm_workspace *ws);

/* ---- benchmarks (membench.c) ---- */
uint64_t sm_read_memory(const void *buf, size_t n_bytes, int n_threads);

#endif
