/* AVX2 + FMA + F16C kernels.  Compiled with -mavx2 -mfma -mf16c only; dispatch.c calls
 * sm_fill_kernels_avx2() on a table the scalar unit has already filled, and only when the
 * CPU has these features.
 *
 * The integer dot products compute exactly the same int32 per-block (or per-sub-block)
 * sums as dot_scalar.c, just 32 bytes at a time, so only the order in which the scaled
 * float terms are added differs.  The byte products use _mm256_maddubs_epi16, which needs
 * one unsigned operand:
 *   - 4/5/6-bit weights are kept unsigned (0..15, 0..31, 0..63) and their zero point is
 *     removed afterwards, either with a second maddubs of the constant offset against the
 *     activations (Q4_0, Q5_0) or through the activation sums in q8_K.bsums (Q6_K), or it
 *     does not exist (Q4_K, Q5_K use a separate min term, also through bsums);
 *   - signed Q8_0 weights give their sign to the activation and use |w| as the unsigned
 *     side.  This is exact as long as no activation is -128, which the Q8_0 quantizer never
 *     produces (it maps amax to 127).
 * No pair sum can saturate int16: the largest is 2*63*128 (Q6_K) or 2*128*127 (Q8_0).
 *
 * Dequantization reproduces the scalar results bit for bit: every weight is a product
 * d*scale*q that is exact in float (at most 24 significant bits), followed for the
 * K-quants with mins by one rounded subtraction, the same single rounding as the scalar
 * code.  F16C conversions equal sm_half_to_float for every half except signalling NaNs,
 * which the hardware quiets (sets the quiet bit). */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

/* for kernels instantiated per compile-time row count: the loops over rows unroll */
#define SM_INLINE static inline __attribute__((always_inline))

static inline float fp16_to_f32(sm_half h) { return _cvtsh_ss(h); }

static inline __m256i load_256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m128i load_128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

static inline float hsum_f32x8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* Software prefetch of the weight stream.  With the hardware prefetcher alone, DRAM
 * latency is barely overlapped with the arithmetic and a matvec runs at roughly
 * 1/(1/compute_rate + 1/bandwidth).  PF_AHEAD (bytes) is about latency x bandwidth with
 * margin (~100 ns x ~28 GB/s); 2-4 KiB measured best here.  Rows of a matrix are
 * contiguous, so running past the end of this row fetches the next one; prefetches
 * never fault. */
#define PF_AHEAD 4096
static inline void prefetch_weights(const void *p, int lines) {
    const char *c = (const char *)p + PF_AHEAD;
    for (int l = 0; l < lines; l++) _mm_prefetch(c + 64 * l, _MM_HINT_T0);
}

/* 16 packed bytes -> 32 nibbles in weight order: low nibbles (weights 0..15) in the low
 * lane, high nibbles (weights 16..31) in the high lane; the layout of Q4_0/Q5_0. */
static inline __m256i nibbles_32(const uint8_t *qs) {
    /* the 16 bytes go to both lanes straight from memory (a pure load), then one
     * per-lane variable shift moves the high nibbles down in the high lane only */
    const __m256i both = _mm256_broadcastsi128_si256(load_128(qs));
    const __m256i shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0x10 where bit j of `bits` is set, else 0 (byte j <- bit j). */
static inline __m256i bits_to_0x10(uint32_t bits) {
    /* send byte j/8 of the word to byte j, then test bit j%8 of it */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* Sum of x*y over 32 signed bytes, as 8 int32 partial sums.  x takes |x|, y takes x's
 * sign (x*y == |x| * (sign(x)*y)); exact unless y holds -128 (see the file comment). */
static inline __m256i dot_s8_s8(__m256i x, __m256i y) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Sum of (u - off)*y over 32 bytes, u unsigned, as 8 int32 partial sums.  The offset is
 * taken out in int16 (both maddubs are exact: |pair| <= 2*31*128), so any y is fine. */
static inline __m256i dot_u8off_s8(__m256i u, __m256i off, __m256i y) {
    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(u, y), _mm256_maddubs_epi16(off, y));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Q4_K/Q5_K: 12 packed bytes -> 8 six-bit scales (bytes 0..7) and 8 six-bit mins (bytes
 * 8..15).  Sub-blocks 0..3 keep scale/min in the low 6 bits of bytes 0..3 / 4..7;
 * sub-blocks 4..7 keep the low 4 bits in the nibbles of bytes 8..11 and the top 2 bits in
 * the spare top bits of bytes 0..3 (scales) and 4..7 (mins).  Done on 32-bit words. */
static inline __m128i unpack_scales_mins_k4(const uint8_t *scales) {
    uint32_t a, b, c;
    memcpy(&a, scales + 0, 4);
    memcpy(&b, scales + 4, 4);
    memcpy(&c, scales + 8, 4);
    const uint32_t sc_lo = a & 0x3f3f3f3fu;
    const uint32_t mn_lo = b & 0x3f3f3f3fu;
    const uint32_t sc_hi = (c & 0x0f0f0f0fu) | (((a >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((c >> 4) & 0x0f0f0f0fu) | (((b >> 6) & 0x03030303u) << 4);
    return _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)mn_lo, (int)mn_hi);
}

/* Byte-shuffle mask broadcasting int16 element k of each 128-bit lane to the whole lane. */
static inline __m256i bcast16_mask(int k) {
    return _mm256_set1_epi16((short)(((2 * k + 1) << 8) | (2 * k)));
}

/* ------------------------------------------------------------------------------------ */
/* float types                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Four independent accumulators hide the FMA latency; the tail is done in float too. */
static void vec_dot_f32_avx2(float *s, const void *w, const void *a, int n) {
    const float *x = (const float *)w;
    const float *y = (const float *)a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(x + i, 2);
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static void vec_dot_f16_avx2(float *s, const void *w, const void *a, int n) {
    const sm_half *x = (const sm_half *)w;
    const float *y = (const float *)a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(x + i, 1);
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(load_128(x + i)), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(load_128(x + i + 8)), _mm256_loadu_ps(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_cvtph_ps(load_128(x + i + 16)), _mm256_loadu_ps(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_cvtph_ps(load_128(x + i + 24)), _mm256_loadu_ps(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(load_128(x + i)), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += fp16_to_f32(x[i]) * y[i];
    *s = sum;
}

/* bf16 is the top half of an f32: widen to 32 bits and shift into place. */
static inline __m256 bf16x8_to_f32(const sm_bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_128(p)), 16));
}

static void vec_dot_bf16_avx2(float *s, const void *w, const void *a, int n) {
    const sm_bf16 *x = (const sm_bf16 *)w;
    const float *y = (const float *)a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        prefetch_weights(x + i, 1);
        acc0 = _mm256_fmadd_ps(bf16x8_to_f32(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(bf16x8_to_f32(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(bf16x8_to_f32(x + i + 16), _mm256_loadu_ps(y + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(bf16x8_to_f32(x + i + 24), _mm256_loadu_ps(y + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(bf16x8_to_f32(x + i), _mm256_loadu_ps(y + i), acc0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += sm_bf16_to_float(x[i]) * y[i];
    *s = sum;
}

static void dequant_f16_avx2(float *dst, const void *src, int64_t n) {
    const sm_half *x = (const sm_half *)src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(load_128(x + i)));
        _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(load_128(x + i + 8)));
    }
    for (; i < n; i++) dst[i] = sm_half_to_float(x[i]);
}

/* ------------------------------------------------------------------------------------ */
/* 32-weight blocks against Q8_0                                                        */
/* ------------------------------------------------------------------------------------ */

/* The 32-blocks are done 4 at a time to cut the per-block float work, which at one
 * block per step costs as much as the integer dot itself: the 8 fp16 scales of 4 blocks
 * (4 weight, 4 activation) go through one vcvtph2ps, and the 4 blocks' int32 sums are
 * reduced into one vector with in-lane shuffles, so one cvtdq2ps and one FMA cover all 4
 * blocks.  Each block still contributes (float)sumi * (d_w * d_a), the very product the
 * scalar code forms; only the order of the float additions differs. */

/* fp16 scales `d` (first member) of 4 weight blocks `ws` bytes apart and of 4 activation
 * blocks `as` bytes apart -> [dw0..dw3 | da0..da3] as 8 halves.  Inserting the halves one
 * by one (vpinsrw from memory) costs fewer instructions than assembling them in a GPR. */
static inline __m128i gather_8_halves(const void *wd, size_t ws, const void *ad, size_t as) {
    const uint8_t *p = (const uint8_t *)wd, *q = (const uint8_t *)ad;
    uint16_t h[8];
    memcpy(&h[0], p, 2);
    memcpy(&h[1], p + ws, 2);
    memcpy(&h[2], p + 2 * ws, 2);
    memcpy(&h[3], p + 3 * ws, 2);
    memcpy(&h[4], q, 2);
    memcpy(&h[5], q + as, 2);
    memcpy(&h[6], q + 2 * as, 2);
    memcpy(&h[7], q + 3 * as, 2);
    __m128i v = _mm_cvtsi32_si128(h[0]);
    v = _mm_insert_epi16(v, h[1], 1);
    v = _mm_insert_epi16(v, h[2], 2);
    v = _mm_insert_epi16(v, h[3], 3);
    v = _mm_insert_epi16(v, h[4], 4);
    v = _mm_insert_epi16(v, h[5], 5);
    v = _mm_insert_epi16(v, h[6], 6);
    return _mm_insert_epi16(v, h[7], 7);
}

/* fp16 scales `d` (first member) of 4 blocks `stride` bytes apart -> 4 floats. */
static inline __m128 gather_4_scales(const void *d, size_t stride) {
    const uint8_t *p = (const uint8_t *)d;
    uint16_t h0, h1, h2, h3;
    memcpy(&h0, p, 2);
    memcpy(&h1, p + stride, 2);
    memcpy(&h2, p + 2 * stride, 2);
    memcpy(&h3, p + 3 * stride, 2);
    const uint64_t v = (uint64_t)h0 | (uint64_t)h1 << 16 | (uint64_t)h2 << 32 | (uint64_t)h3 << 48;
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)v));
}

/* d_w[k] * d_a[k] for the 4 blocks. */
static inline __m128 scale_products_4(const void *wd, size_t ws, const void *ad, size_t as) {
    const __m256 f = _mm256_cvtph_ps(gather_8_halves(wd, ws, ad, as));
    return _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
}

/* 4 vectors of 8 int32 partial sums -> the 4 totals (exact int32 adds). */
static inline __m128i block_sums_4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    /* [v0 v0 v1 v1 | v0 v0 v1 v1] and the same for v2, v3 */
    const __m256i a = _mm256_add_epi32(_mm256_unpacklo_epi64(v0, v1), _mm256_unpackhi_epi64(v0, v1));
    const __m256i b = _mm256_add_epi32(_mm256_unpacklo_epi64(v2, v3), _mm256_unpackhi_epi64(v2, v3));
    /* even and odd int32 of a, b side by side: [v0 v1 v2 v3 | v0 v1 v2 v3] */
    const __m256 af = _mm256_castsi256_ps(a), bf = _mm256_castsi256_ps(b);
    const __m256i c = _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(af, bf, _MM_SHUFFLE(2, 0, 2, 0))),
                                       _mm256_castps_si256(_mm256_shuffle_ps(af, bf, _MM_SHUFFLE(3, 1, 3, 1))));
    return _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
}

/* Sum of the 8 int32 of v. */
static inline int32_t hsum_i32x8(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtsi128_si32(x);
}

/* sum + (float)isum * d with one rounding: how every 32-block kernel of this unit adds a
 * leftover block.  The compiler would contract the plain expression into this FMA (gnu11,
 * -mfma) but need not; spelling it out keeps vec_dot and the multi-row kernels, which
 * must agree bit for bit, from depending on that. */
static inline float add_block_term(float sum, int32_t isum, float d) { return fmaf((float)isum, d, sum); }

/* One loop for the three 32-block types; BLOCK_DOT(i) yields the 8 int32 partial sums of
 * block i.  The leftover (nb % 4) blocks go one by one (add_block_term). */
#define DOT_32_BLOCKS(WTYPE, BLOCK_DOT)                                                          \
    const WTYPE *x = (const WTYPE *)w;                                                           \
    const block_q8_0 *y = (const block_q8_0 *)a;                                                 \
    const int nb = n / 32;                                                                       \
    __m128 acc = _mm_setzero_ps();                                                               \
    int i = 0;                                                                                   \
    for (; i + 4 <= nb; i += 4) {                                                                \
        prefetch_weights(&x[i], (int)((4 * sizeof(WTYPE) + 63) / 64));                           \
        const __m128i sumi = block_sums_4(BLOCK_DOT(i), BLOCK_DOT(i + 1), BLOCK_DOT(i + 2),      \
                                          BLOCK_DOT(i + 3));                                     \
        const __m128 d = scale_products_4(&x[i].d, sizeof(WTYPE), &y[i].d, sizeof(block_q8_0));  \
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sumi), d, acc);                                       \
    }                                                                                            \
    acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));                                              \
    acc = _mm_add_ss(acc, _mm_movehdup_ps(acc));                                                 \
    float sumf = _mm_cvtss_f32(acc);                                                             \
    for (; i < nb; i++)                                                                          \
        sumf = add_block_term(sumf, hsum_i32x8(BLOCK_DOT(i)),                                    \
                              fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));                        \
    *s = sumf;

static void vec_dot_q8_0_avx2(float *s, const void *w, const void *a, int n) {
#define Q8_0_DOT(k) dot_s8_s8(load_256(x[k].qs), load_256(y[k].qs))
    DOT_32_BLOCKS(block_q8_0, Q8_0_DOT)
#undef Q8_0_DOT
}

static void vec_dot_q4_0_avx2(float *s, const void *w, const void *a, int n) {
    const __m256i off = _mm256_set1_epi8(8);
#define Q4_0_DOT(k) dot_u8off_s8(nibbles_32(x[k].qs), off, load_256(y[k].qs))
    DOT_32_BLOCKS(block_q4_0, Q4_0_DOT)
#undef Q4_0_DOT
}

/* 5-bit weight q in 0..31 (4 bits from qs, the 5th from qh), value q - 16. */
static inline __m256i q5_0_unsigned(const block_q5_0 *b) {
    uint32_t qh;
    memcpy(&qh, b->qh, sizeof(qh));
    return _mm256_or_si256(nibbles_32(b->qs), bits_to_0x10(qh));
}

/* Byte j of the result is 0xFF where bit j of the little-endian u32 at p is set, else 0. */
static inline __m256i bits_to_mask(const uint8_t *p) {
    uint32_t bits;
    memcpy(&bits, p, sizeof(bits));
    /* send byte j/8 of the word to byte j, then test bit j%8 of it */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* Q5_0: sum((nib + 16*bit - 16) * y) = sum(nib * y) - 16 * sum(y where the bit is clear).
 * Masking the activations costs one andnot, where building the 5-bit weight and taking
 * its offset out costs an and, an or and a subtraction.  |pair| <= 2*15*127 and
 * 2*16*127, so the int16 difference is exact. */
static inline __m256i q5_0_block_dot(const block_q5_0 *b, __m256i y, __m256i k16) {
    const __m256i y_clear = _mm256_andnot_si256(bits_to_mask(b->qh), y);
    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles_32(b->qs), y),
                                         _mm256_maddubs_epi16(k16, y_clear));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

static void vec_dot_q5_0_avx2(float *s, const void *w, const void *a, int n) {
    const __m256i k16 = _mm256_set1_epi8(16);
#define Q5_0_DOT(k) q5_0_block_dot(&x[k], load_256(y[k].qs), k16)
    DOT_32_BLOCKS(block_q5_0, Q5_0_DOT)
#undef Q5_0_DOT
}
#undef DOT_32_BLOCKS

/* ---- several activation rows at once (sm_kernels.vec_dot_n) ----
 *
 * The AVX2 table itself reaches the 32-block types through the tile kernels further down
 * (matmul.c prefers them, and dispatch.c takes a type's dot kernels from one unit
 * together, so no table has these without the tile entry); the K-quants use theirs.
 *
 * The per-pair integer work (sign, maddubs, madd) cannot shrink, so what is cut is what
 * surrounds it: reducing each block's 8 partial sums to a total, and forming the scale
 * products.  G activation rows (G = 2, 4 or 8) are done together, and the totals of 8
 * (block, row) pairs are reduced into one vector, lane k * G + j for block k and row j,
 * whose scales come from one load of the float activation-scale panel (a_d, laid out
 * block-major with G rows per block; see kernels.h) times the weight scales permuted to
 * the same lanes.  Each lane's accumulator then sees exactly the terms, in the order, of
 * lane (block % 4) of DOT_32_BLOCKS' accumulator, and the final fold (lane 0 + lane 2) +
 * (lane 1 + lane 3) is the one of DOT_32_BLOCKS too, done for all G rows at once: every
 * s[j] is bit-identical to vec_dot's. */

enum q32_kind { Q32_Q4_0, Q32_Q5_0, Q32_Q8_0 };

/* The 32 weights of one block as the signed bytes of the scalar code (q - offset). */
SM_INLINE __m256i decode_q32(const uint8_t *block, const int kind) {
    if (kind == Q32_Q8_0) return load_256(((const block_q8_0 *)block)->qs);
    if (kind == Q32_Q4_0) return _mm256_sub_epi8(nibbles_32(((const block_q4_0 *)block)->qs), _mm256_set1_epi8(8));
    /* Q5_0: q - 16 as int8 directly, the low nibble with 0xF0 (-16) on top where the
     * 5th bit is clear */
    const block_q5_0 *b = (const block_q5_0 *)block;
    return _mm256_or_si256(nibbles_32(b->qs), _mm256_andnot_si256(bits_to_mask(b->qh), _mm256_set1_epi8((char)0xF0)));
}

/* Q4_0/Q5_0: the unsigned quants q (0..15, 0..31) of one block; their value is q - offset
 * (q32_offset), and the offset term is taken out after the block totals, through the
 * activation block sums of the panel: sum((q - c) * y) = sum(q * y) - c * sum(y).  This
 * spares the two signs of the signed form per block and row (|pair| <= 2*31*127: exact
 * in int16). */
SM_INLINE __m256i decode_q32_unsigned(const uint8_t *block, const int kind) {
    if (kind == Q32_Q4_0) return nibbles_32(((const block_q4_0 *)block)->qs);
    const block_q5_0 *b = (const block_q5_0 *)block;
    uint32_t qh;
    memcpy(&qh, b->qh, sizeof(qh));
    return _mm256_or_si256(nibbles_32(b->qs), bits_to_0x10(qh));
}

/* log2 of the offset c of q32_kind's unsigned quants (Q4_0: 8, Q5_0: 16). */
SM_INLINE int q32_offset_shift(const int kind) { return kind == Q32_Q4_0 ? 3 : 4; }

/* 8 int32 partial sums of q . y over one block, q unsigned. */
SM_INLINE __m256i pair_dot_unsigned(__m256i q, const int8_t *y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, load_256(y)), _mm256_set1_epi16(1));
}

/* 8 int32 partial sums of w . y over one block: w signed, u = |w|. */
SM_INLINE __m256i pair_dot(__m256i u, __m256i w, const int8_t *y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(load_256(y), w)), _mm256_set1_epi16(1));
}

/* 8 vectors of 8 int32 partial sums -> their 8 totals, lane m = total of v[m]. */
SM_INLINE __m256i block_sums_8(const __m256i *v) {
    __m256i pairs[4];
    for (int k = 0; k < 4; k++) /* [v2k v2k v2k+1 v2k+1] per 128-bit lane */
        pairs[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(v[2 * k], v[2 * k + 1]),
                                    _mm256_unpackhi_epi64(v[2 * k], v[2 * k + 1]));
    __m256i quads[2];
    for (int k = 0; k < 2; k++) { /* [v4k .. v4k+3] per 128-bit lane, lane halves apart */
        const __m256 a = _mm256_castsi256_ps(pairs[2 * k]), b = _mm256_castsi256_ps(pairs[2 * k + 1]);
        quads[k] = _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                                    _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
    }
    return _mm256_add_epi32(_mm256_permute2x128_si256(quads[0], quads[1], 0x20),
                            _mm256_permute2x128_si256(quads[0], quads[1], 0x31));
}

/* Lane m of a sum vector (G rows) holds block `first + m / G` of a group of 4. */
SM_INLINE __m256i scale_lanes(const int G, int first) {
    return _mm256_setr_epi32(first + 0 / G, first + 1 / G, first + 2 / G, first + 3 / G, first + 4 / G,
                             first + 5 / G, first + 6 / G, first + 7 / G);
}

/* G rows (2, 4, 8) of which the first n_act are real; the others repeat the last real row
 * with zero scales in the panel and are not stored. */
SM_INLINE void q32_rows(float *s, size_t s_stride, const void *w, size_t w_block, const void *a, size_t a_stride,
                        const float *a_d, int n, int n_act, const int G, const int kind) {
    const uint8_t *x = (const uint8_t *)w;
    const int nb = n / 32;
    const int bpv = 8 / G;     /* blocks per vector of sums */
    const int n_acc = 4 / bpv; /* vectors of sums per group of 4 blocks */
    const block_q8_0 *y[SM_VEC_DOT_N_MAX];
    for (int j = 0; j < G; j++)
        y[j] = (const block_q8_0 *)((const uint8_t *)a + (size_t)(j < n_act ? j : n_act - 1) * a_stride);
    const int32_t *a_sum = (const int32_t *)(a_d + (size_t)nb * G); /* see kernels.h */
    __m256 acc[4];
    for (int k = 0; k < n_acc; k++) acc[k] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        const uint8_t *xg = x + (size_t)i * w_block;
        prefetch_weights(xg, (int)((4 * w_block + 63) / 64));
        const __m256 dw4 = _mm256_castps128_ps256(gather_4_scales(xg, w_block));
        for (int k = 0; k < n_acc; k++) {
            __m256i p[8];
            const size_t lane0 = (size_t)(i + k * bpv) * G; /* panel index of lane 0 */
            for (int b = 0; b < bpv; b++) {
                const int blk = i + k * bpv + b;
                if (kind == Q32_Q8_0) {
                    const __m256i wq = decode_q32(x + (size_t)blk * w_block, kind);
                    const __m256i uq = _mm256_sign_epi8(wq, wq);
                    for (int j = 0; j < G; j++) p[b * G + j] = pair_dot(uq, wq, y[j][blk].qs);
                } else {
                    const __m256i q = decode_q32_unsigned(x + (size_t)blk * w_block, kind);
                    for (int j = 0; j < G; j++) p[b * G + j] = pair_dot_unsigned(q, y[j][blk].qs);
                }
            }
            __m256i sums = block_sums_8(p);
            if (kind != Q32_Q8_0)
                sums = _mm256_sub_epi32(sums, _mm256_slli_epi32(load_256(a_sum + lane0), q32_offset_shift(kind)));
            const __m256 dw = _mm256_permutevar8x32_ps(dw4, scale_lanes(G, k * bpv));
            const __m256 d = _mm256_mul_ps(dw, _mm256_loadu_ps(a_d + lane0));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), d, acc[k]);
        }
    }
    /* (lane 0 + lane 2) + (lane 1 + lane 3) of every row, as DOT_32_BLOCKS folds */
    float total[8];
    if (G == 8) {
        _mm256_storeu_ps(total, _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])));
    } else if (G == 4) {
        const __m256 t = _mm256_add_ps(acc[0], acc[1]); /* [l0 + l2 | l1 + l3] */
        _mm_storeu_ps(total, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    } else {
        /* [l0 l1 | l2 l3], two rows each */
        const __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc[0]), _mm256_extractf128_ps(acc[0], 1));
        _mm_storeu_ps(total, _mm_add_ps(t, _mm_movehl_ps(t, t)));
    }
    /* the leftover blocks one by one, as DOT_32_BLOCKS */
    for (int j = 0; j < n_act; j++) {
        float sumf = total[j];
        for (int k = i; k < nb; k++) {
            const uint8_t *xb = x + (size_t)k * w_block;
            sm_half xd;
            memcpy(&xd, xb, sizeof xd);
            sumf = add_block_term(sumf, hsum_i32x8(dot_s8_s8(decode_q32(xb, kind), load_256(y[j][k].qs))),
                                  fp16_to_f32(xd) * fp16_to_f32(y[j][k].d));
        }
        s[j * s_stride] = sumf;
    }
}

/* n_act rows through the instance for its padded row count (kernels.h). */
#define Q32_DOT_N(KIND, WTYPE, VEC_DOT)                                                          \
    switch (sm_vec_dot_n_pad(n_act)) {                                                           \
    case 1: VEC_DOT(s, w, a, n); break;                                                          \
    case 2: q32_rows(s, s_stride, w, sizeof(WTYPE), a, a_stride, a_d, n, n_act, 2, KIND); break; \
    case 4: q32_rows(s, s_stride, w, sizeof(WTYPE), a, a_stride, a_d, n, n_act, 4, KIND); break; \
    default: q32_rows(s, s_stride, w, sizeof(WTYPE), a, a_stride, a_d, n, n_act, 8, KIND); break; \
    }

static void vec_dot_n_q8_0_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    Q32_DOT_N(Q32_Q8_0, block_q8_0, vec_dot_q8_0_avx2)
}

static void vec_dot_n_q4_0_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    Q32_DOT_N(Q32_Q4_0, block_q4_0, vec_dot_q4_0_avx2)
}

static void vec_dot_n_q5_0_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    Q32_DOT_N(Q32_Q5_0, block_q5_0, vec_dot_q5_0_avx2)
}
#undef Q32_DOT_N

/* ---- 8 weight rows x several activation rows (sm_kernels.vec_dot_tile) ----
 *
 * vec_dot_n still reduces each (block, activation row) pair's 8 partial sums to a total,
 * about as much work as the pair's dot itself.  Here the weights are transposed instead:
 * the 32 quants of one block of 8 weight rows are decoded and rearranged so that vector k
 * holds quants 4k..4k+3 of row r in dword r.  maddubs of vector k against the broadcast
 * activation quants 4k..4k+3 then sums the pairs (4k, 4k+1), (4k+2, 4k+3) of each row in
 * that row's dword, the very pairs vec_dot's maddubs forms, and adding over k leaves the
 * block total of row r in lane r: no horizontal reduction at all.  The decode and the
 * transpose are paid once per block and shared by all activation rows.
 *
 * The integer totals are those of vec_dot (Q8_0: the same int16 pairs, then exact int32
 * sums; Q4_0/Q5_0: exact whatever the grouping, see tile_dot_unsigned).  Floats: for
 * activation row j, lane r of accumulator acc[b % 4][j] takes, block after block,
 * fma((float)total, d_w * d_a, acc) with the product of the two scales as floats: the
 * step of lane (b % 4) of DOT_32_BLOCKS.  The fold (0 + 2) + (1 + 3) and the leftover
 * blocks (add_block_term) are DOT_32_BLOCKS' too, so s for (r, j) is bit-identical to
 * vec_dot(row r, activation j).  The 8 rows and up to 8 activation rows of a tile need
 * 4 x 8 accumulators; the compiler keeps what does not fit in registers on the stack. */

/* Bytes of one block of q32_kind. */
SM_INLINE size_t q32_block_bytes(const int kind) {
    return kind == Q32_Q4_0 ? sizeof(block_q4_0) : kind == Q32_Q5_0 ? sizeof(block_q5_0) : sizeof(block_q8_0);
}

/* 16 bytes from `lo` in the low 128-bit lane, 16 bytes from `hi` in the high lane. */
SM_INLINE __m256i load_2x128(const uint8_t *lo, const uint8_t *hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(load_128(lo)), load_128(hi), 1);
}

/* Transpose of the dwords within each 128-bit lane: dword i of out[k] = dword k of v[i]. */
SM_INLINE void transpose_4x4_dwords(__m256i *out, const __m256i *v) {
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]); /* v0.0 v1.0 v0.1 v1.1 */
    const __m256i t1 = _mm256_unpackhi_epi32(v[0], v[1]); /* v0.2 v1.2 v0.3 v1.3 */
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    const __m256i t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
}

/* The 32-bit words at byte `at` of 8 blocks (row r's at row[r] + at) -> lane r. */
SM_INLINE __m256i gather_tile_u32(const uint8_t *const *row, size_t at) {
    __m128i v[8];
    for (int r = 0; r < 8; r++) {
        uint32_t u;
        memcpy(&u, row[r] + at, sizeof u);
        v[r] = _mm_cvtsi32_si128((int)u);
    }
    const __m128i lo = _mm_unpacklo_epi64(_mm_unpacklo_epi32(v[0], v[1]), _mm_unpacklo_epi32(v[2], v[3]));
    const __m128i hi = _mm_unpacklo_epi64(_mm_unpacklo_epi32(v[4], v[5]), _mm_unpacklo_epi32(v[6], v[7]));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* The fp16 scales `d` (first member) of 8 blocks -> lane r = row r's scale as a float. */
SM_INLINE __m256 tile_scales(const uint8_t *const *row, size_t at) {
    __m128i v[8]; /* word 0: the scale; word 1 (the block's next bytes) drops out below */
    for (int r = 0; r < 8; r++) {
        uint32_t h;
        memcpy(&h, row[r] + at, sizeof h);
        v[r] = _mm_cvtsi32_si128((int)h);
    }
    const __m128i h01 = _mm_unpacklo_epi16(v[0], v[1]), h23 = _mm_unpacklo_epi16(v[2], v[3]);
    const __m128i h45 = _mm_unpacklo_epi16(v[4], v[5]), h67 = _mm_unpacklo_epi16(v[6], v[7]);
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_unpacklo_epi32(h01, h23), _mm_unpacklo_epi32(h45, h67)));
}

/* Q5_0's 5th bits in the transposed layout: byte e of dword r of out[k] = 0x10 where bit
 * 4k + e of row r's qh (dword r of qh8) is set, else 0. */
SM_INLINE void q5_0_tile_bits(__m256i *out, __m256i qh8) {
    const __m256i bit_e = _mm256_set1_epi32(0x08040201);             /* byte e: bit e */
    const __m256i bit_4_plus_e = _mm256_set1_epi32((int)0x80402010); /* byte e: bit 4 + e */
    /* 0x10 for a single set bit among bits 0..3 (index 1, 2, 4 or 8), else 0 */
    const __m256i low_bit_to_0x10 = _mm256_setr_epi8(0, 0x10, 0x10, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0,
                                                     0, 0x10, 0x10, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0);
    const __m256i k16 = _mm256_set1_epi8(0x10);
    for (int m = 0; m < 4; m++) {
        /* byte m of qh (bits 8m..8m+7: quants 8m..8m+7) into all 4 bytes of its dword */
        const __m256i byte_m = _mm256_shuffle_epi8(
            qh8, _mm256_setr_epi8(m, m, m, m, 4 + m, 4 + m, 4 + m, 4 + m, 8 + m, 8 + m, 8 + m, 8 + m, 12 + m, 12 + m,
                                  12 + m, 12 + m, m, m, m, m, 4 + m, 4 + m, 4 + m, 4 + m, 8 + m, 8 + m, 8 + m,
                                  8 + m, 12 + m, 12 + m, 12 + m, 12 + m));
        /* quants 8m + e: bit e, tested in byte e and looked up; quants 8m + 4 + e: bit 4 + e,
         * and min(bit, 0x10) is 0x10 or 0 */
        out[2 * m] = _mm256_shuffle_epi8(low_bit_to_0x10, _mm256_and_si256(byte_m, bit_e));
        out[2 * m + 1] = _mm256_min_epu8(_mm256_and_si256(byte_m, bit_4_plus_e), k16);
    }
}

/* One block (at byte `at`) of 8 weight rows, transposed: p[k] holds quants 4k..4k+3 of
 * row r in dword r; unsigned q for Q4_0/Q5_0 (as decode_q32_unsigned), signed for Q8_0.
 * Rows r and r + 4 share a vector (low and high lane), so the transpose stays within
 * 128-bit lanes. */
SM_INLINE void decode_tile(__m256i *p, const uint8_t *const *row, size_t at, const int kind) {
    if (kind == Q32_Q8_0) {
        __m256i lo[4], hi[4]; /* quants 0..15 and 16..31 of rows (h, h + 4) */
        for (int h = 0; h < 4; h++) {
            lo[h] = load_2x128(row[h] + at + offsetof(block_q8_0, qs), row[h + 4] + at + offsetof(block_q8_0, qs));
            hi[h] = load_2x128(row[h] + at + offsetof(block_q8_0, qs) + 16,
                               row[h + 4] + at + offsetof(block_q8_0, qs) + 16);
        }
        transpose_4x4_dwords(p, lo);
        transpose_4x4_dwords(p + 4, hi);
        return;
    }
    /* Q4_0, Q5_0: packed byte m holds quant m (low nibble) and quant 16 + m (high nibble).
     * The nibbles are split after the transpose (per-byte operations commute with it), so
     * only 4 vectors are transposed instead of 8. */
    const size_t qs = kind == Q32_Q4_0 ? offsetof(block_q4_0, qs) : offsetof(block_q5_0, qs);
    __m256i packed[4], t[4];
    for (int h = 0; h < 4; h++) packed[h] = load_2x128(row[h] + at + qs, row[h + 4] + at + qs);
    transpose_4x4_dwords(t, packed);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int k = 0; k < 4; k++) {
        p[k] = _mm256_and_si256(t[k], m4);
        p[k + 4] = _mm256_and_si256(_mm256_srli_epi16(t[k], 4), m4);
    }
    if (kind == Q32_Q5_0) {
        __m256i bits[8];
        q5_0_tile_bits(bits, gather_tile_u32(row, at + offsetof(block_q5_0, qh)));
        for (int k = 0; k < 8; k++) p[k] = _mm256_or_si256(p[k], bits[k]);
    }
}

/* Activation quants 4k..4k+3 of a block in every dword. */
SM_INLINE __m256i bcast_quad(const int8_t *y, int k) {
    int32_t v;
    memcpy(&v, y + 4 * k, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Lane r: sum of q * y over the block, q unsigned as decode_tile gives it.  maddubs
 * results add up exactly in int16 as long as |lane| <= 32767: all eight for Q4_0 (8 * 2 *
 * 15 * 128), four at a time for Q5_0 (4 * 2 * 31 * 128). */
SM_INLINE __m256i tile_dot_unsigned(const __m256i *p, const int8_t *y, const int kind) {
    __m256i s16[4];
    for (int g = 0; g < 4; g++) /* quants 4g.. and 16 + 4g.. */
        s16[g] = _mm256_add_epi16(_mm256_maddubs_epi16(p[g], bcast_quad(y, g)),
                                  _mm256_maddubs_epi16(p[g + 4], bcast_quad(y, g + 4)));
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == Q32_Q4_0)
        return _mm256_madd_epi16(_mm256_add_epi16(_mm256_add_epi16(s16[0], s16[1]), _mm256_add_epi16(s16[2], s16[3])),
                                 ones);
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_add_epi16(s16[0], s16[1]), ones),
                            _mm256_madd_epi16(_mm256_add_epi16(s16[2], s16[3]), ones));
}

/* Lane r: sum of w * y over the block, w signed as decode_tile gives it and u = |w|, in
 * vec_dot's form (dot_s8_s8): a pair can reach 2 * 128 * 127, so each maddubs goes to
 * int32 on its own. */
SM_INLINE __m256i tile_dot_signed(const __m256i *p, const __m256i *u, const int8_t *y) {
    __m256i s[4];
    for (int k = 0; k < 4; k++) {
        const __m256i a = _mm256_maddubs_epi16(u[k], _mm256_sign_epi8(bcast_quad(y, k), p[k]));
        const __m256i b = _mm256_maddubs_epi16(u[k + 4], _mm256_sign_epi8(bcast_quad(y, k + 4), p[k + 4]));
        s[k] = _mm256_add_epi32(_mm256_madd_epi16(a, _mm256_set1_epi16(1)), _mm256_madd_epi16(b, _mm256_set1_epi16(1)));
    }
    return _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
}

/* Touch the next 8-row tile (`next`, rows contiguous) at the pace this one is read: the
 * span of block column `i` of 8 rows, `span` bytes; prefetches never fault. */
SM_INLINE void prefetch_tile(const uint8_t *next, size_t span, int i) {
    const uint8_t *p = next + (size_t)i * span;
    for (size_t c = 0; c < span + 63; c += 64) _mm_prefetch((const char *)p + c, _MM_HINT_T0);
}

/* Block `blk` of the 8 rows against the G activation rows: acc[j] = fma((float)total,
 * d_w * d_a, acc[j]) lane by lane, total = the block's integer dot of row r (lane r) and
 * activation row j. */
SM_INLINE void tile_block(__m256 *acc, const uint8_t *const *row, const void *a, size_t a_stride, const float *a_d,
                          int nb, int blk, const int G, const int kind) {
    const int pad = sm_vec_dot_n_pad(G);
    const size_t at = (size_t)blk * q32_block_bytes(kind);
    __m256i p[8], u[8];
    decode_tile(p, row, at, kind);
    if (kind == Q32_Q8_0)
        for (int k = 0; k < 8; k++) u[k] = _mm256_sign_epi8(p[k], p[k]);
    const __m256 dw = tile_scales(row, at);
    const float *da = a_d + (size_t)blk * pad;
    const int32_t *a_sum = (const int32_t *)(a_d + (size_t)nb * pad) + (size_t)blk * pad; /* see kernels.h */
    for (int j = 0; j < G; j++) {
        const int8_t *y = ((const block_q8_0 *)((const uint8_t *)a + j * a_stride) + blk)->qs;
        __m256i isum;
        if (kind == Q32_Q8_0) {
            isum = tile_dot_signed(p, u, y);
        } else {
            /* sum((q - c) * y) = sum(q * y) - c * sum(y), c = 8 or 16 */
            const __m256i offset = _mm256_slli_epi32(_mm256_set1_epi32(a_sum[j]), q32_offset_shift(kind));
            isum = _mm256_sub_epi32(tile_dot_unsigned(p, y, kind), offset);
        }
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(da[j])), acc[j]);
    }
}

/* 8 weight rows (row[r]; repeat the last real row to pad) against G activation rows:
 * lane r of total[j] = vec_dot(row r, activation row j). */
SM_INLINE void q32_tile_8(__m256 *total, const uint8_t *const *row, const uint8_t *next, const void *a,
                          size_t a_stride, const float *a_d, int n, const int G, const int kind) {
    const int nb = n / 32;
    const size_t span = 8 * q32_block_bytes(kind);
    __m256 acc[4][SM_VEC_DOT_N_MAX]; /* [block % 4][activation row] */
    for (int l = 0; l < 4; l++)
        for (int j = 0; j < G; j++) acc[l][j] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 4 <= nb; i += 4)
        for (int l = 0; l < 4; l++) {
            prefetch_tile(next, span, i + l);
            tile_block(acc[l], row, a, a_stride, a_d, nb, i + l, G, kind);
        }
    /* (lane 0 + lane 2) + (lane 1 + lane 3), then the leftover blocks, as DOT_32_BLOCKS */
    for (int j = 0; j < G; j++)
        total[j] = _mm256_add_ps(_mm256_add_ps(acc[0][j], acc[2][j]), _mm256_add_ps(acc[1][j], acc[3][j]));
    for (; i < nb; i++) {
        prefetch_tile(next, span, i);
        tile_block(total, row, a, a_stride, a_d, nb, i, G, kind);
    }
}

/* The tile in groups of 8 weight rows; a short last group repeats its last row and stores
 * only the real ones. */
SM_INLINE void q32_tile(float *s, size_t s_stride, const void *w, size_t w_stride, int n_rows, const void *a,
                        size_t a_stride, const float *a_d, int n, const int G, const int kind) {
    for (int r0 = 0; r0 < n_rows; r0 += 8) {
        const uint8_t *row[8];
        for (int r = 0; r < 8; r++)
            row[r] = (const uint8_t *)w + (size_t)(r0 + r < n_rows ? r0 + r : n_rows - 1) * w_stride;
        __m256 total[SM_VEC_DOT_N_MAX];
        q32_tile_8(total, row, row[0] + 8 * w_stride, a, a_stride, a_d, n, G, kind);
        if (r0 + 8 <= n_rows) {
            for (int j = 0; j < G; j++) _mm256_storeu_ps(s + j * s_stride + r0, total[j]);
        } else {
            for (int j = 0; j < G; j++) {
                float lanes[8];
                _mm256_storeu_ps(lanes, total[j]);
                memcpy(s + j * s_stride + r0, lanes, sizeof(float) * (size_t)(n_rows - r0));
            }
        }
    }
}

/* n_act activation rows through the instance for exactly that many (the loops over them
 * unroll). */
#define Q32_TILE(KIND)                                                                           \
    switch (n_act) {                                                                             \
    case 1: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 1, KIND); break;     \
    case 2: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 2, KIND); break;     \
    case 3: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 3, KIND); break;     \
    case 4: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 4, KIND); break;     \
    case 5: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 5, KIND); break;     \
    case 6: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 6, KIND); break;     \
    case 7: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 7, KIND); break;     \
    default: q32_tile(s, s_stride, w, w_stride, n_rows, a, a_stride, a_d, n, 8, KIND); break;    \
    }

static void vec_dot_tile_q4_0_avx2(float *s, size_t s_stride, const void *w, size_t w_stride, int n_rows,
                                   const void *a, size_t a_stride, const float *a_d, int n, int n_act) {
    Q32_TILE(Q32_Q4_0)
}

static void vec_dot_tile_q5_0_avx2(float *s, size_t s_stride, const void *w, size_t w_stride, int n_rows,
                                   const void *a, size_t a_stride, const float *a_d, int n, int n_act) {
    Q32_TILE(Q32_Q5_0)
}

/* Q8_0 against a single activation row is left to vec_dot, row by row: with nothing to
 * share the decode with, the tile is no cheaper, and on a matrix streamed from DRAM (the
 * LM head at batch 1) it measured ~10% slower. */
static void vec_dot_tile_q8_0_avx2(float *s, size_t s_stride, const void *w, size_t w_stride, int n_rows,
                                   const void *a, size_t a_stride, const float *a_d, int n, int n_act) {
    if (n_act == 1) {
        for (int r = 0; r < n_rows; r++) vec_dot_q8_0_avx2(s + r, (const uint8_t *)w + (size_t)r * w_stride, a, n);
        return;
    }
    Q32_TILE(Q32_Q8_0)
}
#undef Q32_TILE

/* 32 small signed integers (int8) times d -> 32 floats. d*q is exact, as in the scalar. */
static inline void store_scaled_i8x32(float *dst, __m256i q, __m256 d) {
    const __m128i lo = _mm256_castsi256_si128(q);
    const __m128i hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(dst + 0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(dst + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(dst + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

static void dequant_q4_0_avx2(float *dst, const void *src, int64_t n) {
    const block_q4_0 *x = (const block_q4_0 *)src;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(nibbles_32(x[i].qs), _mm256_set1_epi8(8));
        store_scaled_i8x32(dst + i * QK4_0, q, _mm256_set1_ps(fp16_to_f32(x[i].d)));
    }
}

static void dequant_q5_0_avx2(float *dst, const void *src, int64_t n) {
    const block_q5_0 *x = (const block_q5_0 *)src;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(q5_0_unsigned(&x[i]), _mm256_set1_epi8(16));
        store_scaled_i8x32(dst + i * QK5_0, q, _mm256_set1_ps(fp16_to_f32(x[i].d)));
    }
}

static void dequant_q8_0_avx2(float *dst, const void *src, int64_t n) {
    const block_q8_0 *x = (const block_q8_0 *)src;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++)
        store_scaled_i8x32(dst + i * QK8_0, load_256(x[i].qs), _mm256_set1_ps(fp16_to_f32(x[i].d)));
}

/* ------------------------------------------------------------------------------------ */
/* K-quants against Q8_K                                                                */
/* ------------------------------------------------------------------------------------ */

/* sum over the 8 sub-blocks of m_j * (sum of the 32 activations of sub-block j), as 4
 * int32 partial sums; bsums holds the activation sums per 16. */
static inline __m128i mins_dot_bsums(__m128i mins8, const int16_t *bsums) {
    const __m256i bs = load_256(bsums);
    const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm_cvtepu8_epi16(mins8), bs32);
}

/* *s = sum_i d_i * sum_j sc_ij * dot_ij  -  dmin_i * sum_j m_ij * bsum_ij.
 * The int32 vector `sumi` gathers the scaled sub-block dots of one super-block; the
 * 8-bit scales reach madd as int16 broadcasts shuffled out of one register. */
static void vec_dot_q4_K_avx2(float *s, const void *w, const void *a, int n) {
    const block_q4_K *x = (const block_q4_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_weights(&x[i], 3);
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = y[i].d * fp16_to_f32(x[i].dmin);
        const __m128i sm = unpack_scales_mins_k4(x[i].scales);
        const __m128i msum = mins_dot_bsums(_mm_unpackhi_epi64(sm, sm), y[i].bsums);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(msum), acc_m);

        const __m128i sc16 = _mm_cvtepu8_epi16(sm); /* 8 scales as int16 */
        const __m256i scales = _mm256_broadcastsi128_si256(sc16);
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            /* 32 bytes = sub-block 2j in the low nibbles, 2j+1 in the high nibbles */
            const __m256i b = load_256(q4 + 32 * j);
            const __m256i lo = _mm256_and_si256(b, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
            const __m256i p_lo = _mm256_maddubs_epi16(lo, load_256(q8 + 64 * j));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, load_256(q8 + 64 * j + 32));
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * j));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s_lo, p_lo));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s_hi, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    *s = hsum_f32x8(acc) - _mm_cvtss_f32(acc_m);
}

static void vec_dot_q5_K_avx2(float *s, const void *w, const void *a, int n) {
    const block_q5_K *x = (const block_q5_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_weights(&x[i], 3);
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = y[i].d * fp16_to_f32(x[i].dmin);
        const __m128i sm = unpack_scales_mins_k4(x[i].scales);
        const __m128i msum = mins_dot_bsums(_mm_unpackhi_epi64(sm, sm), y[i].bsums);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(msum), acc_m);

        const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        const uint8_t *q5 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        /* bit j of qh[l] is the 5th bit of weight l of sub-block j; shifting qh right by
         * 2 per pair of sub-blocks brings the next two bits to positions 0 and 1 (the
         * 16-bit shift only pollutes bits 6-7 of each byte, never read). */
        __m256i hbits = load_256(x[i].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i b = load_256(q5 + 32 * j);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(b, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hbits, 4), b4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hbits, 3), b4));
            hbits = _mm256_srli_epi16(hbits, 2);
            const __m256i p_lo = _mm256_maddubs_epi16(lo, load_256(q8 + 64 * j));
            const __m256i p_hi = _mm256_maddubs_epi16(hi, load_256(q8 + 64 * j + 32));
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * j));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s_lo, p_lo));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s_hi, p_hi));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    *s = hsum_f32x8(acc) - _mm_cvtss_f32(acc_m);
}

/* Q6_K: q = 6-bit unsigned (0..63), value q - 32, 16 signed 8-bit scales (one per 16).
 * The -32 is applied once per super-block through bsums:
 *   sum_k sc_k * sum((q-32)*a)_k = sum_k sc_k * sum(q*a)_k - 32 * sum_k sc_k * bsum_k,
 * which saves a maddubs and a subtraction per 32 weights.  All int32, no overflow:
 * |sum| <= 256*63*128*128. */
static void vec_dot_q6_K_avx2(float *s, const void *w, const void *a, int n) {
    const block_q6_K *x = (const block_q6_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2h = _mm256_set1_epi8(0x30); /* the 2 high bits, already in place */
    /* per 32-weight group g of a half: low lane gets scale 2g, high lane scale 2g+1,
     * matching madd's int16 lanes 0-7 (weights 0-15) and 8-15 (weights 16-31) */
    const __m256i sh0 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                         2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const __m256i step = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_weights(&x[i], 4);
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(load_128(x[i].scales));
        const __m256i corr = _mm256_madd_epi16(sc16, load_256(y[i].bsums));
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            /* the 8 scales of this half in both lanes */
            const __m256i sc = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
                                      : _mm256_permute2x128_si256(sc16, sc16, 0x11);
            const __m256i l0 = load_256(ql);
            const __m256i l1 = load_256(ql + 32);
            const __m256i hb = load_256(x[i].qh + 32 * h);
            /* qh[l] bits 2g..2g+1 are the high bits of weight l of group g */
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2h));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2h));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_and_si256(hb, m2h));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2h));
            __m256i shuf = sh0;
            const __m256i s0 = _mm256_shuffle_epi8(sc, shuf);
            shuf = _mm256_add_epi8(shuf, step);
            const __m256i s1 = _mm256_shuffle_epi8(sc, shuf);
            shuf = _mm256_add_epi8(shuf, step);
            const __m256i s2 = _mm256_shuffle_epi8(sc, shuf);
            shuf = _mm256_add_epi8(shuf, step);
            const __m256i s3 = _mm256_shuffle_epi8(sc, shuf);
            const __m256i p0 = _mm256_madd_epi16(s0, _mm256_maddubs_epi16(q0, load_256(q8)));
            const __m256i p1 = _mm256_madd_epi16(s1, _mm256_maddubs_epi16(q1, load_256(q8 + 32)));
            const __m256i p2 = _mm256_madd_epi16(s2, _mm256_maddubs_epi16(q2, load_256(q8 + 64)));
            const __m256i p3 = _mm256_madd_epi16(s3, _mm256_maddubs_epi16(q3, load_256(q8 + 96)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---- K-quants, several activation rows at once (sm_kernels.vec_dot_n) ----
 * Each 32 weights of a super-block are unpacked once, with their madd scale multiplier,
 * and then meet all G activation rows while in registers: per row a maddubs, a madd and an
 * add, with the G int32 accumulators in registers too.  G (rows per pass, <= 8) is a
 * compile-time constant in each instance of the *_rows functions below, so the loops over
 * rows unroll.  Per row the operations and their order are those of the one-row kernel
 * above (the integer sums are exact in any order), so every s[j] is bit-identical to
 * vec_dot's. */

/* Dispatch n_act rows to FN(G) instances in passes of up to 8 rows. */
#define VEC_DOT_N_PASSES(FN)                                                                     \
    while (n_act > 0) {                                                                          \
        const int g = n_act < SM_VEC_DOT_N_MAX ? n_act : SM_VEC_DOT_N_MAX;                       \
        switch (g) {                                                                             \
        case 1: FN(1); break;                                                                    \
        case 2: FN(2); break;                                                                    \
        case 3: FN(3); break;                                                                    \
        case 4: FN(4); break;                                                                    \
        case 5: FN(5); break;                                                                    \
        case 6: FN(6); break;                                                                    \
        case 7: FN(7); break;                                                                    \
        default: FN(8); break;                                                                   \
        }                                                                                        \
        s += (size_t)g * s_stride;                                                               \
        a = (const uint8_t *)a + (size_t)g * a_stride;                                           \
        n_act -= g;                                                                              \
    }

/* Q4_K and Q5_K differ only in how the 32 quants of a sub-block pair are unpacked. */
SM_INLINE void q45_K_rows(float *s, size_t s_stride, const void *w, size_t w_block, const void *a,
                          size_t a_stride, int n, const int G, const int five) {
    const int nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc[SM_VEC_DOT_N_MAX];
    __m128 acc_m[SM_VEC_DOT_N_MAX];
    for (int j = 0; j < G; j++) {
        acc[j] = _mm256_setzero_ps();
        acc_m[j] = _mm_setzero_ps();
    }
    for (int i = 0; i < nb; i++) {
        const uint8_t *xb = (const uint8_t *)w + (size_t)i * w_block;
        prefetch_weights(xb, 3);
        /* q4_K and q5_K share d, dmin, scales[12] at the start; qs (and qh) follow */
        const block_q4_K *x4 = (const block_q4_K *)xb;
        const block_q5_K *x5 = (const block_q5_K *)xb;
        const float xd = fp16_to_f32(x4->d);
        const float xdmin = fp16_to_f32(x4->dmin);
        const __m128i sm = unpack_scales_mins_k4(x4->scales);
        const __m128i mins = _mm_unpackhi_epi64(sm, sm);
        const __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        const uint8_t *qs = five ? x5->qs : x4->qs;
        __m256i hbits = five ? load_256(x5->qh) : _mm256_setzero_si256();
        __m256i sumi[SM_VEC_DOT_N_MAX];
        float d[SM_VEC_DOT_N_MAX];
        for (int j = 0; j < G; j++) {
            const block_q8_K *y = (const block_q8_K *)((const uint8_t *)a + j * a_stride) + i;
            d[j] = y->d * xd;
            const float dmin = y->d * xdmin;
            const __m128i msum = mins_dot_bsums(mins, y->bsums);
            acc_m[j] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(msum), acc_m[j]);
            sumi[j] = _mm256_setzero_si256();
        }
        for (int k = 0; k < 4; k++) {
            const __m256i b = load_256(qs + 32 * k);
            __m256i lo = _mm256_and_si256(b, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hbits, 4), b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hbits, 3), b4));
                hbits = _mm256_srli_epi16(hbits, 2);
            }
            const __m256i s_lo = _mm256_shuffle_epi8(scales, bcast16_mask(2 * k));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, bcast16_mask(2 * k + 1));
            for (int j = 0; j < G; j++) {
                const int8_t *q8 = ((const block_q8_K *)((const uint8_t *)a + j * a_stride) + i)->qs + 64 * k;
                const __m256i p_lo = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, load_256(q8)));
                const __m256i p_hi = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, load_256(q8 + 32)));
                sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for (int j = 0; j < G; j++) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d[j]), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
    }
    for (int j = 0; j < G; j++) {
        __m128 m = _mm_add_ps(acc_m[j], _mm_movehl_ps(acc_m[j], acc_m[j]));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        s[j * s_stride] = hsum_f32x8(acc[j]) - _mm_cvtss_f32(m);
    }
}

static void vec_dot_n_q4_K_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    (void)a_d; /* Q8_K scales are floats already */
#define Q4_K_ROWS(G) q45_K_rows(s, s_stride, w, sizeof(block_q4_K), a, a_stride, n, G, 0)
    VEC_DOT_N_PASSES(Q4_K_ROWS)
#undef Q4_K_ROWS
}

static void vec_dot_n_q5_K_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    (void)a_d; /* Q8_K scales are floats already */
#define Q5_K_ROWS(G) q45_K_rows(s, s_stride, w, sizeof(block_q5_K), a, a_stride, n, G, 1)
    VEC_DOT_N_PASSES(Q5_K_ROWS)
#undef Q5_K_ROWS
}

SM_INLINE void q6_K_rows(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride, int n,
                         const int G) {
    const block_q6_K *x = (const block_q6_K *)w;
    const int nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2h = _mm256_set1_epi8(0x30);
    const __m256i sh0 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                         2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const __m256i step = _mm256_set1_epi8(4);
    __m256 acc[SM_VEC_DOT_N_MAX];
    for (int j = 0; j < G; j++) acc[j] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_weights(&x[i], 4);
        const float xd = fp16_to_f32(x[i].d);
        const __m256i sc16 = _mm256_cvtepi8_epi16(load_128(x[i].scales));
        __m256i sumi[SM_VEC_DOT_N_MAX];
        for (int j = 0; j < G; j++) sumi[j] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const __m256i scv = h == 0 ? _mm256_permute2x128_si256(sc16, sc16, 0x00)
                                       : _mm256_permute2x128_si256(sc16, sc16, 0x11);
            const __m256i l0 = load_256(ql);
            const __m256i l1 = load_256(ql + 32);
            const __m256i hb = load_256(x[i].qh + 32 * h);
            __m256i shuf = sh0;
            for (int g = 0; g < 4; g++) {
                /* group g of this half: weights 32g.. of it, activations qs[128h + 32g ..] */
                const __m256i l = g & 1 ? l1 : l0;
                const __m256i lo4 = g < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
                const __m256i hi2 = g == 0 ? _mm256_slli_epi16(hb, 4)
                                  : g == 1 ? _mm256_slli_epi16(hb, 2)
                                  : g == 2 ? hb
                                           : _mm256_srli_epi16(hb, 2);
                const __m256i q = _mm256_or_si256(lo4, _mm256_and_si256(hi2, m2h));
                const __m256i sc = _mm256_shuffle_epi8(scv, shuf);
                shuf = _mm256_add_epi8(shuf, step);
                for (int j = 0; j < G; j++) {
                    const int8_t *q8 = ((const block_q8_K *)((const uint8_t *)a + j * a_stride) + i)->qs;
                    sumi[j] = _mm256_add_epi32(
                        sumi[j], _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, load_256(q8 + 128 * h + 32 * g))));
                }
            }
        }
        for (int j = 0; j < G; j++) {
            const block_q8_K *y = (const block_q8_K *)((const uint8_t *)a + j * a_stride) + i;
            const float d = y->d * xd;
            const __m256i corr = _mm256_madd_epi16(sc16, load_256(y->bsums));
            sumi[j] = _mm256_sub_epi32(sumi[j], _mm256_slli_epi32(corr, 5));
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
        }
    }
    for (int j = 0; j < G; j++) s[j * s_stride] = hsum_f32x8(acc[j]);
}

static void vec_dot_n_q6_K_avx2(float *s, size_t s_stride, const void *w, const void *a, size_t a_stride,
                                const float *a_d, int n, int n_act) {
    (void)a_d; /* Q8_K scales are floats already */
#define Q6_K_ROWS(G) q6_K_rows(s, s_stride, w, a, a_stride, n, G)
    VEC_DOT_N_PASSES(Q6_K_ROWS)
#undef Q6_K_ROWS
}

/* K-quant dequant: 8-bit unsigned q in a 32-byte vector -> 32 floats d1*q - m1.
 * Multiply then subtract, like the scalar code; the product is exact, so this is the
 * scalar's single rounding. */
static inline void store_affine_u8x32(float *dst, __m256i q, __m256 d1, __m256 m1) {
    const __m128i lo = _mm256_castsi256_si128(q);
    const __m128i hi = _mm256_extracti128_si256(q, 1);
    const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    const __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    const __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    _mm256_storeu_ps(dst + 0, _mm256_sub_ps(_mm256_mul_ps(d1, f0), m1));
    _mm256_storeu_ps(dst + 8, _mm256_sub_ps(_mm256_mul_ps(d1, f1), m1));
    _mm256_storeu_ps(dst + 16, _mm256_sub_ps(_mm256_mul_ps(d1, f2), m1));
    _mm256_storeu_ps(dst + 24, _mm256_sub_ps(_mm256_mul_ps(d1, f3), m1));
}

static void dequant_q4_K_avx2(float *dst, const void *src, int64_t n) {
    const block_q4_K *x = (const block_q4_K *)src;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(x[i].d);
        const float dmin = fp16_to_f32(x[i].dmin);
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, unpack_scales_mins_k4(x[i].scales));
        float *yv = dst + i * QK_K;
        for (int j = 0; j < 4; j++) {
            const __m256i b = load_256(x[i].qs + 32 * j);
            store_affine_u8x32(yv + 64 * j, _mm256_and_si256(b, m4), _mm256_set1_ps(d * (float)sm[2 * j]),
                               _mm256_set1_ps(dmin * (float)sm[8 + 2 * j]));
            store_affine_u8x32(yv + 64 * j + 32, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                               _mm256_set1_ps(d * (float)sm[2 * j + 1]),
                               _mm256_set1_ps(dmin * (float)sm[8 + 2 * j + 1]));
        }
    }
}

static void dequant_q5_K_avx2(float *dst, const void *src, int64_t n) {
    const block_q5_K *x = (const block_q5_K *)src;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(x[i].d);
        const float dmin = fp16_to_f32(x[i].dmin);
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, unpack_scales_mins_k4(x[i].scales));
        __m256i hbits = load_256(x[i].qh);
        float *yv = dst + i * QK_K;
        for (int j = 0; j < 4; j++) {
            const __m256i b = load_256(x[i].qs + 32 * j);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(b, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hbits, 4), b4));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hbits, 3), b4));
            hbits = _mm256_srli_epi16(hbits, 2);
            store_affine_u8x32(yv + 64 * j, lo, _mm256_set1_ps(d * (float)sm[2 * j]),
                               _mm256_set1_ps(dmin * (float)sm[8 + 2 * j]));
            store_affine_u8x32(yv + 64 * j + 32, hi, _mm256_set1_ps(d * (float)sm[2 * j + 1]),
                               _mm256_set1_ps(dmin * (float)sm[8 + 2 * j + 1]));
        }
    }
}

/* d * sc * (q - 32) with q - 32 as int8: exact in float whatever the association. */
static inline void store_q6_group(float *dst, __m256i q, float d, const int8_t *sc) {
    const __m128i lo = _mm256_castsi256_si128(q);
    const __m128i hi = _mm256_extracti128_si256(q, 1);
    const __m256 da = _mm256_set1_ps(d * (float)sc[0]); /* weights 0..15 */
    const __m256 db = _mm256_set1_ps(d * (float)sc[1]); /* weights 16..31 */
    _mm256_storeu_ps(dst + 0, _mm256_mul_ps(da, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(da, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(dst + 16, _mm256_mul_ps(db, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(dst + 24, _mm256_mul_ps(db, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

static void dequant_q6_K_avx2(float *dst, const void *src, int64_t n) {
    const block_q6_K *x = (const block_q6_K *)src;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2h = _mm256_set1_epi8(0x30);
    const __m256i k32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_f32(x[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            float *yv = dst + i * QK_K + 128 * h;
            const __m256i l0 = load_256(ql);
            const __m256i l1 = load_256(ql + 32);
            const __m256i hb = load_256(x[i].qh + 32 * h);
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2h));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2h));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_and_si256(hb, m2h));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2h));
            store_q6_group(yv + 0, _mm256_sub_epi8(q0, k32), d, sc + 0);
            store_q6_group(yv + 32, _mm256_sub_epi8(q1, k32), d, sc + 2);
            store_q6_group(yv + 64, _mm256_sub_epi8(q2, k32), d, sc + 4);
            store_q6_group(yv + 96, _mm256_sub_epi8(q3, k32), d, sc + 6);
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Attention over the f16 KV cache                                                        */
/* ------------------------------------------------------------------------------------ */

/* Scores of RQ query rows x RK cache rows: each dot has one 8-lane accumulator (FMA over
 * d in steps of 8), reduced by hsum_f32x8, then the tail (n % 8) added in order; the
 * order depends only on n.  The RQ * RK accumulators hide the FMA latency and each K row
 * is converted once per RQ query rows. */
SM_INLINE void attn_scores_tile(float *s, size_t s_stride, const float *q, size_t q_stride,
                                const sm_half *k, size_t k_stride, int n, const int RQ, const int RK) {
    __m256 acc[4][4];
    for (int i = 0; i < RQ; i++)
        for (int j = 0; j < RK; j++) acc[i][j] = _mm256_setzero_ps();
    int d = 0;
    for (; d + 8 <= n; d += 8) {
        __m256 kv[4];
        for (int j = 0; j < RK; j++) kv[j] = _mm256_cvtph_ps(load_128(k + j * k_stride + d));
        for (int i = 0; i < RQ; i++) {
            const __m256 qv = _mm256_loadu_ps(q + i * q_stride + d);
            for (int j = 0; j < RK; j++) acc[i][j] = _mm256_fmadd_ps(kv[j], qv, acc[i][j]);
        }
    }
    for (int i = 0; i < RQ; i++)
        for (int j = 0; j < RK; j++) {
            float t = hsum_f32x8(acc[i][j]);
            for (int e = d; e < n; e++) t += fp16_to_f32(k[j * k_stride + e]) * q[i * q_stride + e];
            s[i * s_stride + j] = t;
        }
}

static void attn_scores_avx2(float *s, size_t s_stride, const float *q, size_t q_stride, int n_q,
                             const sm_half *k, size_t k_stride, int n_k, int n) {
    int i = 0;
    for (; i + 4 <= n_q; i += 4) {
        int j = 0;
        for (; j + 2 <= n_k; j += 2)
            attn_scores_tile(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride,
                             k + j * k_stride, k_stride, n, 4, 2);
        for (; j < n_k; j++)
            attn_scores_tile(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride,
                             k + j * k_stride, k_stride, n, 4, 1);
    }
    for (; i < n_q; i++) {
        int j = 0;
        for (; j + 4 <= n_k; j += 4)
            attn_scores_tile(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride,
                             k + j * k_stride, k_stride, n, 1, 4);
        for (; j < n_k; j++)
            attn_scores_tile(s + i * s_stride + j, s_stride, q + i * q_stride, q_stride,
                             k + j * k_stride, k_stride, n, 1, 1);
    }
}

/* o (RQ rows, DW * 8 columns from d) += p . V, the cache rows taken in order j = 0.. with
 * one FMA per element and row; the o block stays in registers over all j. */
SM_INLINE void attn_pv_tile(float *o, size_t o_stride, const float *p, size_t p_stride,
                            const sm_half *v, size_t v_stride, int n_k, int d, const int RQ, const int DW) {
    __m256 acc[3][4];
    for (int i = 0; i < RQ; i++)
        for (int c = 0; c < DW; c++) acc[i][c] = _mm256_loadu_ps(o + i * o_stride + d + 8 * c);
    for (int j = 0; j < n_k; j++) {
        __m256 vv[4];
        for (int c = 0; c < DW; c++) vv[c] = _mm256_cvtph_ps(load_128(v + j * v_stride + d + 8 * c));
        for (int i = 0; i < RQ; i++) {
            const __m256 pv = _mm256_broadcast_ss(p + i * p_stride + j);
            for (int c = 0; c < DW; c++) acc[i][c] = _mm256_fmadd_ps(pv, vv[c], acc[i][c]);
        }
    }
    for (int i = 0; i < RQ; i++)
        for (int c = 0; c < DW; c++) _mm256_storeu_ps(o + i * o_stride + d + 8 * c, acc[i][c]);
}

static void attn_pv_avx2(float *o, size_t o_stride, const float *p, size_t p_stride, int n_q,
                         const sm_half *v, size_t v_stride, int n_k, int n) {
    const int n8 = n & ~7;
    int i = 0;
    for (; i + 3 <= n_q; i += 3) {
        int d = 0;
        for (; d + 32 <= n8; d += 32)
            attn_pv_tile(o + i * o_stride, o_stride, p + i * p_stride, p_stride, v, v_stride, n_k, d, 3, 4);
        for (; d < n8; d += 8)
            attn_pv_tile(o + i * o_stride, o_stride, p + i * p_stride, p_stride, v, v_stride, n_k, d, 3, 1);
    }
    for (; i < n_q; i++) {
        int d = 0;
        for (; d + 32 <= n8; d += 32)
            attn_pv_tile(o + i * o_stride, o_stride, p + i * p_stride, p_stride, v, v_stride, n_k, d, 1, 4);
        for (; d < n8; d += 8)
            attn_pv_tile(o + i * o_stride, o_stride, p + i * p_stride, p_stride, v, v_stride, n_k, d, 1, 1);
    }
    /* tail columns (n % 8): the same sums, one element at a time */
    if (n8 < n)
        for (int r = 0; r < n_q; r++)
            for (int j = 0; j < n_k; j++) {
                const float pj = p[r * p_stride + j];
                for (int e = n8; e < n; e++)
                    o[r * o_stride + e] = fmaf(pj, fp16_to_f32(v[j * v_stride + e]), o[r * o_stride + e]);
            }
}

/* ------------------------------------------------------------------------------------ */

void sm_fill_kernels_avx2(sm_kernels *k) {
    k->dequant[SM_TYPE_F16] = dequant_f16_avx2;
    /* no BF16 dequant: the scalar loop (a shift, which the compiler vectorizes) measured as
     * fast or up to 12% faster (smallmind bench --isa, Intel Xeon, 2026-12-07) */
    k->dequant[SM_TYPE_Q4_0] = dequant_q4_0_avx2;
    k->dequant[SM_TYPE_Q5_0] = dequant_q5_0_avx2;
    k->dequant[SM_TYPE_Q8_0] = dequant_q8_0_avx2;
    k->dequant[SM_TYPE_Q4_K] = dequant_q4_K_avx2;
    k->dequant[SM_TYPE_Q5_K] = dequant_q5_K_avx2;
    k->dequant[SM_TYPE_Q6_K] = dequant_q6_K_avx2;

    k->vec_dot[SM_TYPE_F32] = vec_dot_f32_avx2;
    k->vec_dot[SM_TYPE_F16] = vec_dot_f16_avx2;
    k->vec_dot[SM_TYPE_BF16] = vec_dot_bf16_avx2;
    k->vec_dot[SM_TYPE_Q4_0] = vec_dot_q4_0_avx2;
    k->vec_dot[SM_TYPE_Q5_0] = vec_dot_q5_0_avx2;
    k->vec_dot[SM_TYPE_Q8_0] = vec_dot_q8_0_avx2;
    k->vec_dot[SM_TYPE_Q4_K] = vec_dot_q4_K_avx2;
    k->vec_dot[SM_TYPE_Q5_K] = vec_dot_q5_K_avx2;
    k->vec_dot[SM_TYPE_Q6_K] = vec_dot_q6_K_avx2;

    k->vec_dot_n[SM_TYPE_Q4_0] = vec_dot_n_q4_0_avx2;
    k->vec_dot_n[SM_TYPE_Q5_0] = vec_dot_n_q5_0_avx2;
    k->vec_dot_n[SM_TYPE_Q8_0] = vec_dot_n_q8_0_avx2;
    k->vec_dot_n[SM_TYPE_Q4_K] = vec_dot_n_q4_K_avx2;
    k->vec_dot_n[SM_TYPE_Q5_K] = vec_dot_n_q5_K_avx2;
    k->vec_dot_n[SM_TYPE_Q6_K] = vec_dot_n_q6_K_avx2;

    k->vec_dot_tile[SM_TYPE_Q4_0] = vec_dot_tile_q4_0_avx2;
    k->vec_dot_tile[SM_TYPE_Q5_0] = vec_dot_tile_q5_0_avx2;
    k->vec_dot_tile[SM_TYPE_Q8_0] = vec_dot_tile_q8_0_avx2;
    /* quantize[] stays scalar so every ISA dots against identical activations */

    k->attn_scores = attn_scores_avx2;
    k->attn_pv = attn_pv_avx2;
}
