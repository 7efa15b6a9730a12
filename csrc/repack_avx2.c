/* Q4_K repacked in groups of 8 rows (repack.h) and its AVX2 matmul.  Compiled with -mavx2 -mfma -mf16c on x86-64 (setup.py); the
 * repack itself is plain C, the matmul returns SM_E_ISA elsewhere.
 *
 * Bit-identity with vec_dot_q4_K_avx2 (dot_avx2.c): that kernel keeps, per output, 8 int32
 * lanes per super-block (lane l: the 8 weights at byte offsets 4l..4l+3 of each of the four
 * 32-byte quant groups, each sub-block times its scale), converts them to float and adds
 * them into 8 float lanes with one FMA each, and 4 float lanes for the mins; at the end it
 * reduces the lanes in a fixed tree.  Here the vector lanes are the 8 rows instead, and
 * "lane l" of that kernel becomes a separate accumulator acc[l]: the same int32 values
 * (integer sums are exact in any order), the same float FMAs in the same super-block order,
 * and the same reduction tree done vertically, so every output has the same bits. */
#include <string.h>

#include "kernels.h"
#include "repack.h"

/* 6-bit scale and min of sub-block j (0..7) from a Q4_K block's 12 packed bytes: j < 4 in
 * the low 6 bits of bytes j / j+4; j >= 4: low 4 bits in the nibbles of byte j+4, top 2
 * bits in the spare top bits of bytes j-4 / j. */
static void q4_K_scale_min(const uint8_t *q, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

int64_t sm_repack_q4_K_x8_size(int64_t n_rows, int64_t n_cols) {
    if (n_rows < 0 || n_cols < 0 || n_cols % QK_K != 0) return -1;
    const int64_t groups = (n_rows + SM_REPACK_ROWS - 1) / SM_REPACK_ROWS;
    return groups * (n_cols / QK_K) * (int64_t)sizeof(block_q4_Kx8);
}

/* Super-block i of the rows src[0..n_valid) (row stride nb blocks) into *out. */
static void repack_block(block_q4_Kx8 *out, const block_q4_K *src, int64_t nb, int n_valid) {
    memset(out, 0, sizeof *out);
    for (int r = 0; r < n_valid; r++) {
        const block_q4_K *x = src + r * nb;
        out->d[r] = x->d;
        out->dmin[r] = x->dmin;
        for (int c = 0; c < QK_K / 32; c++) {
            uint8_t sc, m;
            q4_K_scale_min(x->scales, c, &sc, &m);
            out->scales[c][r] = sc;
            out->mins[c / 2][r][c % 2] = m;
        }
        for (int l = 0; l < 8; l++)
            for (int k = 0; k < 4; k++) memcpy(out->qs[l][k][r], x->qs + 32 * k + 4 * l, 4);
    }
}

int sm_repack_q4_K_x8(void *dst, const void *W, int64_t n_rows, int64_t n_cols) {
    if (sm_repack_q4_K_x8_size(n_rows, n_cols) < 0) return SM_E_SHAPE;
    const int64_t nb = n_cols / QK_K;
    const block_q4_K *w = (const block_q4_K *)W;
    block_q4_Kx8 *out = (block_q4_Kx8 *)dst;
    for (int64_t r0 = 0; r0 < n_rows; r0 += SM_REPACK_ROWS) {
        const int n_valid = (int)(n_rows - r0 < SM_REPACK_ROWS ? n_rows - r0 : SM_REPACK_ROWS);
        for (int64_t i = 0; i < nb; i++) repack_block(out++, w + r0 * nb + i, nb, n_valid);
    }
    return SM_OK;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define SM_INLINE static inline __attribute__((always_inline))

/* Tokens per pass: as vec_dot_n, each unpacked weight vector meets up to 8 activation rows. */
#define TOKENS_MAX 8

/* The weights' prefetch distance of dot_avx2.c, in bytes ahead of the block being read
 * (2048 and 8192 measured no better here). */
#define REPACK_PF_AHEAD 4096

static inline __m256i load_256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

static inline __m256i bcast_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* One group of 8 rows against G (<= TOKENS_MAX) activation rows a + j * a_stride:
 * y[j * y_stride + r] for r < n_valid. */
SM_INLINE void q4_K_x8_rows(float *y, size_t y_stride, int n_valid, const block_q4_Kx8 *x, const uint8_t *a,
                            size_t a_stride, int nb, const int G) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[TOKENS_MAX][8];   /* [token][lane l of vec_dot_q4_K_avx2], lanes = rows */
    __m256 acc_m[TOKENS_MAX][4]; /* [token][mins lane m], lanes = rows */
    for (int j = 0; j < G; j++) {
        for (int l = 0; l < 8; l++) acc[j][l] = _mm256_setzero_ps();
        for (int m = 0; m < 4; m++) acc_m[j][m] = _mm256_setzero_ps();
    }
    for (int i = 0; i < nb; i++) {
        const block_q4_Kx8 *b = x + i;
        const __m256 xd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b->d));
        const __m256 xdmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b->dmin));
        /* per sub-block: each row's scale in both int16 halves of its int32 lane, the
         * multiplier madd applies to the pair sums of maddubs */
        __m256i sc[8];
        for (int c = 0; c < 8; c++) {
            const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b->scales[c]));
            sc[c] = _mm256_or_si256(v, _mm256_slli_epi32(v, 16));
        }
        const block_q8_K *yb[TOKENS_MAX];
        __m256 d[TOKENS_MAX];
        for (int j = 0; j < G; j++) {
            yb[j] = (const block_q8_K *)(a + j * a_stride) + i;
            const __m256 ad = _mm256_set1_ps(yb[j]->d);
            d[j] = _mm256_mul_ps(ad, xd);
            const __m256 dmin = _mm256_mul_ps(ad, xdmin);
            /* the activation sums of sub-blocks (2m, 2m+1) as an int16 pair, as
             * mins_dot_bsums forms them (hadd of the per-16 sums) */
            int32_t bs_pairs[4];
            const __m256i bs = load_256(yb[j]->bsums);
            _mm_storeu_si128((__m128i *)bs_pairs,
                             _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
            for (int m = 0; m < 4; m++) {
                const __m256i mins = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)b->mins[m]));
                const __m256i msum = _mm256_madd_epi16(mins, _mm256_set1_epi32(bs_pairs[m]));
                acc_m[j][m] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(msum), acc_m[j][m]);
            }
        }
        for (int l = 0; l < 8; l++) {
            /* the block's 1184 bytes a few blocks ahead, 3 lines per l: spread out, not a
             * burst of 19 that would queue behind the few line fill buffers */
            for (int line = 0; line < 3; line++)
                _mm_prefetch((const char *)b + REPACK_PF_AHEAD + 148 * l + 64 * line, _MM_HINT_T0);
            __m256i sumi[TOKENS_MAX];
            for (int j = 0; j < G; j++) sumi[j] = _mm256_setzero_si256();
            for (int k = 0; k < 4; k++) {
                const __m256i q = load_256(b->qs[l][k]);
                const __m256i lo = _mm256_and_si256(q, m4);                       /* sub-block 2k */
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4); /* sub-block 2k+1 */
                for (int j = 0; j < G; j++) {
                    const int8_t *q8 = yb[j]->qs + 64 * k + 4 * l;
                    const __m256i p_lo = _mm256_madd_epi16(sc[2 * k], _mm256_maddubs_epi16(lo, bcast_i32(q8)));
                    const __m256i p_hi = _mm256_madd_epi16(sc[2 * k + 1], _mm256_maddubs_epi16(hi, bcast_i32(q8 + 32)));
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for (int j = 0; j < G; j++) acc[j][l] = _mm256_fmadd_ps(d[j], _mm256_cvtepi32_ps(sumi[j]), acc[j][l]);
        }
    }
    for (int j = 0; j < G; j++) {
        /* hsum_f32x8's tree: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)); mins (m0+m2) + (m1+m3) */
        const __m256 *f = acc[j];
        const __m256 s04 = _mm256_add_ps(f[0], f[4]), s26 = _mm256_add_ps(f[2], f[6]);
        const __m256 s15 = _mm256_add_ps(f[1], f[5]), s37 = _mm256_add_ps(f[3], f[7]);
        const __m256 sum = _mm256_add_ps(_mm256_add_ps(s04, s26), _mm256_add_ps(s15, s37));
        const __m256 mins = _mm256_add_ps(_mm256_add_ps(acc_m[j][0], acc_m[j][2]),
                                          _mm256_add_ps(acc_m[j][1], acc_m[j][3]));
        float out[SM_REPACK_ROWS];
        _mm256_storeu_ps(out, _mm256_sub_ps(sum, mins));
        memcpy(y + j * y_stride, out, sizeof(float) * (size_t)n_valid);
    }
}

static void q4_K_x8_group(float *y, size_t y_stride, int n_valid, const block_q4_Kx8 *x, const uint8_t *a,
                          size_t a_stride, int nb, int n_act) {
#define ROWS(G) q4_K_x8_rows(y, y_stride, n_valid, x, a, a_stride, nb, G)
    switch (n_act) {
    case 1: ROWS(1); break;
    case 2: ROWS(2); break;
    case 3: ROWS(3); break;
    case 4: ROWS(4); break;
    case 5: ROWS(5); break;
    case 6: ROWS(6); break;
    case 7: ROWS(7); break;
    default: ROWS(8); break;
    }
#undef ROWS
}

/* sm_isa_available runs CPUID, which traps to the hypervisor in a VM (tens of
 * microseconds, a third of a decode-sized matmul): asked once.  -1: not yet asked. */
static int avx2_ok = -1;

void sm_matmul_q4_K_x8_rows(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok,
                            int64_t r0, int64_t r1) {
    const int nb = (int)(n_cols / QK_K);
    const size_t a_stride = (size_t)nb * sizeof(block_q8_K);
    const block_q4_Kx8 *w = (const block_q4_Kx8 *)Wr;
    /* row groups outer, token groups inner, as matmul_tile: a group's weights stay in L1
     * while every group of activation rows passes */
    for (int64_t g0 = r0; g0 < r1; g0 += SM_REPACK_ROWS) {
        const int n_valid = (int)(r1 - g0 < SM_REPACK_ROWS ? r1 - g0 : SM_REPACK_ROWS);
        const block_q4_Kx8 *wg = w + g0 / SM_REPACK_ROWS * nb;
        for (int64_t t0 = 0; t0 < n_tok; t0 += TOKENS_MAX) {
            const int nt = (int)(n_tok - t0 < TOKENS_MAX ? n_tok - t0 : TOKENS_MAX);
            q4_K_x8_group(Y + t0 * n_rows + g0, (size_t)n_rows, n_valid, wg, (const uint8_t *)Xq + t0 * a_stride,
                          a_stride, nb, nt);
        }
    }
}

int sm_matmul_q4_K_x8(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok) {
    if (sm_repack_q4_K_x8_size(n_rows, n_cols) < 0 || n_tok < 0 || n_cols > INT32_MAX) return SM_E_SHAPE;
    if (avx2_ok < 0) avx2_ok = sm_isa_available(SM_ISA_AVX2);
    if (!avx2_ok) return SM_E_ISA;
    sm_matmul_q4_K_x8_rows(Y, Wr, n_rows, n_cols, Xq, n_tok, 0, n_rows);
    return SM_OK;
}
#else
void sm_matmul_q4_K_x8_rows(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok,
                            int64_t r0, int64_t r1) {
    (void)Y, (void)Wr, (void)n_rows, (void)n_cols, (void)Xq, (void)n_tok, (void)r0, (void)r1;
}

int sm_matmul_q4_K_x8(float *Y, const void *Wr, int64_t n_rows, int64_t n_cols, const void *Xq, int64_t n_tok) {
    (void)Y, (void)Wr, (void)n_rows, (void)n_cols, (void)Xq, (void)n_tok;
    return SM_E_ISA;
}
#endif
