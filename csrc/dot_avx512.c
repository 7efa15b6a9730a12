/* AVX-512 kernels (F + BW + VL + DQ + VNNI).
 *
 * Built with -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni and
 * selected at run time only on CPUs that report all of them.  sm_fill_kernels_avx512()
 * overrides entries of a table already filled by the scalar (and AVX2) units; the
 * activation quantizers and the K-quant dequantizers are left as they are.
 *
 * Integer types: weights are unpacked to UNSIGNED bytes and multiplied with the signed
 * int8 activations by VPDPBUSD (u8 x s8, four products summed into each int32 lane):
 *   Q4_0 / Q5_0 / Q8_0   q in 0..15 / 0..31 / (w ^ 0x80) in 0..255; the offset o (8, 16,
 *                        128) is removed with a second VPDPBUSD of the constant o against
 *                        the same activations: sum((q - o) * a) = sum(q*a) - sum(o*a).
 *                        Two blocks per 512-bit vector, one float FMA per block pair.
 *   Q4_K / Q5_K          q in 0..15 / 0..31, sub-block scales applied in int32; the mins
 *                        enter through the activation's bsums (one VPMADDWD).
 *   Q6_K                 q in 0..63, the -32 offset also through bsums (per 16 weights).
 * Integer sums are exact, so results differ from the scalar reference only in the order
 * the float terms are added.  One float FMA per super-block for the K-quants.
 *
 * With -DSM_SIMDE the file builds on any x86-64 host through SIMDe (the tests run it that
 * way); the few AVX-512 conversions SIMDe 0.7.4 lacks are composed from 256-bit halves
 * there only (see "compat" below). */
#ifdef SM_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h> /* not pulled in by avx512.h in SIMDe 0.7.4 */
#else
#include <immintrin.h>
#endif

#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"

/* ------------------------------------------------------------------------------------ */
/* compat: conversions missing from SIMDe 0.7.4 (native aliases are macros, so #ifdef    */
/* sees a newer SIMDe that has them)                                                    */
/* ------------------------------------------------------------------------------------ */

#if defined(SM_SIMDE) && !defined(_mm512_cvtepi32_ps)
static inline __m512 cvt_i32_f32x16(__m512i v) {
    const __m256 lo = _mm256_cvtepi32_ps(_mm512_castsi512_si256(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
#else
#define cvt_i32_f32x16(v) _mm512_cvtepi32_ps(v)
#endif

#if defined(SM_SIMDE) && !defined(_mm512_cvtph_ps)
static inline __m512 cvt_f16_f32x16(__m256i h) {
    const __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    const __m256 hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
#else
#define cvt_f16_f32x16(h) _mm512_cvtph_ps(h)
#endif

#if defined(SM_SIMDE) && !defined(_mm512_cvtepu16_epi32)
static inline __m512i cvt_u16_u32x16(__m256i h) {
    const __m256i lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(h));
    const __m256i hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
#else
#define cvt_u16_u32x16(h) _mm512_cvtepu16_epi32(h)
#endif

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

static inline float hsum_f32x8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hsum_f32x16(__m512 v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum_f32x8(_mm256_add_ps(lo, hi));
}

/* int32 x16 -> int32 x8 by adding the two 256-bit halves */
static inline __m256i fold_i32x16(__m512i v) {
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* one binary16 -> float (exact) */
static inline float half_to_f32(sm_half h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* Two 32-byte vectors -> one 512-bit vector (a in the low half). */
static inline __m512i join_256(__m256i a, __m256i b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* ------------------------------------------------------------------------------------ */
/* float types: 4 x 16 lanes per iteration, scalar tail for n % 16                      */
/* ------------------------------------------------------------------------------------ */

static void vec_dot_f32_avx512(float *s, const void *w, const void *a, int n) {
    const float *x = (const float *)w;
    const float *y = (const float *)a;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
    float sum = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static inline __m512 load_f16x16(const sm_half *p) {
    return cvt_f16_f32x16(_mm256_loadu_si256((const __m256i *)p));
}

static void vec_dot_f16_avx512(float *s, const void *w, const void *a, int n) {
    const sm_half *x = (const sm_half *)w;
    const float *y = (const float *)a;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(load_f16x16(x + i), _mm512_loadu_ps(y + i), acc0);
        acc1 = _mm512_fmadd_ps(load_f16x16(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(load_f16x16(x + i + 32), _mm512_loadu_ps(y + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(load_f16x16(x + i + 48), _mm512_loadu_ps(y + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(load_f16x16(x + i), _mm512_loadu_ps(y + i), acc0);
    float sum = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += sm_half_to_float(x[i]) * y[i];
    *s = sum;
}

/* bf16 is the top half of an f32: widen to 32 bits and shift into place */
static inline __m512 load_bf16x16(const sm_bf16 *p) {
    const __m512i u = cvt_u16_u32x16(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

static void vec_dot_bf16_avx512(float *s, const void *w, const void *a, int n) {
    const sm_bf16 *x = (const sm_bf16 *)w;
    const float *y = (const float *)a;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        acc0 = _mm512_fmadd_ps(load_bf16x16(x + i), _mm512_loadu_ps(y + i), acc0);
        acc1 = _mm512_fmadd_ps(load_bf16x16(x + i + 16), _mm512_loadu_ps(y + i + 16), acc1);
        acc2 = _mm512_fmadd_ps(load_bf16x16(x + i + 32), _mm512_loadu_ps(y + i + 32), acc2);
        acc3 = _mm512_fmadd_ps(load_bf16x16(x + i + 48), _mm512_loadu_ps(y + i + 48), acc3);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(load_bf16x16(x + i), _mm512_loadu_ps(y + i), acc0);
    float sum = hsum_f32x16(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += sm_bf16_to_float(x[i]) * y[i];
    *s = sum;
}

/* Conversions are exact, so these equal the scalar dequantizers bit for bit. */
static void dequant_f16_avx512(float *dst, const void *src, int64_t n) {
    const sm_half *x = (const sm_half *)src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_f16x16(x + i));
    for (; i < n; i++) dst[i] = sm_half_to_float(x[i]);
}

static void dequant_bf16_avx512(float *dst, const void *src, int64_t n) {
    const sm_bf16 *x = (const sm_bf16 *)src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_bf16x16(x + i));
    for (; i < n; i++) dst[i] = sm_bf16_to_float(x[i]);
}

/* ------------------------------------------------------------------------------------ */
/* 32-weight blocks against Q8_0                                                        */
/* ------------------------------------------------------------------------------------ */

/* Each unpacker returns the 32 weights of one block as unsigned bytes in weight order
 * (matching the activation bytes), still carrying the type's offset. */

static inline __m256i unpack_q4_0(const block_q4_0 *b) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)b->qs);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

static inline uint32_t q5_0_high_bits(const block_q5_0 *b) {
    uint32_t qh;
    memcpy(&qh, b->qh, sizeof(qh));
    return qh;
}

/* low 4 bits only; bit 4 comes from qh as a mask (bit j -> byte j) */
static inline __m256i unpack_q5_0_low(const block_q5_0 *b) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)b->qs);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* signed int8 -> unsigned by flipping the sign bit: w + 128 */
static inline __m256i unpack_q8_0(const block_q8_0 *b) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b->qs), _mm256_set1_epi8((char)0x80));
}

static inline __m256i load_q8_0(const block_q8_0 *b) {
    return _mm256_loadu_si256((const __m256i *)b->qs);
}

/* sum((q - off) * a) per 4 bytes, for unsigned q and signed a */
static inline __m512i dot_offset_x64(__m512i q, __m512i act, __m512i off) {
    const __m512i zero = _mm512_setzero_si512();
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, q, act), _mm512_dpbusd_epi32(zero, off, act));
}

static inline __m256i dot_offset_x32(__m256i q, __m256i act, __m256i off) {
    const __m256i zero = _mm256_setzero_si256();
    return _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, q, act), _mm256_dpbusd_epi32(zero, off, act));
}

/* Per-lane float scales for a block pair: lanes 0..7 = wd0*ad0, lanes 8..15 = wd1*ad1. */
static inline __m512 pair_scale(sm_half wd0, sm_half wd1, sm_half ad0, sm_half ad1) {
    const __m128i h = _mm_cvtsi64_si128((long long)((uint64_t)wd0 | (uint64_t)wd1 << 16 |
                                                    (uint64_t)ad0 << 32 | (uint64_t)ad1 << 48));
    const __m128 f = _mm_cvtph_ps(h);                  /* wd0 wd1 ad0 ad1 */
    const __m128 p = _mm_mul_ps(f, _mm_movehl_ps(f, f)); /* wd0*ad0 wd1*ad1 .. */
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(p));
}

/* The three 32-block kernels share one shape: pairs of blocks in 512-bit vectors, and a
 * 256-bit step for an odd last block. */

static void vec_dot_q4_0_avx512(float *s, const void *w, const void *a, int n) {
    const block_q4_0 *x = (const block_q4_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK4_0;
    const __m512i off = _mm512_set1_epi8(8);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join_256(unpack_q4_0(&x[i]), unpack_q4_0(&x[i + 1]));
        const __m512i act = join_256(load_q8_0(&y[i]), load_q8_0(&y[i + 1]));
        const __m512i isum = dot_offset_x64(q, act, off);
        acc = _mm512_fmadd_ps(cvt_i32_f32x16(isum), pair_scale(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d), acc);
    }
    float sum = hsum_f32x16(acc);
    if (i < nb) {
        const __m256i isum = dot_offset_x32(unpack_q4_0(&x[i]), load_q8_0(&y[i]), _mm256_set1_epi8(8));
        sum += hsum_f32x8(_mm256_cvtepi32_ps(isum)) * (half_to_f32(x[i].d) * half_to_f32(y[i].d));
    }
    *s = sum;
}

static void vec_dot_q5_0_avx512(float *s, const void *w, const void *a, int n) {
    const block_q5_0 *x = (const block_q5_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK5_0;
    const __m512i off = _mm512_set1_epi8(16);
    const __m512i bit4 = _mm512_set1_epi8(16);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m512i q = join_256(unpack_q5_0_low(&x[i]), unpack_q5_0_low(&x[i + 1]));
        const uint64_t hi = (uint64_t)q5_0_high_bits(&x[i]) | (uint64_t)q5_0_high_bits(&x[i + 1]) << 32;
        q = _mm512_mask_add_epi8(q, hi, q, bit4); /* bit 4 is clear, so add == or */
        const __m512i act = join_256(load_q8_0(&y[i]), load_q8_0(&y[i + 1]));
        const __m512i isum = dot_offset_x64(q, act, off);
        acc = _mm512_fmadd_ps(cvt_i32_f32x16(isum), pair_scale(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d), acc);
    }
    float sum = hsum_f32x16(acc);
    if (i < nb) {
        const uint32_t hi = q5_0_high_bits(&x[i]);
        const __m256i q = _mm256_or_si256(unpack_q5_0_low(&x[i]), _mm256_maskz_mov_epi8(hi, _mm256_set1_epi8(16)));
        const __m256i isum = dot_offset_x32(q, load_q8_0(&y[i]), _mm256_set1_epi8(16));
        sum += hsum_f32x8(_mm256_cvtepi32_ps(isum)) * (half_to_f32(x[i].d) * half_to_f32(y[i].d));
    }
    *s = sum;
}

static void vec_dot_q8_0_avx512(float *s, const void *w, const void *a, int n) {
    const block_q8_0 *x = (const block_q8_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK8_0;
    const __m512i off = _mm512_set1_epi8((char)0x80);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join_256(unpack_q8_0(&x[i]), unpack_q8_0(&x[i + 1]));
        const __m512i act = join_256(load_q8_0(&y[i]), load_q8_0(&y[i + 1]));
        const __m512i isum = dot_offset_x64(q, act, off);
        acc = _mm512_fmadd_ps(cvt_i32_f32x16(isum), pair_scale(x[i].d, x[i + 1].d, y[i].d, y[i + 1].d), acc);
    }
    float sum = hsum_f32x16(acc);
    if (i < nb) {
        const __m256i isum = dot_offset_x32(unpack_q8_0(&x[i]), load_q8_0(&y[i]), _mm256_set1_epi8((char)0x80));
        sum += hsum_f32x8(_mm256_cvtepi32_ps(isum)) * (half_to_f32(x[i].d) * half_to_f32(y[i].d));
    }
    *s = sum;
}

/* Dequantizers: one product d * (q - off) per weight, as the scalar code, so bit-exact. */

static inline void store_scaled_32(float *dst, __m256i q_signed8, float d) {
    const __m512 vd = _mm512_set1_ps(d);
    const __m256i lo = _mm256_cvtepi8_epi32(_mm256_castsi256_si128(q_signed8));
    const __m256i lo2 = _mm256_cvtepi8_epi32(_mm_srli_si128(_mm256_castsi256_si128(q_signed8), 8));
    const __m128i hi128 = _mm256_extracti128_si256(q_signed8, 1);
    const __m256i hi = _mm256_cvtepi8_epi32(hi128);
    const __m256i hi2 = _mm256_cvtepi8_epi32(_mm_srli_si128(hi128, 8));
    _mm512_storeu_ps(dst, _mm512_mul_ps(cvt_i32_f32x16(join_256(lo, lo2)), vd));
    _mm512_storeu_ps(dst + 16, _mm512_mul_ps(cvt_i32_f32x16(join_256(hi, hi2)), vd));
}

static void dequant_q4_0_avx512(float *dst, const void *src, int64_t n) {
    const block_q4_0 *x = (const block_q4_0 *)src;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(unpack_q4_0(&x[i]), _mm256_set1_epi8(8));
        store_scaled_32(dst + i * QK4_0, q, half_to_f32(x[i].d));
    }
}

static void dequant_q5_0_avx512(float *dst, const void *src, int64_t n) {
    const block_q5_0 *x = (const block_q5_0 *)src;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++) {
        const uint32_t hi = q5_0_high_bits(&x[i]);
        const __m256i q = _mm256_or_si256(unpack_q5_0_low(&x[i]), _mm256_maskz_mov_epi8(hi, _mm256_set1_epi8(16)));
        store_scaled_32(dst + i * QK5_0, _mm256_sub_epi8(q, _mm256_set1_epi8(16)), half_to_f32(x[i].d));
    }
}

static void dequant_q8_0_avx512(float *dst, const void *src, int64_t n) {
    const block_q8_0 *x = (const block_q8_0 *)src;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) store_scaled_32(dst + i * QK8_0, load_q8_0(&x[i]), half_to_f32(x[i].d));
}

/* ------------------------------------------------------------------------------------ */
/* K-quants against Q8_K                                                                */
/* ------------------------------------------------------------------------------------ */

/* Q4_K/Q5_K: the 12 scale bytes as two u64 of 8 bytes each, sub-block order:
 * scales sc[0..7] and mins m[0..7].  Viewing the bytes as u32 words w0 w1 w2:
 *   sc[0..3] = w0 & 63,   m[0..3] = w1 & 63              (per byte)
 *   sc[4..7] = (w2 & 15) | (w0 >> 6) << 4
 *   m[4..7]  = (w2 >> 4 & 15) | (w1 >> 6) << 4           */
static inline void k4_scales_mins(const uint8_t *scales, uint64_t *sc, uint64_t *mn) {
    uint32_t w0, w1, w2;
    memcpy(&w0, scales, 4);
    memcpy(&w1, scales + 4, 4);
    memcpy(&w2, scales + 8, 4);
    const uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
    const uint32_t sc_lo = w0 & low6, m_lo = w1 & low6;
    const uint32_t sc_hi = (w2 & low4) | (((w0 >> 6) & low2) << 4);
    const uint32_t m_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & low2) << 4);
    *sc = (uint64_t)sc_lo | (uint64_t)sc_hi << 32;
    *mn = (uint64_t)m_lo | (uint64_t)m_hi << 32;
}

/* Lane index vectors: for 32-weight sub-block pairs (lanes 0..7 -> 2p, 8..15 -> 2p+1)
 * and for 16-weight sub-block quads (lanes 4k..4k+3 -> 4m+k). */
#define PAIR_IDX(p) _mm512_set_epi32(2 * (p) + 1, 2 * (p) + 1, 2 * (p) + 1, 2 * (p) + 1, 2 * (p) + 1, \
                                     2 * (p) + 1, 2 * (p) + 1, 2 * (p) + 1, 2 * (p), 2 * (p), 2 * (p), \
                                     2 * (p), 2 * (p), 2 * (p), 2 * (p), 2 * (p))
#define QUAD_IDX(m) _mm512_set_epi32(4 * (m) + 3, 4 * (m) + 3, 4 * (m) + 3, 4 * (m) + 3, 4 * (m) + 2, \
                                     4 * (m) + 2, 4 * (m) + 2, 4 * (m) + 2, 4 * (m) + 1, 4 * (m) + 1, \
                                     4 * (m) + 1, 4 * (m) + 1, 4 * (m), 4 * (m), 4 * (m), 4 * (m))

/* Mins term of Q4_K/Q5_K, per sub-block j: m[j] * (bsums[2j] + bsums[2j+1]), 8 x int32. */
static inline __m256i k4_mins_dot(uint64_t mn, const int16_t *bsums) {
    const __m128i m8 = _mm_cvtsi64_si128((long long)mn);
    const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)); /* m0 m0 m1 m1 .. */
    return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), m16);
}

/* [d, dmin] of a K block times the activation scale */
static inline __m128 k_scales(sm_half d, sm_half dmin, float ad) {
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d | (uint32_t)dmin << 16)));
    return _mm_mul_ps(f, _mm_set1_ps(ad));
}

static void vec_dot_q4_K_avx512(float *s, const void *w, const void *a, int n) {
    const block_q4_K *x = (const block_q4_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i zero = _mm512_setzero_si512();
    __m256 acc_d = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        uint64_t sc, mn;
        k4_scales_mins(x[i].scales, &sc, &mn);
        /* scales as int32 in lanes 0..7 (upper lanes unused by the permutes) */
        const __m512i sc32 = _mm512_castsi256_si512(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)));
        __m512i isum = zero;
        for (int p = 0; p < 4; p++) {
            /* 32 bytes: low nibbles = sub-block 2p, high nibbles = sub-block 2p+1 */
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * p));
            const __m512i q = _mm512_and_si512(join_256(raw, _mm256_srli_epi16(raw, 4)), low4);
            const __m512i act = _mm512_loadu_si512((const void *)(y[i].qs + 64 * p));
            const __m512i dot = _mm512_dpbusd_epi32(zero, q, act);
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, _mm512_permutexvar_epi32(PAIR_IDX(p), sc32)));
        }
        const __m128 dd = k_scales(x[i].d, x[i].dmin, y[i].d);
        acc_d = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold_i32x16(isum)), _mm256_broadcastss_ps(dd), acc_d);
        acc_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins_dot(mn, y[i].bsums)),
                                _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), acc_m);
    }
    *s = hsum_f32x8(_mm256_sub_ps(acc_d, acc_m));
}

/* Byte masks selecting qh bit 2p (low half) and 2p+1 (high half) for Q5_K pair p. */
#define Q5K_BITS(p) _mm512_set_epi64((long long)(0x0101010101010101ULL << (2 * (p) + 1)), \
                                     (long long)(0x0101010101010101ULL << (2 * (p) + 1)), \
                                     (long long)(0x0101010101010101ULL << (2 * (p) + 1)), \
                                     (long long)(0x0101010101010101ULL << (2 * (p) + 1)), \
                                     (long long)(0x0101010101010101ULL << (2 * (p))),     \
                                     (long long)(0x0101010101010101ULL << (2 * (p))),     \
                                     (long long)(0x0101010101010101ULL << (2 * (p))),     \
                                     (long long)(0x0101010101010101ULL << (2 * (p))))

static void vec_dot_q5_K_avx512(float *s, const void *w, const void *a, int n) {
    const block_q5_K *x = (const block_q5_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i bit4 = _mm512_set1_epi8(16);
    const __m512i zero = _mm512_setzero_si512();
    __m256 acc_d = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        uint64_t sc, mn;
        k4_scales_mins(x[i].scales, &sc, &mn);
        const __m512i sc32 = _mm512_castsi256_si512(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)));
        /* bit j of qh[l] is the 5th bit of weight l of sub-block j; qh in both halves */
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        const __m512i qh2 = join_256(qh, qh);
        __m512i isum = zero;
        for (int p = 0; p < 4; p++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * p));
            __m512i q = _mm512_and_si512(join_256(raw, _mm256_srli_epi16(raw, 4)), low4);
            q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(qh2, Q5K_BITS(p)), q, bit4);
            const __m512i act = _mm512_loadu_si512((const void *)(y[i].qs + 64 * p));
            const __m512i dot = _mm512_dpbusd_epi32(zero, q, act);
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, _mm512_permutexvar_epi32(PAIR_IDX(p), sc32)));
        }
        const __m128 dd = k_scales(x[i].d, x[i].dmin, y[i].d);
        acc_d = _mm256_fmadd_ps(_mm256_cvtepi32_ps(fold_i32x16(isum)), _mm256_broadcastss_ps(dd), acc_d);
        acc_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_mins_dot(mn, y[i].bsums)),
                                _mm256_broadcastss_ps(_mm_movehdup_ps(dd)), acc_m);
    }
    *s = hsum_f32x8(_mm256_sub_ps(acc_d, acc_m));
}

/* Q6_K, per half of 128 weights: ql[64] and qh[32].  With QL = ql[0..63] and
 * QH = [qh | qh >> 2] as 512-bit vectors (low half for weights 0..31, high for 32..63):
 *   weights  0..63 = (QL & 15)      | (QH << 4 & 0x30)
 *   weights 64..127 = (QL >> 4 & 15) | (QH & 0x30)
 * Each is in activation order, and its 16 int32 lanes cover four 16-weight sub-blocks. */
static void vec_dot_q6_K_avx512(float *s, const void *w, const void *a, int n) {
    const block_q6_K *x = (const block_q6_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i bits45 = _mm512_set1_epi8(0x30);
    const __m512i zero = _mm512_setzero_si512();
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m512i sc32 = join_256(_mm256_cvtepi8_epi32(sc8), _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8)));
        __m512i isum = zero;
        for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512((const void *)(x[i].ql + 64 * h));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            const __m512i qh2 = join_256(qh, _mm256_srli_epi16(qh, 2));
            const __m512i qa = _mm512_or_si512(_mm512_and_si512(ql, low4),
                                               _mm512_and_si512(_mm512_slli_epi16(qh2, 4), bits45));
            const __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                                               _mm512_and_si512(qh2, bits45));
            const __m512i da = _mm512_dpbusd_epi32(zero, qa, _mm512_loadu_si512((const void *)(y[i].qs + 128 * h)));
            const __m512i db = _mm512_dpbusd_epi32(zero, qb, _mm512_loadu_si512((const void *)(y[i].qs + 128 * h + 64)));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(da, _mm512_permutexvar_epi32(QUAD_IDX(2 * h), sc32)));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(db, _mm512_permutexvar_epi32(QUAD_IDX(2 * h + 1), sc32)));
        }
        /* the -32 offset: 32 * sum_j sc[j] * bsums[j] */
        const __m256i off = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), _mm256_cvtepi8_epi16(sc8));
        const __m256i tot = _mm256_sub_epi32(fold_i32x16(isum), _mm256_slli_epi32(off, 5));
        const float d = half_to_f32(x[i].d) * y[i].d;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_set1_ps(d), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ------------------------------------------------------------------------------------ */

void sm_fill_kernels_avx512(sm_kernels *k) {
    k->dequant[SM_TYPE_F16] = dequant_f16_avx512;
    k->dequant[SM_TYPE_BF16] = dequant_bf16_avx512;
    k->dequant[SM_TYPE_Q4_0] = dequant_q4_0_avx512;
    k->dequant[SM_TYPE_Q5_0] = dequant_q5_0_avx512;
    k->dequant[SM_TYPE_Q8_0] = dequant_q8_0_avx512;

    k->vec_dot[SM_TYPE_F32] = vec_dot_f32_avx512;
    k->vec_dot[SM_TYPE_F16] = vec_dot_f16_avx512;
    k->vec_dot[SM_TYPE_BF16] = vec_dot_bf16_avx512;
    k->vec_dot[SM_TYPE_Q4_0] = vec_dot_q4_0_avx512;
    k->vec_dot[SM_TYPE_Q5_0] = vec_dot_q5_0_avx512;
    k->vec_dot[SM_TYPE_Q8_0] = vec_dot_q8_0_avx512;
    k->vec_dot[SM_TYPE_Q4_K] = vec_dot_q4_K_avx512;
    k->vec_dot[SM_TYPE_Q5_K] = vec_dot_q5_K_avx512;
    k->vec_dot[SM_TYPE_Q6_K] = vec_dot_q6_K_avx512;
}
