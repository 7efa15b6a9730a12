/* The model of forward.h: checking a config and its weights, then allocating once what
 * every step uses (the f32 copies of the 1-D weights, repacked copies of Q4_K matrices,
 * the KV cache, scratch buffers, the GELU table).  The step itself is forward.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "repack.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

/* GELU, tanh approximation: the values of ggml's f16 table (built at creation). */
static float gelu_tanh(float x) {
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * (1.0f + 0.044715f * x * x)));
}

/* ---------------------------------------------------------------------------------- */
/* Creation                                                                            */
/* ---------------------------------------------------------------------------------- */

static int is_float_type(int t) { return t == SM_TYPE_F32 || t == SM_TYPE_F16 || t == SM_TYPE_BF16; }

/* A weight matrix (rows, cols) the matmul can read. */
static int check_matrix(const sm_tensor *t, int64_t rows, int64_t cols) {
    if (!t->data) return SM_E_ARG;
    if (!sm_type_supported(t->type)) return SM_E_TYPE;
    if (t->n_rows != rows || t->n_cols != cols || sm_row_size(t->type, cols) < 0) return SM_E_SHAPE;
    return SM_OK;
}

/* A 1-D float vector of n values (absent allowed if optional). */
static int check_vector(const sm_tensor *t, int64_t n, int optional) {
    if (!t->data) return optional ? SM_OK : SM_E_ARG;
    if (!is_float_type(t->type)) return SM_E_TYPE;
    if (t->n_rows * t->n_cols != n) return SM_E_SHAPE;
    return SM_OK;
}

/* Copies a 1-D vector into the arena as f32; returns NULL if absent. */
static float *take_vector(float **arena, const sm_tensor *t, int64_t n) {
    if (!t->data) return NULL;
    float *dst = *arena;
    sm_dequantize_row(t->type, t->data, dst, n);
    *arena += n;
    return dst;
}

static int check_config(const sm_config *c) {
    if (c->arch < SM_ARCH_LLAMA || c->arch > SM_ARCH_GEMMA3) return SM_E_ARG;
    if (c->act != SM_ACT_SILU && c->act != SM_ACT_GELU_TANH) return SM_E_ARG;
    if (c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->hidden_dim <= 0 || c->vocab_size <= 0)
        return SM_E_SHAPE;
    if (c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0) return SM_E_SHAPE;
    if (c->n_ctx <= 0 || c->n_slots <= 0 || c->max_batch_tokens <= 0 || c->sliding_window < 0)
        return SM_E_ARG;
    return SM_OK;
}

static int check_weights(const sm_config *c, const sm_weights *w) {
    const int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    const int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    int rc;
#define CHECK(expr) do { if ((rc = (expr)) != SM_OK) return rc; } while (0)
    CHECK(check_matrix(&w->token_embd, c->vocab_size, c->dim));
    CHECK(check_vector(&w->output_norm, c->dim, 0));
    if (w->output.data) CHECK(check_matrix(&w->output, c->vocab_size, c->dim));
    CHECK(check_vector(&w->rope_freqs, c->head_dim / 2, 1));
    if (!w->layers) return SM_E_ARG;
    for (int l = 0; l < c->n_layers; l++) {
        const sm_layer_weights *L = &w->layers[l];
        const int gemma = c->arch == SM_ARCH_GEMMA3;
        const int qk_norm = c->arch == SM_ARCH_QWEN3 || gemma;
        CHECK(check_vector(&L->attn_norm, c->dim, 0));
        CHECK(check_matrix(&L->wq, q_dim, c->dim));
        CHECK(check_matrix(&L->wk, kv_dim, c->dim));
        CHECK(check_matrix(&L->wv, kv_dim, c->dim));
        CHECK(check_matrix(&L->wo, c->dim, q_dim));
        CHECK(check_vector(&L->bq, q_dim, 1));
        CHECK(check_vector(&L->bk, kv_dim, 1));
        CHECK(check_vector(&L->bv, kv_dim, 1));
        CHECK(check_vector(&L->q_norm, c->head_dim, !qk_norm));
        CHECK(check_vector(&L->k_norm, c->head_dim, !qk_norm));
        CHECK(check_vector(&L->post_attn_norm, c->dim, !gemma));
        CHECK(check_vector(&L->ffn_norm, c->dim, 0));
        CHECK(check_matrix(&L->w_gate, c->hidden_dim, c->dim));
        CHECK(check_matrix(&L->w_up, c->hidden_dim, c->dim));
        CHECK(check_matrix(&L->w_down, c->dim, c->hidden_dim));
        CHECK(check_vector(&L->post_ffn_norm, c->dim, !gemma));
    }
#undef CHECK
    return SM_OK;
}

/* ---- load-time repacking (repack.h) ---- */

static int repack_setting = SM_REPACK_MEASURED;

void sm_set_repack(int on) { repack_setting = on < 0 ? SM_REPACK_MEASURED : on != 0; }

int sm_get_repack(void) {
    /* measured faster only on an Intel Xeon with AMX (scripts/bench_repack_engine.py) */
    return repack_setting == SM_REPACK_MEASURED ? sm_cpu_class() == SM_CPU_INTEL_AMX : repack_setting;
}

/* *copy = t repacked, if t is Q4_K: SM_OK (also for other types), or SM_E_NOMEM. */
static int repack_matrix(const sm_tensor *t, void **copy, int *count) {
    if (t->type != SM_TYPE_Q4_K) return SM_OK;
    const int64_t bytes = sm_repack_q4_K_x8_size(t->n_rows, t->n_cols);
    if (bytes < 0) return SM_E_SHAPE; /* not reached: check_weights passed */
    *copy = aligned_alloc(64, ((size_t)bytes + 63) & ~(size_t)63);
    if (!*copy) return SM_E_NOMEM;
    sm_repack_q4_K_x8(*copy, t->data, t->n_rows, t->n_cols);
    (*count)++;
    return SM_OK;
}

/* Repacked copies of the layers' Q4_K matrices where the current table takes Q4_K's dot
 * kernels from the avx2 unit: the kernels whose floats the repacked matmul reproduces. */
static int repack_layers(sm_model *m) {
    if (!sm_get_repack() || sm_entry_unit(SM_ENTRY_DOT, SM_TYPE_Q4_K) != SM_ISA_AVX2) return SM_OK;
    int rc;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const sm_layer_weights *lw = &m->layers[l];
        layer_repacked *r = &m->repacked[l];
#define REPACK(f) do { if ((rc = repack_matrix(&lw->f, &r->f, &m->n_repacked)) != SM_OK) return rc; } while (0)
        REPACK(wq); REPACK(wk); REPACK(wv); REPACK(wo);
        REPACK(w_gate); REPACK(w_up); REPACK(w_down);
#undef REPACK
    }
    return SM_OK;
}

int sm_model_repacked(const sm_model *m) { return m->n_repacked; }

/* The whole pages inside [p, p + n): pages shared with a neighbouring tensor stay. */
static void release_pages(const void *p, int64_t n) {
#if defined(__linux__)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + (uintptr_t)n) & ~(page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* best effort */
#else
    (void)p, (void)n;
#endif
}

void sm_model_release_originals(sm_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const sm_layer_weights *lw = &m->layers[l];
        const layer_repacked *r = &m->repacked[l];
#define RELEASE(f) \
    do { if (r->f) release_pages(lw->f.data, lw->f.n_rows * sm_row_size(lw->f.type, lw->f.n_cols)); } while (0)
        RELEASE(wq); RELEASE(wk); RELEASE(wv); RELEASE(wo);
        RELEASE(w_gate); RELEASE(w_up); RELEASE(w_down);
#undef RELEASE
    }
}

/* Bytes of quantized activations the largest matmul of a batch needs. */
static size_t workspace_bytes(const sm_config *c, const sm_weights *w) {
    size_t most = 0;
#define NEED(t) do {                                                                     \
        const size_t b = sm_matmul_workspace_bytes((t).type, (t).n_cols, c->max_batch_tokens); \
        if (b > most) most = b;                                                            \
    } while (0)
    NEED(w->output.data ? w->output : w->token_embd);
    for (int l = 0; l < c->n_layers; l++) {
        const sm_layer_weights *L = &w->layers[l];
        NEED(L->wq); NEED(L->wk); NEED(L->wv); NEED(L->wo);
        NEED(L->w_gate); NEED(L->w_up); NEED(L->w_down);
    }
#undef NEED
    return most;
}

void sm_model_free(sm_model *m) {
    if (!m) return;
    if (m->kv)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            free(m->kv[l].k);
            free(m->kv[l].v);
        }
    free(m->kv);
    if (m->repacked)
        for (int l = 0; l < m->cfg.n_layers; l++) {
            layer_repacked *r = &m->repacked[l];
            free(r->wq); free(r->wk); free(r->wv); free(r->wo);
            free(r->w_gate); free(r->w_up); free(r->w_down);
        }
    free(m->repacked);
    free(m->layers);
    free(m->vec);
    free(m->vec_arena);
    free(m->layer_swa);
    free(m->slot_len);
    free(m->slot_last);
    free(m->ring_pos);
    free(m->x); free(m->xb); free(m->xb2);
    free(m->q); free(m->k); free(m->v); free(m->att_out);
    free(m->hb); free(m->hb2);
    free(m->rope_cos); free(m->rope_sin); free(m->rope_cos_swa); free(m->rope_sin_swa);
    free(m->att);
    free(m->att_items);
    free(m->gelu_table);
    sm_workspace_free(&m->ws);
    free(m);
}

sm_model *sm_model_create(const sm_config *cfg, const sm_weights *w, int *err) {
    int rc = check_config(cfg);
    if (rc == SM_OK) rc = check_weights(cfg, w);
    if (rc != SM_OK) {
        if (err) *err = rc;
        return NULL;
    }
    sm_model *m = calloc(1, sizeof *m);
    if (!m) goto nomem;
    const sm_config *c = &m->cfg;
    m->cfg = *cfg;
    m->w = *w;
    const int L = c->n_layers, B = c->max_batch_tokens, dim = c->dim, hd = c->head_dim;
    const int64_t q_dim = (int64_t)c->n_heads * hd, kv_dim = (int64_t)c->n_kv_heads * hd;

    /* weights: the layer table, and every 1-D vector as f32 */
    m->layers = malloc(sizeof(sm_layer_weights) * L);
    m->vec = calloc(L, sizeof(layer_vectors));
    const int64_t per_layer = 4 * (int64_t)dim + q_dim + 2 * kv_dim + 2 * hd;
    m->vec_arena = malloc(sizeof(float) * (size_t)(per_layer * L + dim + hd / 2));
    m->layer_swa = calloc(L, 1);
    m->repacked = calloc(L, sizeof(layer_repacked));
    if (!m->layers || !m->vec || !m->vec_arena || !m->layer_swa || !m->repacked) goto nomem;
    memcpy(m->layers, w->layers, sizeof(sm_layer_weights) * L);
    m->w.layers = m->layers;
    float *arena = m->vec_arena;
    m->output_norm = take_vector(&arena, &w->output_norm, dim);
    m->rope_freqs = take_vector(&arena, &w->rope_freqs, hd / 2);
    for (int l = 0; l < L; l++) {
        const sm_layer_weights *lw = &w->layers[l];
        layer_vectors *v = &m->vec[l];
        v->attn_norm = take_vector(&arena, &lw->attn_norm, dim);
        v->bq = take_vector(&arena, &lw->bq, q_dim);
        v->bk = take_vector(&arena, &lw->bk, kv_dim);
        v->bv = take_vector(&arena, &lw->bv, kv_dim);
        v->q_norm = take_vector(&arena, &lw->q_norm, hd);
        v->k_norm = take_vector(&arena, &lw->k_norm, hd);
        v->post_attn_norm = take_vector(&arena, &lw->post_attn_norm, dim);
        v->ffn_norm = take_vector(&arena, &lw->ffn_norm, dim);
        v->post_ffn_norm = take_vector(&arena, &lw->post_ffn_norm, dim);
        m->layer_swa[l] = (c->sliding_window > 0 && cfg->layer_swa) ? (cfg->layer_swa[l] != 0) : 0;
    }
    m->cfg.layer_swa = m->layer_swa;
    if (repack_layers(m) != SM_OK) goto nomem;

    /* KV cache: f16, zeroed (attention never reads a cell before it is written) */
    m->swa_cap = c->sliding_window > 0 ? c->sliding_window + B : 0;
    if (m->swa_cap > c->n_ctx) m->swa_cap = c->n_ctx;
    m->kv = calloc(L, sizeof(kv_layer));
    if (!m->kv) goto nomem;
    int max_cap = 1;
    for (int l = 0; l < L; l++) {
        kv_layer *kv = &m->kv[l];
        kv->swa = m->layer_swa[l];
        kv->cap = kv->swa ? m->swa_cap : c->n_ctx;
        if (kv->cap > max_cap) max_cap = kv->cap;
        const size_t n = (size_t)c->n_slots * kv->cap * kv_dim;
        kv->k = calloc(n, sizeof(sm_half));
        kv->v = calloc(n, sizeof(sm_half));
        if (!kv->k || !kv->v) goto nomem;
    }
    m->slot_len = calloc(c->n_slots, sizeof(int));
    m->slot_last = calloc(c->n_slots, sizeof(int));
    if (!m->slot_len || !m->slot_last) goto nomem;
    if (m->swa_cap) {
        m->ring_pos = malloc(sizeof(int) * (size_t)c->n_slots * m->swa_cap);
        if (!m->ring_pos) goto nomem;
        for (int64_t i = 0; i < (int64_t)c->n_slots * m->swa_cap; i++) m->ring_pos[i] = -1;
    }

    /* scratch */
#define ALLOC(p, n) do { if (!((p) = malloc(sizeof(*(p)) * (size_t)(n)))) goto nomem; } while (0)
    ALLOC(m->x, (int64_t)B * dim);
    ALLOC(m->xb, (int64_t)B * dim);
    ALLOC(m->xb2, (int64_t)B * dim);
    ALLOC(m->q, B * q_dim);
    ALLOC(m->k, B * kv_dim);
    ALLOC(m->v, B * kv_dim);
    ALLOC(m->att_out, B * q_dim);
    ALLOC(m->hb, (int64_t)B * c->hidden_dim);
    ALLOC(m->hb2, (int64_t)B * c->hidden_dim);
    ALLOC(m->rope_cos, (int64_t)B * hd / 2);
    ALLOC(m->rope_sin, (int64_t)B * hd / 2);
    ALLOC(m->rope_cos_swa, (int64_t)B * hd / 2);
    ALLOC(m->rope_sin_swa, (int64_t)B * hd / 2);
    m->n_att_threads = sm_max_threads() > sm_get_threads() ? sm_max_threads() : sm_get_threads();
    /* attention blocks of up to 16 tokens, fewer if the per-thread scores would pass 8 MiB */
    const int kv_mul = c->n_heads / c->n_kv_heads;
    m->att_qb = B < 16 ? B : 16;
    while (m->att_qb > 1 && (int64_t)m->att_qb * kv_mul * (max_cap + m->att_qb) * 4 > (8 << 20))
        m->att_qb /= 2;
    const int64_t att_rows = (int64_t)m->att_qb * kv_mul;
    m->att_stride = att_rows * (2 * hd + max_cap + m->att_qb);
    ALLOC(m->att, (int64_t)m->n_att_threads * m->att_stride);
    ALLOC(m->att_items, (int64_t)4 * B * c->n_heads);
    if (c->act == SM_ACT_GELU_TANH) {
        /* ggml's table: f16 in -> gelu in f32 -> f16 out */
        ALLOC(m->gelu_table, 65536);
        for (int i = 0; i < 65536; i++)
            m->gelu_table[i] = sm_half_to_float(sm_float_to_half(gelu_tanh(sm_half_to_float((sm_half)i))));
    }
#undef ALLOC
    /* reserve the matmul workspace now, so sm_forward never allocates */
    const size_t ws_bytes = workspace_bytes(c, &m->w);
    if (ws_bytes) {
        m->ws.buf = malloc(ws_bytes);
        if (!m->ws.buf) goto nomem;
        m->ws.cap = ws_bytes;
    }
    if (err) *err = SM_OK;
    return m;

nomem:
    sm_model_free(m);
    if (err) *err = SM_E_NOMEM;
    return NULL;
}

int64_t sm_model_kv_bytes(const sm_model *m) {
    int64_t total = 0;
    const int64_t kv_dim = (int64_t)m->cfg.n_kv_heads * m->cfg.head_dim;
    for (int l = 0; l < m->cfg.n_layers; l++)
        total += 2 * (int64_t)m->cfg.n_slots * m->kv[l].cap * kv_dim * (int64_t)sizeof(sm_half);
    return total;
}
