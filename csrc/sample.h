/* Token sampling over one row of logits (sm_sample), or over every sequence of a step in one
 * call (sm_sample_batch): logit bias, penalties, the grammar mask, top-k, top-p, min-p,
 * temperature and the draw, in the order and the arithmetic of smallmind/engine/sampling.py
 * (see its module docstring for the chain).
 *
 * The results are bit-identical to the numpy sampler it replaces: float32 where it works in
 * float32, float64 where it works in float64, cumulative sums in the same order, and numpy's
 * own float64 exp (its loop is passed in: numpy's exp is its own SIMD kernel on CPUs with
 * AVX-512F and libm's elsewhere, and the two differ in the last bit of ~5% of arguments). */
#ifndef SM_SAMPLE_H
#define SM_SAMPLE_H

#include <stdint.h>

/* numpy's ufunc inner loop: args {in, out}, dims {n}, steps {in stride, out stride}. */
typedef void (*sm_exp_loop)(char **args, const intptr_t *dims, const intptr_t *steps, void *data);

typedef struct {
    sm_exp_loop exp_f64;   /* numpy.exp's float64 -> float64 loop */
    void *exp_f64_data;
} sm_exp;

typedef struct {
    double temperature;          /* <= 0: greedy (argmax, ties to the lowest id, no draw) */
    int64_t top_k;               /* 0: off; else 0 < top_k < n_vocab */
    double top_p;                /* >= 1: off */
    int has_min_p;
    double log_min_p;            /* log(min_p) when has_min_p */
    double repetition_penalty;   /* 1: off */
    double frequency_penalty;
    double presence_penalty;
} sm_sampling;

/* What sm_sample returns when it does not return a token id. */
enum {
    SM_SAMPLE_NAN = -1,       /* the logits hold a NaN */
    SM_SAMPLE_ALL_INF = -2,   /* every logit is -inf */
    SM_SAMPLE_FALLBACK = -3,  /* a path done in float32 by numpy (top-p without top-k, a draw
                                 over more than SM_SAMPLE_SORT_MAX tokens, a +inf logit): the
                                 processed logits are left for the caller */
    SM_SAMPLE_ARG = -4        /* bad arguments */
};

/* Largest candidate set drawn from in float64 (sampling.py's _SORT_MAX). */
#define SM_SAMPLE_SORT_MAX 4096

/* floats of scratch sm_sample needs for a vocabulary of n_vocab tokens. */
int64_t sm_sample_scratch_floats(int64_t n_vocab);

/* Sample one token from logits[n_vocab] (not modified).
 * allowed:  llguidance's bit mask (bit i of word i/32: token i allowed) or NULL.
 * bias_ids/bias_vals: n_bias distinct ids and their float32 additive bias.
 * window:   the penalty window's token ids, n_window of them (sorted in place; ids outside
 *           the vocabulary are ignored); n_window 0 when the penalties are off.
 * u:        the uniform draw in [0, 1) (unused when greedy).
 * scratch:  sm_sample_scratch_floats(n_vocab) floats; when bias, penalties or mask apply,
 *           scratch[0:n_vocab] holds the processed logits afterwards and *processed is 1.
 * Returns the token id, or one of the SM_SAMPLE_* codes. */
int64_t sm_sample(const float *logits, int64_t n_vocab, const uint32_t *allowed,
                  const int64_t *bias_ids, const float *bias_vals, int64_t n_bias,
                  int64_t *window, int64_t n_window, const sm_sampling *p, double u,
                  const sm_exp *ex, float *scratch, int *processed);

/* One sequence's row of a batch (sm_sample_batch): sm_sample's arguments, and its result. */
typedef struct {
    const float *logits;         /* n_vocab logits (not modified) */
    const uint32_t *allowed;     /* the grammar's bit mask or NULL */
    const int64_t *bias_ids;
    const float *bias_vals;
    int64_t n_bias;
    int64_t *window;             /* sorted in place */
    int64_t n_window;
    const sm_sampling *p;
    double u;
    float *processed;            /* n_vocab floats or NULL: on SM_SAMPLE_FALLBACK after a mask,
                                    a bias or penalties, the processed logits are copied here */
    int64_t token;               /* out: the token id or an SM_SAMPLE_* code */
} sm_sample_row;

/* Every row of the batch in turn, each exactly as sm_sample alone would sample it (a row's
 * result depends on that row only), in one scratch of sm_sample_scratch_floats(n_vocab). */
void sm_sample_batch(sm_sample_row *rows, int64_t n_rows, int64_t n_vocab, const sm_exp *ex, float *scratch);

#endif
