/* The transformer step (forward.h): llama, qwen2, qwen3 and gemma3 over a batch of tokens.
 *
 * Reads top to bottom like llama2.c's run.c: the weights are pointers into the mmapped
 * GGUF (only the small 1-D vectors are copied, to f32), scratch buffers are allocated once
 * in sm_model_create, and sm_forward is one flat loop over layers, a comment per step.
 *
 * Numerics follow llama.cpp's CPU backend, so that our logits match its logits:
 * - linear layers: sm_matmul (activations quantized once per row, as ggml does);
 * - RMSNorm: sum of squares in double, then x * (1/sqrt(mean + eps)), then * w;
 * - RoPE: theta_i = pos * base^(-2i/head_dim) built by repeated multiplication, as ggml;
 * - attention: q rounded to f16 and dotted with the f16 K cache; softmax in f32 with the
 *   sum in double; the probabilities rounded to f16 before they weight the f16 V cache --
 *   ggml's non-flash attention path (its mul_mat converts both operands to f16);
 * - GELU: ggml's f16 lookup table (input rounded to f16, output rounded to f16).
 *
 * KV cache: f16, per layer, per slot.  Global layers hold n_ctx positions; sliding-window
 * layers hold a ring of sliding_window + max_batch_tokens positions, enough that a batch
 * never overwrites a position an earlier token of the same batch still attends to.
 * K and V are stored (slot, cell, kv_head, head_dim): a token's write and each position's
 * read are contiguous rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "team.h"

/* ---------------------------------------------------------------------------------- */
/* Small kernels                                                                       */
/* ---------------------------------------------------------------------------------- */

/* o (n) = x (n) / sqrt(mean(x^2) + eps) * w (n) */
static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    const float mean = (float)(ss / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) o[i] = (x[i] * scale) * w[i];
}

/* cos/sin (head_dim/2) for one position: theta_i = pos * scale * base^(-2i/head_dim) / f_i.
 * theta is built by repeated multiplication in f32, as ggml's rope cache is. */
static void rope_angles(float *cs, float *sn, int pos, int head_dim, float base, float freq_scale,
                        const float *freqs) {
    const float theta_scale = powf(base, -2.0f / (float)head_dim);
    float theta = (float)pos;
    for (int i = 0; i < head_dim / 2; i++) {
        const float t = freq_scale * (freqs ? theta / freqs[i] : theta);
        cs[i] = cosf(t);
        sn[i] = sinf(t);
        theta *= theta_scale;
    }
}

/* x (n_heads, head_dim) rotated in place: NEOX pairs (i, i + head_dim/2), else (2i, 2i+1) */
static void rope(float *x, int n_heads, int head_dim, const float *cs, const float *sn, int neox) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + h * head_dim;
        for (int i = 0; i < half; i++) {
            const int i0 = neox ? i : 2 * i;
            const int i1 = neox ? i + half : 2 * i + 1;
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * cs[i] - x1 * sn[i];
            xh[i1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }


/* g[i0, i1) = act(g) * u; GELU through ggml's f16 table (exactly what llama.cpp computes).
 * The weights streaming through the caches evict the table between layers, so each run
 * of 256 lookups first computes its indices and prefetches them (~4x faster). */
static void glu_range(float *g, const float *u, int64_t i0, int64_t i1, int act, const float *gelu_table) {
    if (act == SM_ACT_SILU) {
        for (int64_t i = i0; i < i1; i++) g[i] = silu(g[i]) * u[i];
        return;
    }
    sm_half idx[256];
    for (int64_t r0 = i0; r0 < i1; r0 += 256) {
        const int len = i1 - r0 < 256 ? (int)(i1 - r0) : 256;
        for (int i = 0; i < len; i++) {
            idx[i] = sm_float_to_half(g[r0 + i]);
            __builtin_prefetch(&gelu_table[idx[i]]);
        }
        for (int i = 0; i < len; i++) {
            const float x = g[r0 + i];
            if (x <= -10.0f) g[r0 + i] = 0.0f;
            else if (x >= 10.0f) g[r0 + i] = x * u[r0 + i];
            else g[r0 + i] = gelu_table[idx[i]] * u[r0 + i];
        }
    }
}

/* g (n) = act(g) * u (n) (one token's row: each value on its own) */
static void glu(float *g, const float *u, int64_t n, int act, const float *gelu_table) {
    glu_range(g, u, 0, n, act, gelu_table);
}

/* Attention of one work item: the query rows of nt consecutive tokens (positions p0..,
 * one slot) and nh query heads sharing one kv head, against that kv head's cache rows.
 * Row r = tt * nh + hh is token t0 + tt, head h0 + hh; it sees positions
 * [lo(pos), pos].  The item's rows are scored together against every position of the
 * union [base, p_last] (so each K and V row is read once per item, not once per row), then
 * each row's softmax runs over its own range only and the other columns become 0, which
 * the P.V kernel adds as nothing: every row gets exactly the numbers it would get alone.
 * Per row: q rounded to f16; score = kernel dot * scale; softmax in f32 with the sum in
 * double; probabilities rounded to f16; out = sum_j p_j v_j in order of position. */
static void attention_item(const sm_model *m, const kv_layer *kv, const int32_t *slots,
                           const int32_t *positions, int t0, int nt, int h0, int nh, float scale,
                           float *scratch, const sm_kernels *kern) {
    const sm_config *c = &m->cfg;
    const int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    const int kvh = h0 / (c->n_heads / c->n_kv_heads);
    const int p0 = positions[t0], p_last = positions[t0 + nt - 1];
    const int window = kv->swa ? c->sliding_window : 0;
    const int base = window && p0 - window + 1 > 0 ? p0 - window + 1 : 0;
    const int span = p_last - base + 1, R = nt * nh, cap = kv->cap;
    float *qb = scratch, *ob = qb + (int64_t)R * hd, *S = ob + (int64_t)R * hd;

    /* the query rows, rounded to f16 */
    for (int tt = 0; tt < nt; tt++)
        for (int hh = 0; hh < nh; hh++) {
            const float *src = m->q + (int64_t)(t0 + tt) * q_dim + (int64_t)(h0 + hh) * hd;
            float *dst = qb + (int64_t)(tt * nh + hh) * hd;
            for (int d = 0; d < hd; d++) dst[d] = sm_half_to_float(sm_float_to_half(src[d]));
        }
    const int64_t slot_kv = (int64_t)slots[t0] * cap * kv_dim + (int64_t)kvh * hd;
    const sm_half *kc = kv->k + slot_kv, *vc = kv->v + slot_kv;

    /* scores of all rows x positions [base, p_last], in runs of contiguous ring cells */
    for (int p = base; p <= p_last;) {
        const int cell = p % cap;
        const int len = p_last - p + 1 < cap - cell ? p_last - p + 1 : cap - cell;
        kern->attn_scores(S + (p - base), (size_t)span, qb, (size_t)hd, R, kc + (int64_t)cell * kv_dim,
                          (size_t)kv_dim, len, hd);
        p += len;
    }

    /* softmax of each row over its own range; 0 elsewhere */
    for (int r = 0; r < R; r++) {
        const int pos = p0 + r / nh;
        const int lo = window && pos - window + 1 > 0 ? pos - window + 1 : 0;
        float *row = S + (int64_t)r * span;
        float *att = row + (lo - base);
        const int n = pos - lo + 1;
        for (int j = 0; j < lo - base; j++) row[j] = 0.0f;
        for (int j = pos - base + 1; j < span; j++) row[j] = 0.0f;
        float max = -INFINITY;
        for (int j = 0; j < n; j++) {
            att[j] *= scale;
            if (att[j] > max) max = att[j];
        }
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            att[j] = expf(att[j] - max);
            sum += (double)att[j];
        }
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < n; j++) att[j] = sm_half_to_float(sm_float_to_half(att[j] * inv));
    }

    /* out rows = P . V */
    memset(ob, 0, sizeof(float) * (size_t)R * hd);
    for (int p = base; p <= p_last;) {
        const int cell = p % cap;
        const int len = p_last - p + 1 < cap - cell ? p_last - p + 1 : cap - cell;
        kern->attn_pv(ob, (size_t)hd, S + (p - base), (size_t)span, R, vc + (int64_t)cell * kv_dim,
                      (size_t)kv_dim, len, hd);
        p += len;
    }
    for (int tt = 0; tt < nt; tt++)
        for (int hh = 0; hh < nh; hh++)
            memcpy(m->att_out + (int64_t)(t0 + tt) * q_dim + (int64_t)(h0 + hh) * hd,
                   ob + (int64_t)(tt * nh + hh) * hd, sizeof(float) * (size_t)hd);
}

/* Splits a batch into attention work items (t0, nt, h0, nh): runs of up to att_qb
 * consecutive tokens of one slot with consecutive positions, times kv heads (all the query
 * heads of a kv head in one item), or times single query heads when that leaves too few
 * items for the threads.  Heaviest (latest) blocks first, for the dynamic schedule. */
static int attention_items(sm_model *m, int T, const int32_t *slots, const int32_t *positions, int n_thr) {
    const sm_config *c = &m->cfg;
    const int kv_mul = c->n_heads / c->n_kv_heads;
    int n_blocks = 0;
    for (int t = 0; t < T;) {
        int nt = 1;
        while (t + nt < T && nt < m->att_qb && slots[t + nt] == slots[t] &&
               positions[t + nt] == positions[t + nt - 1] + 1)
            nt++;
        n_blocks++;
        t += nt;
    }
    const int split = n_blocks * c->n_kv_heads < 2 * n_thr && kv_mul > 1;
    const int nh = split ? 1 : kv_mul;
    int n_items = n_blocks * (c->n_heads / nh);
    int i = n_items;
    for (int t = 0; t < T;) {
        int nt = 1;
        while (t + nt < T && nt < m->att_qb && slots[t + nt] == slots[t] &&
               positions[t + nt] == positions[t + nt - 1] + 1)
            nt++;
        for (int h0 = c->n_heads - nh; h0 >= 0; h0 -= nh) {
            int *it = m->att_items + 4 * (int64_t)(--i);
            it[0] = t; it[1] = nt; it[2] = h0; it[3] = nh;
        }
        t += nt;
    }
    return n_items;
}

/* ---------------------------------------------------------------------------------- */
/* The forward pass                                                                    */
/* ---------------------------------------------------------------------------------- */

/* Whether the sliding-window rings of slot s still hold every position a token at
 * position p attends to besides itself: [p - sliding_window + 1, p). */
static int ring_holds_window(const sm_model *m, int s, int p) {
    if (!m->swa_cap) return 1;
    const int *tag = m->ring_pos + (int64_t)s * m->swa_cap;
    for (int q = p - m->cfg.sliding_window + 1 > 0 ? p - m->cfg.sliding_window + 1 : 0; q < p; q++)
        if (tag[q % m->swa_cap] != q) return 0;
    return 1;
}

/* Checks a batch against the model and the cache (all before any work is done). */
static int check_batch(sm_model *m, int n_tokens, const int32_t *tokens, const int32_t *slots,
                       const int32_t *positions, int n_out, const int32_t *out_rows) {
    const sm_config *c = &m->cfg;
    if (n_tokens <= 0 || n_tokens > c->max_batch_tokens) return SM_E_ARG;
    if (n_out < 0 || n_out > c->max_batch_tokens || (n_out > 0 && !out_rows)) return SM_E_ARG;
    if (!tokens || !slots || !positions) return SM_E_ARG;
    for (int s = 0; s < c->n_slots; s++) m->slot_last[s] = -1;
    for (int t = 0; t < n_tokens; t++) {
        const int s = slots[t], p = positions[t];
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size) return SM_E_ARG;
        if (s < 0 || s >= c->n_slots || p < 0 || p >= c->n_ctx) return SM_E_ARG;
        if (m->slot_last[s] < 0) {
            /* a slot's first token: every earlier position must be cached and, on
             * sliding-window layers, still in the ring */
            if (p > m->slot_len[s] || !ring_holds_window(m, s, p)) return SM_E_ARG;
        } else if (p != m->slot_last[s] + 1) {
            return SM_E_ARG;
        }
        m->slot_last[s] = p;
    }
    for (int i = 0; i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n_tokens) return SM_E_ARG;
    return SM_OK;
}

/* The step as run by thread tid of the team: every thread runs this code; per-token steps
 * touch only the tokens the thread owns (sm_team_owns_token), matmuls and attention are
 * shared out.  Wherever a thread reads what others wrote, a barrier follows a shared-out
 * operation and sm_team_publish a per-token one (so that in decode the thread owning the
 * token never waits for the others between a barrier and the next shared operation). */
static int forward_team(sm_model *m, sm_team *tm, int tid, int T, const int32_t *tokens, const int32_t *slots,
                        const int32_t *positions, int n_items, int att_threads, int n_out,
                        const int32_t *out_rows, float *logits, float *hidden) {
    const sm_config *c = &m->cfg;
    const int dim = c->dim, hd = c->head_dim, half = hd / 2;
    const int n_heads = c->n_heads, n_kv_heads = c->n_kv_heads, hidden_dim = c->hidden_dim;
    const int q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
    const int gemma = c->arch == SM_ARCH_GEMMA3;
    const float eps = c->norm_eps;
    /* gemma scales q before attention (llama.cpp does), the others scale q.k */
    const float kq_scale = gemma ? 1.0f : c->attn_scale;
    const sm_kernels *kern = sm_kernels_current();
    float *x = m->x, *xb = m->xb, *xb2 = m->xb2;
    sm_workspace *ws = &m->ws;
    int rc;

    /* the tokens of this thread's per-token steps */
#define MY_TOKENS(t, N) for (int t = 0; t < (N); t++) if (sm_team_owns_token(tm, tid, t))

#define MATMUL(Y, W, W_X8, X, N)                                                           \
    do {                                                                                   \
        const sm_matmul_part part_ = {(Y), (W).data, (W).type, (W).n_rows, (W_X8)};        \
        rc = sm_matmul_team(tm, tid, &part_, 1, (W).n_cols, (X), (N), ws);                 \
        if (rc != SM_OK) return rc;                                                        \
    } while (0)

    /* matmuls over the same input as one operation when their activation types agree */
#define MATMUL_MULTI(P, NP, X)                                                             \
    do {                                                                                   \
        int same = 1;                                                                      \
        for (int p_ = 1; p_ < (NP); p_++)                                                  \
            same &= sm_vec_dot_type((P)[p_].wtype) == sm_vec_dot_type((P)[0].wtype);       \
        for (int p_ = 0; p_ < (same ? 1 : (NP)); p_++) {                                   \
            rc = sm_matmul_team(tm, tid, &(P)[p_], same ? (NP) : 1, dim, (X), T, ws);       \
            if (rc != SM_OK) return rc;                                                    \
        }                                                                                  \
    } while (0)

    /* embeddings: dequantized rows of token_embd, times embed_scale; rope angles of every
     * token, for global and sliding-window layers (the latter with their own base and
     * without linear scaling, as llama.cpp's gemma3) */
    const sm_tensor *emb = &m->w.token_embd;
    const int64_t emb_row = sm_row_size(emb->type, dim);
    MY_TOKENS(t, T) {
        float *xt = x + (int64_t)t * dim;
        sm_dequantize_row(emb->type, (const uint8_t *)emb->data + tokens[t] * emb_row, xt, dim);
        if (c->embed_scale != 1.0f)
            for (int i = 0; i < dim; i++) xt[i] *= c->embed_scale;
        rope_angles(m->rope_cos + t * half, m->rope_sin + t * half, positions[t], hd,
                    c->rope_base, c->rope_freq_scale, m->rope_freqs);
        if (m->swa_cap)
            rope_angles(m->rope_cos_swa + t * half, m->rope_sin_swa + t * half, positions[t], hd,
                        c->rope_base_swa, 1.0f, m->rope_freqs);
    }

    for (int l = 0; l < c->n_layers; l++) {
        const sm_layer_weights *lw = &m->layers[l];
        const layer_repacked *rp = &m->repacked[l];
        const layer_vectors *lv = &m->vec[l];
        const kv_layer *kv = &m->kv[l];

        /* attention rmsnorm */
        MY_TOKENS(t, T) rmsnorm(xb + (int64_t)t * dim, x + (int64_t)t * dim, lv->attn_norm, dim, eps);

        /* q, k, v projections */
        {
            const sm_matmul_part parts[3] = {{m->q, lw->wq.data, lw->wq.type, lw->wq.n_rows, rp->wq},
                                             {m->k, lw->wk.data, lw->wk.type, lw->wk.n_rows, rp->wk},
                                             {m->v, lw->wv.data, lw->wv.type, lw->wv.n_rows, rp->wv}};
            MATMUL_MULTI(parts, 3, xb);
        }

        MY_TOKENS(t, T) {
            float *qt = m->q + (int64_t)t * q_dim, *kt = m->k + (int64_t)t * kv_dim;
            float *vt = m->v + (int64_t)t * kv_dim;
            /* qwen2 biases */
            if (lv->bq) for (int i = 0; i < q_dim; i++) qt[i] += lv->bq[i];
            if (lv->bk) for (int i = 0; i < kv_dim; i++) kt[i] += lv->bk[i];
            if (lv->bv) for (int i = 0; i < kv_dim; i++) vt[i] += lv->bv[i];
            /* per-head q/k rmsnorm (qwen3, gemma3) */
            if (lv->q_norm) for (int h = 0; h < n_heads; h++) rmsnorm(qt + h * hd, qt + h * hd, lv->q_norm, hd, eps);
            if (lv->k_norm) for (int h = 0; h < n_kv_heads; h++) rmsnorm(kt + h * hd, kt + h * hd, lv->k_norm, hd, eps);
            /* rope */
            const float *cs = (kv->swa ? m->rope_cos_swa : m->rope_cos) + t * half;
            const float *sn = (kv->swa ? m->rope_sin_swa : m->rope_sin) + t * half;
            rope(qt, n_heads, hd, cs, sn, c->rope_neox);
            rope(kt, n_kv_heads, hd, cs, sn, c->rope_neox);
            /* gemma: q scaled by attn_scale (query_pre_attn_scalar) */
            if (gemma) for (int i = 0; i < q_dim; i++) qt[i] *= c->attn_scale;
            /* k, v into the f16 cache at this position's cell */
            const int64_t cell = (int64_t)slots[t] * kv->cap + positions[t] % kv->cap;
            for (int i = 0; i < kv_dim; i++) {
                kv->k[cell * kv_dim + i] = sm_float_to_half(kt[i]);
                kv->v[cell * kv_dim + i] = sm_float_to_half(vt[i]);
            }
        }
        sm_team_publish(tm, tid, T); /* attention reads every token's q and cache rows */

        /* attention, one work item (token block x heads of one kv head) per claim */
        if (tid < att_threads)
            for (int i; (i = (int)sm_team_claim(tm, 1, n_items)) < n_items;) {
                const int *it = m->att_items + 4 * (int64_t)i;
                attention_item(m, kv, slots, positions, it[0], it[1], it[2], it[3], kq_scale,
                               m->att + (int64_t)tid * m->att_stride, kern);
            }
        sm_team_barrier(tm); /* the output projection reads every item's att_out rows */

        /* output projection, gemma's post-attention norm, residual */
        MATMUL(xb2, lw->wo, rp->wo, m->att_out, T);
        MY_TOKENS(t, T) {
            float *bt = xb2 + (int64_t)t * dim, *xt = x + (int64_t)t * dim;
            if (lv->post_attn_norm) rmsnorm(bt, bt, lv->post_attn_norm, dim, eps);
            for (int i = 0; i < dim; i++) xt[i] += bt[i];
            /* ffn rmsnorm */
            rmsnorm(xb + (int64_t)t * dim, xt, lv->ffn_norm, dim, eps);
        }

        /* gated ffn: w_down (act(w_gate x) * w_up x) */
        {
            const sm_matmul_part parts[2] = {{m->hb, lw->w_gate.data, lw->w_gate.type, lw->w_gate.n_rows, rp->w_gate},
                                             {m->hb2, lw->w_up.data, lw->w_up.type, lw->w_up.n_rows, rp->w_up}};
            MATMUL_MULTI(parts, 2, xb);
        }
        MY_TOKENS(t, T) {
            const int64_t row = (int64_t)t * hidden_dim;
            glu(m->hb + row, m->hb2 + row, hidden_dim, c->act, m->gelu_table);
        }
        MATMUL(xb2, lw->w_down, rp->w_down, m->hb, T);

        /* gemma's post-ffn norm, residual */
        MY_TOKENS(t, T) {
            float *bt = xb2 + (int64_t)t * dim, *xt = x + (int64_t)t * dim;
            if (lv->post_ffn_norm) rmsnorm(bt, bt, lv->post_ffn_norm, dim, eps);
            for (int i = 0; i < dim; i++) xt[i] += bt[i];
        }
    }

    /* final rmsnorm: every row into hidden if asked, the out rows into xb */
    if (hidden) MY_TOKENS(t, T) rmsnorm(hidden + (int64_t)t * dim, x + (int64_t)t * dim, m->output_norm, dim, eps);
    sm_team_barrier(tm); /* an out row may be another thread's token */
    MY_TOKENS(i, n_out) rmsnorm(xb + (int64_t)i * dim, x + (int64_t)out_rows[i] * dim, m->output_norm, dim, eps);

    /* logits of the out rows (tied: token_embd is the output matrix) */
    const sm_tensor *head = m->w.output.data ? &m->w.output : &m->w.token_embd;
    if (n_out > 0) MATMUL(logits, *head, NULL, xb, n_out);
#undef MY_TOKENS
#undef MATMUL
#undef MATMUL_MULTI
    return SM_OK;
}

int sm_forward(sm_model *m, int n_tokens, const int32_t *tokens, const int32_t *slots,
               const int32_t *positions, int n_out, const int32_t *out_rows, float *logits,
               float *hidden) {
    if (!m) return SM_E_ARG;
    int rc = check_batch(m, n_tokens, tokens, slots, positions, n_out, out_rows);
    if (rc != SM_OK) return rc;
    if (n_out > 0 && !logits) return SM_E_ARG;

    /* attention work items (the same for every layer); threads with scratch only */
    const int n_thr = sm_get_threads();
    const int att_threads = n_thr < m->n_att_threads ? n_thr : m->n_att_threads;
    const int n_items = attention_items(m, n_tokens, slots, positions, att_threads);

    /* one fork of the threads for the whole step */
    sm_team tm;
    sm_team_init(&tm, n_thr);
#pragma omp parallel num_threads(n_thr) if (n_thr > 1)
    {
        sm_team_enter(&tm, sm_team_region_size());
        const int tid = sm_team_region_tid();
        const int r = forward_team(m, &tm, tid, n_tokens, tokens, slots, positions, n_items, att_threads, n_out,
                                   out_rows, logits, hidden);
        if (tid == 0) rc = r;
        sm_team_leave(&tm);
    }
    sm_team_learn(&tm);
    if (rc != SM_OK) return rc;

    /* the slots now hold these positions */
    for (int t = 0; t < n_tokens; t++) {
        m->slot_len[slots[t]] = positions[t] + 1;
        if (m->swa_cap)
            m->ring_pos[(int64_t)slots[t] * m->swa_cap + positions[t] % m->swa_cap] = positions[t];
    }
    return SM_OK;
}

int sm_model_copy_slot(sm_model *m, int src, int dst, int n_positions) {
    if (!m) return SM_E_ARG;
    const sm_config *c = &m->cfg;
    if (src < 0 || src >= c->n_slots || dst < 0 || dst >= c->n_slots) return SM_E_ARG;
    if (n_positions < 0 || n_positions > m->slot_len[src]) return SM_E_ARG;
    /* a sliding-window ring must still hold the window before n_positions */
    if (!ring_holds_window(m, src, n_positions)) return SM_E_ARG;
    if (src == dst) {
        m->slot_len[dst] = n_positions;
        return SM_OK;
    }
    const int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        const kv_layer *kv = &m->kv[l];
        const int n = n_positions < kv->cap ? n_positions : kv->cap;
        /* the cells of positions [n_positions - n, n_positions) */
        for (int p = n_positions - n; p < n_positions; p++) {
            const int64_t cell = p % kv->cap, bytes = kv_dim * (int64_t)sizeof(sm_half);
            memcpy(kv->k + ((int64_t)dst * kv->cap + cell) * kv_dim,
                   kv->k + ((int64_t)src * kv->cap + cell) * kv_dim, bytes);
            memcpy(kv->v + ((int64_t)dst * kv->cap + cell) * kv_dim,
                   kv->v + ((int64_t)src * kv->cap + cell) * kv_dim, bytes);
        }
    }
    if (m->swa_cap) {
        const int *ts = m->ring_pos + (int64_t)src * m->swa_cap;
        int *td = m->ring_pos + (int64_t)dst * m->swa_cap;
        for (int i = 0; i < m->swa_cap; i++)
            td[i] = ts[i] < n_positions && ts[i] >= n_positions - m->swa_cap ? ts[i] : -1;
    }
    m->slot_len[dst] = n_positions;
    return SM_OK;
}
