/* Row and matrix operations over the current kernel table.
 *
 * Y (n_tok, n_rows) = X (n_tok, n_cols) @ W^T.  Each row of X is quantized once into W's
 * vec_dot type; output rows are split over OpenMP threads in tiles, and inside a tile every
 * token is dotted against the same few weight rows while they are still in L1, so a batch
 * of tokens streams the weights from memory once.  Where the kernel table has a multi-row
 * dot (vec_dot_n), each weight row is also decoded once per group of SM_VEC_DOT_N_MAX
 * tokens instead of once per token. */
#include <stdlib.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int n_threads_setting = 0; /* 0: all usable cores */

int sm_max_threads(void) {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

void sm_set_threads(int n) { n_threads_setting = n > 0 ? n : 0; }

int sm_get_threads(void) { return n_threads_setting > 0 ? n_threads_setting : sm_max_threads(); }

int sm_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    if (!sm_type_supported(type)) return SM_E_TYPE;
    if (sm_row_size(type, n) < 0) return SM_E_SHAPE;
    const sm_kernels *k = sm_kernels_current();
    if (!k->dequant[type]) return SM_E_TYPE;
    k->dequant[type](dst, src, n);
    return SM_OK;
}

int sm_quantize_activation(int wtype, const float *src, void *dst, int64_t n) {
    if (!sm_type_supported(wtype)) return SM_E_TYPE;
    const int at = sm_vec_dot_type(wtype);
    if (sm_row_size(at, n) < 0 || sm_row_size(wtype, n) < 0) return SM_E_SHAPE;
    if (at == SM_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = src[i];
        return SM_OK;
    }
    const sm_kernels *k = sm_kernels_current();
    if (!k->quantize[at]) return SM_E_TYPE;
    k->quantize[at](dst, src, n);
    return SM_OK;
}

void sm_workspace_free(sm_workspace *ws) {
    free(ws->buf);
    ws->buf = NULL;
    ws->cap = 0;
}

static void *workspace_reserve(sm_workspace *ws, size_t bytes) {
    if (ws->cap >= bytes) return ws->buf;
    void *p = realloc(ws->buf, bytes);
    if (!p) return NULL;
    ws->buf = p;
    ws->cap = bytes;
    return p;
}

/* Rows per tile: small enough that a tile of weights stays in L1/L2 while all tokens pass. */
#define ROW_TILE 16

int sm_matmul_q(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                const void *Xq, int64_t n_tok) {
    if (!sm_type_supported(wtype)) return SM_E_TYPE;
    const int64_t w_row = sm_row_size(wtype, n_cols);
    const int64_t x_row = sm_row_size(sm_vec_dot_type(wtype), n_cols);
    if (w_row < 0 || x_row < 0 || n_rows < 0 || n_tok < 0 || n_cols > INT32_MAX) return SM_E_SHAPE;
    const sm_kernels *k = sm_kernels_current();
    const sm_vec_dot_fn dot = k->vec_dot[wtype];
    if (!dot) return SM_E_TYPE;
    /* several tokens: each weight block decoded once for up to SM_VEC_DOT_N_MAX of them */
    const sm_vec_dot_n_fn dot_n = n_tok > 1 ? k->vec_dot_n[wtype] : NULL;

    const uint8_t *w = (const uint8_t *)W;
    const uint8_t *x = (const uint8_t *)Xq;
    const int64_t n_tiles = (n_rows + ROW_TILE - 1) / ROW_TILE;
    const int n = (int)n_cols;
    const int use_threads = n_rows * w_row >= (1 << 16) && n_tiles > 1;
    (void)use_threads;

#pragma omp parallel for schedule(static) num_threads(sm_get_threads()) if (use_threads)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        const int64_t r0 = tile * ROW_TILE;
        const int64_t r1 = r0 + ROW_TILE < n_rows ? r0 + ROW_TILE : n_rows;
        if (dot_n) {
            for (int64_t r = r0; r < r1; r++) {
                for (int64_t t0 = 0; t0 < n_tok; t0 += SM_VEC_DOT_N_MAX) {
                    const int64_t nt = n_tok - t0 < SM_VEC_DOT_N_MAX ? n_tok - t0 : SM_VEC_DOT_N_MAX;
                    if (nt == 1)
                        dot(&Y[t0 * n_rows + r], w + r * w_row, x + t0 * x_row, n);
                    else
                        dot_n(&Y[t0 * n_rows + r], (size_t)n_rows, w + r * w_row, x + t0 * x_row,
                              (size_t)x_row, n, (int)nt);
                }
            }
        } else {
            for (int64_t t = 0; t < n_tok; t++) {
                const uint8_t *xt = x + t * x_row;
                float *yt = Y + t * n_rows;
                for (int64_t r = r0; r < r1; r++) dot(&yt[r], w + r * w_row, xt, n);
            }
        }
    }
    return SM_OK;
}

int sm_matmul(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
              const float *X, int64_t n_tok, sm_workspace *ws) {
    if (!sm_type_supported(wtype)) return SM_E_TYPE;
    const int at = sm_vec_dot_type(wtype);
    const int64_t x_row = sm_row_size(at, n_cols);
    if (x_row < 0 || sm_row_size(wtype, n_cols) < 0 || n_tok < 0) return SM_E_SHAPE;
    if (at == SM_TYPE_F32) return sm_matmul_q(Y, W, wtype, n_rows, n_cols, X, n_tok);

    uint8_t *xq = workspace_reserve(ws, (size_t)(x_row * (n_tok > 0 ? n_tok : 1)));
    if (!xq) return SM_E_NOMEM;
    const sm_quantize_fn quantize = sm_kernels_current()->quantize[at];
    if (!quantize) return SM_E_TYPE;
    for (int64_t t = 0; t < n_tok; t++) quantize(xq + t * x_row, X + t * n_cols, n_cols);
    return sm_matmul_q(Y, W, wtype, n_rows, n_cols, xq, n_tok);
}
