/* Token sampling in one pass over the vocabulary (see sample.h for what and why).
 *
 * The vocabulary (262,144 for Gemma 3) is read once for its block maxima; every filter keeps
 * a prefix of the descending order, so the candidates come from the blocks whose maximum
 * reaches the k-th largest block maximum (a value at least k tokens reach), and only those
 * few are partitioned and sorted. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 256   /* tokens per block maximum; a multiple of 32 (one mask word) */

typedef struct {
    float v;
    int32_t id;
} cand_t;

/* The sampler's order: larger logit first, ties to the lower id. */
static inline int goes_before(cand_t a, cand_t b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

static int64_t n_blocks(int64_t n) { return (n + BLOCK - 1) / BLOCK; }

int64_t sm_sample_scratch_floats(int64_t n_vocab) {
    /* processed logits (n) | block maxima (nb) and a copy as candidates (2 nb) |
       candidates (2 n) | two float64 buffers (4 n) | alignment */
    return 7 * n_vocab + 3 * n_blocks(n_vocab) + 4;
}

/* ---- logit processors ---------------------------------------------------------------- */

/* out = logits with the tokens the mask forbids at -inf. */
static void copy_masked(float *out, const float *x, int64_t n, const uint32_t *allowed) {
    if (!allowed) {
        memcpy(out, x, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += 32) {
        int64_t cnt = n - i0 < 32 ? n - i0 : 32;
        uint32_t bits = allowed[i0 / 32];
        if (bits == 0xffffffffu) {
            memcpy(out + i0, x + i0, (size_t)cnt * sizeof(float));
        } else {
            for (int64_t j = 0; j < cnt; j++) out[i0 + j] = (bits >> j) & 1u ? x[i0 + j] : -INFINITY;
        }
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Each distinct in-vocabulary id of the window, `count` times in it: divided by the
 * repetition penalty (multiplied when <= 0), then count * frequency + presence subtracted,
 * in float64 as numpy does it (setup.py builds this file with -ffp-contract=off). */
static void apply_penalties(float *w, int64_t n, int64_t *window, int64_t n_window, const sm_sampling *p) {
    qsort(window, (size_t)n_window, sizeof(int64_t), cmp_i64);
    for (int64_t i = 0; i < n_window;) {
        int64_t id = window[i], j = i;
        while (j < n_window && window[j] == id) j++;
        if (id >= 0 && id < n) {
            double v = (double)w[id];
            double rep = p->repetition_penalty;
            if (rep != 1.0) v = v <= 0.0 ? v * rep : v / rep;
            v -= (double)(j - i) * p->frequency_penalty + p->presence_penalty;
            w[id] = (float)v;
        }
        i = j;
    }
}

/* ---- block maxima ------------------------------------------------------------------- */

/* bmax[b] = max of block b; returns 1 if x holds a NaN. */
static int block_max(float *bmax, const float *x, int64_t n) {
    int nan = 0;
    for (int64_t b = 0, i0 = 0; i0 < n; b++, i0 += BLOCK) {
        int64_t end = i0 + BLOCK < n ? i0 + BLOCK : n;
        int64_t i = i0;
        float m = -INFINITY;
#if defined(__SSE2__)
        if (end - i0 == BLOCK) {   /* eight independent maxima: max is latency-bound */
            __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0, m4 = m0, m5 = m0, m6 = m0, m7 = m0;
            __m128 nn = _mm_setzero_ps();
            for (; i < end; i += 32) {
                __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
                __m128 c = _mm_loadu_ps(x + i + 8), d = _mm_loadu_ps(x + i + 12);
                __m128 e = _mm_loadu_ps(x + i + 16), f = _mm_loadu_ps(x + i + 20);
                __m128 g = _mm_loadu_ps(x + i + 24), h = _mm_loadu_ps(x + i + 28);
                m0 = _mm_max_ps(m0, a);
                m1 = _mm_max_ps(m1, b);
                m2 = _mm_max_ps(m2, c);
                m3 = _mm_max_ps(m3, d);
                m4 = _mm_max_ps(m4, e);
                m5 = _mm_max_ps(m5, f);
                m6 = _mm_max_ps(m6, g);
                m7 = _mm_max_ps(m7, h);
                /* cmpunord(p, q): a lane is set when p or q is NaN */
                nn = _mm_or_ps(nn, _mm_or_ps(_mm_or_ps(_mm_cmpunord_ps(a, b), _mm_cmpunord_ps(c, d)),
                                             _mm_or_ps(_mm_cmpunord_ps(e, f), _mm_cmpunord_ps(g, h))));
            }
            m0 = _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3));
            m4 = _mm_max_ps(_mm_max_ps(m4, m5), _mm_max_ps(m6, m7));
            float lanes[4];
            _mm_storeu_ps(lanes, _mm_max_ps(m0, m4));
            for (int j = 0; j < 4; j++) m = lanes[j] > m ? lanes[j] : m;
            nan |= _mm_movemask_ps(nn) != 0;
        }
#endif
        for (; i < end; i++) {
            m = x[i] > m ? x[i] : m;
            nan |= x[i] != x[i];
        }
        bmax[b] = m;
    }
    return nan;
}

/* ---- selection and sorting ------------------------------------------------------------ */

static void swap_c(cand_t *a, cand_t *b) { cand_t t = *a; *a = *b; *b = t; }

/* Reorders c[0:n] so that c[0:k] are its k first in the sampler's order (0 < k < n). */
static void select_first(cand_t *c, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        cand_t pivot = c[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (goes_before(c[i], pivot)) i++;
            while (goes_before(pivot, c[j])) j--;
            if (i <= j) swap_c(&c[i++], &c[j--]);
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
}

/* Sorts c[0:n] into the sampler's order (keys are distinct: ids differ). */
static void sort_cands(cand_t *c, int64_t n) {
    while (n > 16) {
        cand_t pivot = c[n / 2];
        int64_t i = 0, j = n - 1;
        while (i <= j) {
            while (goes_before(c[i], pivot)) i++;
            while (goes_before(pivot, c[j])) j--;
            if (i <= j) swap_c(&c[i++], &c[j--]);
        }
        /* recurse into the smaller side, loop on the larger */
        if (j + 1 < n - i) {
            sort_cands(c, j + 1);
            c += i;
            n -= i;
        } else {
            sort_cands(c + i, n - i);
            n = j + 1;
        }
    }
    for (int64_t i = 1; i < n; i++) {
        cand_t t = c[i];
        int64_t j = i;
        for (; j > 0 && goes_before(t, c[j - 1]); j--) c[j] = c[j - 1];
        c[j] = t;
    }
}

/* ---- filters -------------------------------------------------------------------------- */

/* c[0:k] = the k first tokens in the sampler's order (-inf ones included, lowest ids first,
 * as a full sort would have them); returns k. */
static int64_t top_k(cand_t *c, cand_t *bsel, const float *bmax, const float *x, int64_t n, int64_t k) {
    int64_t nb = n_blocks(n);
    float thr = -INFINITY;   /* the k-th largest block maximum */
    if (k < nb) {
        for (int64_t b = 0; b < nb; b++) bsel[b] = (cand_t){bmax[b], (int32_t)b};
        select_first(bsel, nb, k);
        thr = bsel[0].v;
        for (int64_t b = 1; b < k; b++) thr = bsel[b].v < thr ? bsel[b].v : thr;
    } else if (k == nb) {
        thr = INFINITY;
        for (int64_t b = 0; b < nb; b++) thr = bmax[b] < thr ? bmax[b] : thr;
    }
    int64_t nc = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (!(bmax[b] >= thr) || bmax[b] == -INFINITY) continue;
        int64_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
        for (int64_t i = b * BLOCK; i < end; i++)
            if (x[i] >= thr && x[i] != -INFINITY) c[nc++] = (cand_t){x[i], (int32_t)i};
    }
    if (nc > k) select_first(c, nc, k);
    nc = nc < k ? nc : k;
    sort_cands(c, nc);
    for (int64_t i = 0; nc < k; i++)   /* fewer than k finite logits: the -inf ones follow */
        if (x[i] == -INFINITY) c[nc++] = (cand_t){-INFINITY, (int32_t)i};
    return k;
}

/* c[0:count] = the tokens with x >= t, ascending ids; returns count. */
static int64_t at_least(cand_t *c, const float *bmax, const float *x, int64_t n, float t) {
    int64_t nc = 0, nb = n_blocks(n);
    for (int64_t b = 0; b < nb; b++) {
        if (!(bmax[b] >= t)) continue;
        int64_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
        for (int64_t i = b * BLOCK; i < end; i++)
            if (x[i] >= t) c[nc++] = (cand_t){x[i], (int32_t)i};
    }
    return nc;
}

/* out[i] = cumulative sum of exp((c[i].v - m) / temperature) (no division when temperature
 * is 0), summed in order, as numpy.cumsum(numpy.exp(...)) does. */
static void cum_weights(double *out, double *tmp, const cand_t *c, int64_t n, double m, double temperature,
                        const sm_exp *ex) {
    for (int64_t i = 0; i < n; i++) tmp[i] = temperature > 0.0 ? ((double)c[i].v - m) / temperature : (double)c[i].v - m;
    char *args[2] = {(char *)tmp, (char *)out};
    intptr_t dims[1] = {(intptr_t)n};
    intptr_t steps[2] = {sizeof(double), sizeof(double)};
    ex->exp_f64(args, dims, steps, ex->exp_f64_data);
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += out[i];
        out[i] = s;
    }
}

/* ---- the sampler ---------------------------------------------------------------------- */

int64_t sm_sample(const float *logits, int64_t n_vocab, const uint32_t *allowed,
                  const int64_t *bias_ids, const float *bias_vals, int64_t n_bias,
                  int64_t *window, int64_t n_window, const sm_sampling *p, double u,
                  const sm_exp *ex, float *scratch, int *processed) {
    if (!logits || n_vocab <= 0 || n_vocab > INT32_MAX || !p || !ex || !ex->exp_f64 || !scratch || !processed
        || (n_bias && (!bias_ids || !bias_vals)) || (n_window && !window))
        return SM_SAMPLE_ARG;
    int64_t nb = n_blocks(n_vocab);
    float *w = scratch, *bmax = scratch + n_vocab;
    cand_t *bsel = (cand_t *)(bmax + nb), *cand = bsel + nb;
    double *cum = (double *)(((uintptr_t)(cand + n_vocab) + 7) & ~(uintptr_t)7);
    double *tmp = cum + n_vocab;

    /* logit bias (after the grammar mask), then penalties */
    const float *x = logits;
    *processed = 0;
    if (allowed || n_bias || n_window) {
        copy_masked(w, logits, n_vocab, allowed);
        for (int64_t i = 0; i < n_bias; i++) {
            if (bias_ids[i] < 0 || bias_ids[i] >= n_vocab) return SM_SAMPLE_ARG;
            w[bias_ids[i]] += bias_vals[i];
        }
        if (n_window) apply_penalties(w, n_vocab, window, n_window, p);
        x = w;
        *processed = 1;
    }

    if (block_max(bmax, x, n_vocab)) return SM_SAMPLE_NAN;
    float m = -INFINITY;
    int64_t mb = 0;
    for (int64_t b = 0; b < nb; b++)
        if (bmax[b] > m) m = bmax[b], mb = b;
    if (m == -INFINITY) return SM_SAMPLE_ALL_INF;
    if (p->temperature <= 0.0) {   /* greedy: the first maximum */
        int64_t i = mb * BLOCK;
        while (x[i] != m) i++;
        return i;
    }
    if (m == INFINITY) return SM_SAMPLE_FALLBACK;
    double md = (double)m;

    /* the candidates, by descending logit (top_k) or ascending id (min_p alone) */
    int64_t n;
    if (p->top_k > 0) {
        if (p->top_k >= n_vocab) return SM_SAMPLE_ARG;
        n = top_k(cand, bsel, bmax, x, n_vocab, p->top_k);
        if (p->top_p < 1.0 && n > 1) {   /* smallest prefix whose softmax mass reaches top_p */
            cum_weights(cum, tmp, cand, n, md, 0.0, ex);
            double target = p->top_p * cum[n - 1];
            int64_t cut = 0;
            while (cum[cut] < target) cut++;
            n = cut + 1;
        }
        if (p->has_min_p && n > 1) {      /* logit >= max + log(min_p), at least one */
            float t = (float)(md + p->log_min_p);
            int64_t keep = 0;
            while (keep < n && cand[keep].v >= t) keep++;
            n = keep > 1 ? keep : 1;
        }
    } else if (p->top_p < 1.0) {
        return SM_SAMPLE_FALLBACK;        /* needs the float32 normaliser of the whole vocabulary */
    } else if (p->has_min_p) {
        n = at_least(cand, bmax, x, n_vocab, (float)(md + p->log_min_p));
    } else {
        if (n_vocab > SM_SAMPLE_SORT_MAX) return SM_SAMPLE_FALLBACK;
        for (int64_t i = 0; i < n_vocab; i++) cand[i] = (cand_t){x[i], (int32_t)i};
        n = n_vocab;
    }

    /* temperature, softmax, one draw: the first cumulative weight above u * total */
    if (n == 1) return cand[0].id;
    if (n > SM_SAMPLE_SORT_MAX) return SM_SAMPLE_FALLBACK;
    cum_weights(cum, tmp, cand, n, md, p->temperature, ex);
    double target = u * cum[n - 1];
    int64_t j = 0;
    while (j < n - 1 && !(cum[j] > target)) j++;
    return cand[j].id;
}

void sm_sample_batch(sm_sample_row *rows, int64_t n_rows, int64_t n_vocab, const sm_exp *ex, float *scratch) {
    for (int64_t r = 0; r < n_rows; r++) {
        sm_sample_row *row = &rows[r];
        int processed = 0;
        row->token = sm_sample(row->logits, n_vocab, row->allowed, row->bias_ids, row->bias_vals, row->n_bias,
                               row->window, row->n_window, row->p, row->u, ex, scratch, &processed);
        /* the next row reuses the scratch: keep what numpy goes on from */
        if (row->token == SM_SAMPLE_FALLBACK && processed && row->processed)
            memcpy(row->processed, scratch, (size_t)n_vocab * sizeof(float));
    }
}
