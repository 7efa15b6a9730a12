/* Row and matrix operations over the current kernel table.
 *
 * Y (n_tok, n_rows) = X (n_tok, n_cols) @ W^T.  Each row of X is quantized once into W's
 * vec_dot type; output rows are split over a team's threads (team.h) in tiles, and inside
 * a tile every token is dotted against the same few weight rows while they are still in
 * L1, so a batch of tokens streams the weights from memory once.  Where the kernel table
 * has a tile kernel (vec_dot_tile), a row tile meets each group of up to SM_VEC_DOT_N_MAX
 * tokens in one call, which decodes every weight block once per group and sums several
 * weight rows side by side (also for a single token); else, where it has a multi-row dot
 * (vec_dot_n), each weight row is decoded once per group of tokens instead of once per
 * token.  Both read Q8_0 activations with the groups' block scales (as floats) and quant
 * sums laid out once per call in a panel (fill_scale_panel).  A Q4_K part with a repacked
 * copy (repack.h) is read through it, for 2 tokens or more, while the table's Q4_K dot
 * kernels are the avx2 unit's, the kernels that copy's matmul matches bit for bit; after
 * a switch to another table the original rows are read.  Every path gives the floats of vec_dot. */
#include <stdlib.h>

#include "kernels.h"
#include "repack.h"
#include "team.h"

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
static_assert(ROW_TILE % SM_REPACK_ROWS == 0, "a row tile is whole groups of a repacked matrix");

/* Tokens from which a matmul reads a repacked copy.  Batch-1 decode measured 0.93x through
 * it in two runs of scripts/bench_repack_engine.py (1 thread, busy machine), but 0.94-0.95x
 * in a third where both settings read the original rows, so maybe order bias: until a
 * clean measurement, a lone token keeps today's path; prefill measured 1.02-1.13x. */
#define X8_MIN_TOKENS 2

/* The kernels a matmul of n_tok tokens uses for one weight type: the tile kernel where
 * the table has one, else the multi-row dot for several tokens, else vec_dot alone.
 * Unused entries are NULL; dot is never NULL for a supported type. */
typedef struct {
    sm_vec_dot_fn dot;
    sm_vec_dot_n_fn dot_n;
    sm_vec_dot_tile_fn tile;
} row_kernels;

static row_kernels pick_kernels(const sm_kernels *k, int wtype, int64_t n_tok) {
    row_kernels rk = {k->vec_dot[wtype], NULL, k->vec_dot_tile[wtype]};
    if (!rk.tile && n_tok > 1) rk.dot_n = k->vec_dot_n[wtype];
    return rk;
}

/* Float copies of the Q8_0 activation block scales and the blocks' quant sums, one panel
 * per group of SM_VEC_DOT_N_MAX tokens in the layout vec_dot_n and vec_dot_tile read
 * (kernels.h): formed here once per matmul instead of once per weight row in the kernels. */
static int needs_scale_panels(const row_kernels *rk, int act_type) {
    return act_type == SM_TYPE_Q8_0 && (rk->tile || rk->dot_n);
}

/* 4-byte entries per panel: a float scale and an int32 quant sum per block and token */
static int64_t panel_entries(int64_t n_cols) { return 2 * (n_cols / QK8_0) * SM_VEC_DOT_N_MAX; }

static int64_t panels_entries(int64_t n_cols, int64_t n_tok) {
    return (n_tok + SM_VEC_DOT_N_MAX - 1) / SM_VEC_DOT_N_MAX * panel_entries(n_cols);
}

/* Panel of the tokens [t0, t0 + SM_VEC_DOT_N_MAX) of xq (rows of x_row bytes); the pad
 * entries of a short group are zero. */
static void fill_scale_panel(float *panels, const uint8_t *xq, int64_t x_row, int64_t n_cols, int64_t n_tok,
                             int64_t t0) {
    const int nt = (int)(n_tok - t0 < SM_VEC_DOT_N_MAX ? n_tok - t0 : SM_VEC_DOT_N_MAX);
    const int pad = sm_vec_dot_n_pad(nt);
    const int64_t nb = n_cols / QK8_0;
    float *scales = panels + t0 / SM_VEC_DOT_N_MAX * panel_entries(n_cols);
    int32_t *sums = (int32_t *)(scales + nb * pad);
    for (int j = 0; j < pad; j++)
        for (int64_t b = 0; b < nb; b++) {
            scales[b * pad + j] = 0.0f;
            sums[b * pad + j] = 0;
        }
    for (int j = 0; j < nt; j++) {
        const block_q8_0 *y = (const block_q8_0 *)(xq + (t0 + j) * x_row);
        for (int64_t b = 0; b < nb; b++) {
            int32_t sum = 0;
            for (int k = 0; k < QK8_0; k++) sum += y[b].qs[k];
            scales[b * pad + j] = sm_half_to_float(y[b].d);
            sums[b * pad + j] = sum;
        }
    }
}

/* Rows [r0, r1) of Y = X @ W^T (X already in W's vec_dot type; panels as above, or NULL
 * when the kernels do not read them). */
static inline void matmul_tile(float *Y, const uint8_t *w, int64_t w_row, int64_t n_rows, const uint8_t *x,
                               int64_t x_row, const float *panels, int n, int64_t n_tok, int64_t r0, int64_t r1,
                               const row_kernels *rk) {
    if (rk->tile || rk->dot_n) {
        /* token groups outer, rows inner: the tile's weight rows and one group of
         * activation rows both stay in L1 */
        for (int64_t t0 = 0; t0 < n_tok; t0 += SM_VEC_DOT_N_MAX) {
            const int64_t nt = n_tok - t0 < SM_VEC_DOT_N_MAX ? n_tok - t0 : SM_VEC_DOT_N_MAX;
            const uint8_t *xt = x + t0 * x_row;
            const float *a_d = panels ? panels + t0 / SM_VEC_DOT_N_MAX * panel_entries(n) : NULL;
            float *yt = Y + t0 * n_rows;
            if (rk->tile) {
                rk->tile(&yt[r0], (size_t)n_rows, w + r0 * w_row, (size_t)w_row, (int)(r1 - r0), xt, (size_t)x_row,
                         a_d, n, (int)nt);
                continue;
            }
            for (int64_t r = r0; r < r1; r++) {
                if (nt == 1)
                    rk->dot(&yt[r], w + r * w_row, xt, n);
                else
                    rk->dot_n(&yt[r], (size_t)n_rows, w + r * w_row, xt, (size_t)x_row, a_d, n, (int)nt);
            }
        }
    } else {
        for (int64_t t = 0; t < n_tok; t++) {
            const uint8_t *xt = x + t * x_row;
            float *yt = Y + t * n_rows;
            for (int64_t r = r0; r < r1; r++) rk->dot(&yt[r], w + r * w_row, xt, n);
        }
    }
}

/* Weight bytes a chunk of tiles reads at most: ~10-30 us of memory traffic, so the threads
 * of a large matmul (the output head: ~100 MB) finish within that of each other and the
 * barrier after it passes while they spin, instead of sleeping. */
#define CHUNK_MAX_BYTES (256 << 10)

/* Tiles per dynamic-schedule chunk: ~16 chunks per thread, so a thread slowed by another
 * process (shared machines) does not hold the others back, at little overhead; and no
 * more than CHUNK_MAX_BYTES of weights. */
static int64_t tile_chunk(int64_t n_tiles, int n_thr, int64_t tile_bytes) {
    int64_t chunk = n_tiles / ((int64_t)n_thr * 16);
    if (tile_bytes > 0 && chunk * tile_bytes > CHUNK_MAX_BYTES) chunk = CHUNK_MAX_BYTES / tile_bytes;
    return chunk < 1 ? 1 : chunk;
}

/* Row sizes of W and of its quantized activations for sm_matmul_q and its reference;
 * SM_OK, or the error for an unsupported type or a bad shape. */
static int q_row_sizes(int wtype, int64_t n_rows, int64_t n_cols, int64_t n_tok, int64_t *w_row, int64_t *x_row) {
    if (!sm_type_supported(wtype)) return SM_E_TYPE;
    *w_row = sm_row_size(wtype, n_cols);
    *x_row = sm_row_size(sm_vec_dot_type(wtype), n_cols);
    if (*w_row < 0 || *x_row < 0 || n_rows < 0 || n_tok < 0 || n_cols > INT32_MAX) return SM_E_SHAPE;
    return SM_OK;
}

int sm_matmul_q(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                const void *Xq, int64_t n_tok) {
    int64_t w_row, x_row;
    const int rc = q_row_sizes(wtype, n_rows, n_cols, n_tok, &w_row, &x_row);
    if (rc != SM_OK) return rc;
    const row_kernels rk = pick_kernels(sm_kernels_current(), wtype, n_tok);
    if (!rk.dot) return SM_E_TYPE;

    const uint8_t *w = (const uint8_t *)W;
    const uint8_t *x = (const uint8_t *)Xq;
    float *panels = NULL;
    if (needs_scale_panels(&rk, sm_vec_dot_type(wtype))) {
        panels = malloc(sizeof(float) * (size_t)panels_entries(n_cols, n_tok));
        if (!panels) return SM_E_NOMEM;
        for (int64_t t0 = 0; t0 < n_tok; t0 += SM_VEC_DOT_N_MAX) fill_scale_panel(panels, x, x_row, n_cols, n_tok, t0);
    }
    const int64_t n_tiles = (n_rows + ROW_TILE - 1) / ROW_TILE;
    const int n = (int)n_cols;
    const int use_threads = n_rows * w_row >= (1 << 16) && n_tiles > 1;
    (void)use_threads;

    const int n_thr = sm_get_threads();
    const int64_t chunk = tile_chunk(n_tiles, n_thr, ROW_TILE * w_row);
    (void)chunk;

#pragma omp parallel for schedule(dynamic, chunk) num_threads(n_thr) if (use_threads)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
        const int64_t r0 = tile * ROW_TILE;
        const int64_t r1 = r0 + ROW_TILE < n_rows ? r0 + ROW_TILE : n_rows;
        matmul_tile(Y, w, w_row, n_rows, x, x_row, panels, n, n_tok, r0, r1, &rk);
    }
    free(panels);
    return SM_OK;
}

int sm_matmul_q_vec_dot(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
                        const void *Xq, int64_t n_tok) {
    int64_t w_row, x_row;
    const int rc = q_row_sizes(wtype, n_rows, n_cols, n_tok, &w_row, &x_row);
    if (rc != SM_OK) return rc;
    const sm_vec_dot_fn dot = sm_kernels_current()->vec_dot[wtype];
    if (!dot) return SM_E_TYPE;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = 0; r < n_rows; r++)
            dot(&Y[t * n_rows + r], (const uint8_t *)W + r * w_row, (const uint8_t *)Xq + t * x_row, (int)n_cols);
    return SM_OK;
}

int sm_matmul(float *Y, const void *W, int wtype, int64_t n_rows, int64_t n_cols,
              const float *X, int64_t n_tok, sm_workspace *ws) {
    if (!sm_type_supported(wtype)) return SM_E_TYPE;
    const sm_matmul_part part = {Y, W, wtype, n_rows, NULL};
    return sm_matmul_multi(&part, 1, n_cols, X, n_tok, ws);
}

/* What a matmul over several parts needs, worked out (and checked) the same way by every
 * thread of a team: the activation type and row size, each part's weight row size and
 * kernels, where each part's row tiles start in the common list of tiles. */
typedef struct {
    int act_type;
    int64_t x_row;
    int64_t first_tile[SM_MATMUL_MAX_PARTS + 1];
    int64_t w_row[SM_MATMUL_MAX_PARTS];
    row_kernels rk[SM_MATMUL_MAX_PARTS];
    int x8[SM_MATMUL_MAX_PARTS]; /* 1: rows read from the part's repacked copy */
    int with_panels;
    int use_threads;  /* 0: too small to split, one thread does every tile */
} matmul_plan;

static int plan_matmul(matmul_plan *pl, const sm_kernels *k, const sm_matmul_part *parts, int n_parts,
                       int64_t n_cols, int64_t n_tok) {
    if (n_parts <= 0 || n_parts > SM_MATMUL_MAX_PARTS) return SM_E_ARG;
    if (n_tok < 0 || n_cols > INT32_MAX) return SM_E_SHAPE;
    const int at = sm_type_supported(parts[0].wtype) ? sm_vec_dot_type(parts[0].wtype) : -1;
    if (at < 0) return SM_E_TYPE;
    pl->act_type = at;
    pl->x_row = sm_row_size(at, n_cols);
    if (pl->x_row < 0) return SM_E_SHAPE;
    if (at != SM_TYPE_F32 && !k->quantize[at]) return SM_E_TYPE;
    int64_t bytes = 0;
    const int x8_ok = sm_entry_unit(SM_ENTRY_DOT, SM_TYPE_Q4_K) == SM_ISA_AVX2;
    pl->first_tile[0] = 0;
    pl->with_panels = 0;
    for (int p = 0; p < n_parts; p++) {
        const int t = parts[p].wtype;
        if (!sm_type_supported(t) || sm_vec_dot_type(t) != at) return SM_E_TYPE;
        pl->w_row[p] = sm_row_size(t, n_cols);
        if (pl->w_row[p] < 0 || parts[p].n_rows < 0) return SM_E_SHAPE;
        pl->rk[p] = pick_kernels(k, t, n_tok);
        if (!pl->rk[p].dot) return SM_E_TYPE;
        pl->x8[p] = x8_ok && n_tok >= X8_MIN_TOKENS && t == SM_TYPE_Q4_K && parts[p].W_x8 != NULL;
        pl->first_tile[p + 1] = pl->first_tile[p] + (parts[p].n_rows + ROW_TILE - 1) / ROW_TILE;
        pl->with_panels |= needs_scale_panels(&pl->rk[p], at);
        bytes += parts[p].n_rows * pl->w_row[p];
    }
    pl->use_threads = bytes >= (1 << 16) && pl->first_tile[n_parts] > 1;
    return SM_OK;
}

/* Workspace bytes for the quantized rows (64-byte aligned), then the scale panels. */
static size_t act_bytes(int64_t x_row, int64_t n_tok) {
    return ((size_t)(x_row * (n_tok > 0 ? n_tok : 1)) + 63) & ~(size_t)63;
}

size_t sm_matmul_workspace_bytes(int wtype, int64_t n_cols, int64_t n_tok) {
    if (!sm_type_supported(wtype)) return 0;
    const int at = sm_vec_dot_type(wtype);
    if (at == SM_TYPE_F32 || sm_row_size(at, n_cols) < 0) return 0;
    const size_t panels = at == SM_TYPE_Q8_0 ? sizeof(float) * (size_t)panels_entries(n_cols, n_tok) : 0;
    return act_bytes(sm_row_size(at, n_cols), n_tok) + panels;
}

/* Tile `tile` of the common list: up to ROW_TILE rows of one part. */
static void run_tile(const matmul_plan *pl, const sm_matmul_part *parts, const uint8_t *x, const float *panels,
                     int n, int64_t n_tok, int64_t tile) {
    int p = 0;
    while (tile >= pl->first_tile[p + 1]) p++;
    const int64_t rows = parts[p].n_rows;
    const int64_t r0 = (tile - pl->first_tile[p]) * ROW_TILE;
    const int64_t r1 = r0 + ROW_TILE < rows ? r0 + ROW_TILE : rows;
    if (pl->x8[p]) {
        sm_matmul_q4_K_x8_rows(parts[p].Y, parts[p].W_x8, rows, n, x, n_tok, r0, r1);
        return;
    }
    matmul_tile(parts[p].Y, (const uint8_t *)parts[p].W, pl->w_row[p], rows, x, pl->x_row, panels, n, n_tok, r0,
                r1, &pl->rk[p]);
}

int sm_matmul_team(sm_team *tm, int tid, const sm_matmul_part *parts, int n_parts, int64_t n_cols,
                   const float *X, int64_t n_tok, sm_workspace *ws) {
    const sm_kernels *k = sm_kernels_current();
    matmul_plan pl;
    const int rc = plan_matmul(&pl, k, parts, n_parts, n_cols, n_tok);
    if (rc != SM_OK) return rc;
    const int at = pl.act_type;
    const uint8_t *x = (const uint8_t *)X;
    float *panels = NULL;
    if (at != SM_TYPE_F32) {
        const size_t xq_bytes = act_bytes(pl.x_row, n_tok);
        if (ws->cap < sm_matmul_workspace_bytes(parts[0].wtype, n_cols, n_tok)) return SM_E_NOMEM;
        x = ws->buf;
        if (pl.with_panels) panels = (float *)((uint8_t *)ws->buf + xq_bytes);
    }

    /* this thread's token groups: their quantized rows and scale panel */
    const sm_quantize_fn quantize = at != SM_TYPE_F32 ? k->quantize[at] : NULL;
    for (int64_t t0 = 0; t0 < n_tok; t0 += SM_VEC_DOT_N_MAX) {
        if (!sm_team_owns_token(tm, tid, t0)) continue;
        const int64_t t1 = t0 + SM_VEC_DOT_N_MAX < n_tok ? t0 + SM_VEC_DOT_N_MAX : n_tok;
        if (quantize)
            for (int64_t t = t0; t < t1; t++) quantize((uint8_t *)x + t * pl.x_row, X + t * n_cols, n_cols);
        if (panels) fill_scale_panel(panels, x, pl.x_row, n_cols, n_tok, t0);
    }
    sm_team_publish(tm, tid, n_tok);

    /* all parts' row tiles as one list, claimed in chunks */
    const int64_t n_tiles = pl.first_tile[n_parts];
    const int n = (int)n_cols;
    if (pl.use_threads) {
        const int64_t chunk = tile_chunk(n_tiles, atomic_load_explicit(&tm->n_threads, memory_order_relaxed),
                                         ROW_TILE * pl.w_row[0]);
        for (int64_t c0; (c0 = sm_team_claim(tm, chunk, n_tiles)) < n_tiles;) {
            const int64_t c1 = c0 + chunk < n_tiles ? c0 + chunk : n_tiles;
            for (int64_t tile = c0; tile < c1; tile++) run_tile(&pl, parts, x, panels, n, n_tok, tile);
        }
    } else if (tid == 0) {
        for (int64_t tile = 0; tile < n_tiles; tile++) run_tile(&pl, parts, x, panels, n, n_tok, tile);
    }
    sm_team_barrier(tm);
    return SM_OK;
}

int sm_matmul_multi(const sm_matmul_part *parts, int n_parts, int64_t n_cols, const float *X, int64_t n_tok,
                    sm_workspace *ws) {
    matmul_plan pl;
    int rc = plan_matmul(&pl, sm_kernels_current(), parts, n_parts, n_cols, n_tok);
    if (rc != SM_OK) return rc;
    if (pl.act_type != SM_TYPE_F32 && !workspace_reserve(ws, sm_matmul_workspace_bytes(parts[0].wtype, n_cols, n_tok)))
        return SM_E_NOMEM;
    const int n_thr = pl.use_threads ? sm_get_threads() : 1;
    sm_team tm;
    sm_team_init(&tm, n_thr);
#pragma omp parallel num_threads(n_thr) if (n_thr > 1)
    {
        sm_team_enter(&tm, sm_team_region_size());
        const int r = sm_matmul_team(&tm, sm_team_region_tid(), parts, n_parts, n_cols, X, n_tok, ws);
        if (sm_team_region_tid() == 0) rc = r;
    }
    return rc;
}
