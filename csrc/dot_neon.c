/* aarch64 NEON kernels (ASIMD + dot product extension).
 *
 * Built with -march=armv8.2-a+dotprod+fp16 and selected at run time only when the CPU
 * reports the dot-product instructions.  sm_fill_kernels_neon() overrides entries of a
 * table that sm_fill_kernels_scalar() has already filled; everything not set here keeps
 * the scalar kernel (the activation quantizers in particular).
 *
 * Integer types: weights are unpacked to signed int8 lanes (with the -8/-16/-32 offset
 * already applied, or, for Q4_K/Q5_K, kept unsigned with the mins folded in through the
 * activation's bsums) and multiplied against the int8 activations with SDOT.  Integer
 * sums are exact, so the only difference from the scalar reference is the order in which
 * the per-block float terms are added.
 *
 * Dequantizers use the same float operations in the same order as the scalar ones, so
 * their output is bit-identical.  Whether the compiler fuses the Q4_K/Q5_K "ds * q - dm"
 * into an FMA does not matter: ds = d * sc (11-bit fp16 mantissa times a 6-bit scale)
 * times a 5-bit q needs at most 22 significant bits, so the product is exact in f32.
 *
 * With -DSM_SIMDE the file builds on any host through SIMDe's NEON emulation (tests). */
#ifdef SM_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/arm/neon.h>
#else
#include <arm_neon.h>
#endif

#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

/* 4 binary16 values -> 4 floats with FCVTL (value-exact; used in the dot product). */
static inline float32x4_t load_f16x4(const sm_half *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

/* 4 binary16 values -> 4 floats, bit-exact with sm_half_to_float for every input.
 * FCVTL would quiet signalling NaNs (sets the f32 quiet bit), so the dequantizer uses
 * this integer rebias instead: shift exponent+mantissa into f32 position and add
 * (127-15) to the exponent; Inf/NaN get a second rebias to reach exponent 255; zeros and
 * subnormals are built as 2^-14 * (1 + m/1024) and then 2^-14 is subtracted (exact, and
 * the result m * 2^-24 is a normal f32, so flush-to-zero modes do not matter). */
static inline float32x4_t load_f16x4_exact(const sm_half *p) {
    const uint32x4_t h = vmovl_u16(vld1_u16(p));
    const uint32x4_t exp_mask = vdupq_n_u32(0x0f800000u); /* half exponent field, shifted */
    const uint32x4_t rebias = vdupq_n_u32(112u << 23);
    uint32x4_t o = vshlq_n_u32(vandq_u32(h, vdupq_n_u32(0x7fffu)), 13);
    const uint32x4_t e = vandq_u32(o, exp_mask);
    o = vaddq_u32(o, rebias);
    const uint32x4_t special = vceqq_u32(e, exp_mask);  /* Inf / NaN */
    const uint32x4_t tiny = vceqq_u32(e, vdupq_n_u32(0)); /* zero / subnormal */
    o = vbslq_u32(special, vaddq_u32(o, rebias), o);
    const float32x4_t magic = vreinterpretq_f32_u32(vdupq_n_u32(113u << 23)); /* 2^-14 */
    const float32x4_t renorm = vsubq_f32(vreinterpretq_f32_u32(vaddq_u32(o, vdupq_n_u32(1u << 23))), magic);
    o = vbslq_u32(tiny, vreinterpretq_u32_f32(renorm), o);
    o = vorrq_u32(o, vshlq_n_u32(vandq_u32(h, vdupq_n_u32(0x8000u)), 16));
    return vreinterpretq_f32_u32(o);
}

/* 4 bfloat16 values -> 4 floats: the bf16 bits are the top half of the f32 bits. */
static inline float32x4_t load_bf16x4(const sm_bf16 *p) {
    return vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(vld1_u16(p)), 16));
}

/* Integer dot product of 32 int8 lanes, left as 4 partial sums. */
static inline int32x4_t sdot32(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1) {
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, b0), a1, b1);
}

static inline int8x16_t as_s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

/* The 6-bit scales and mins of the 8 sub-blocks of a Q4_K/Q5_K super-block.
 * Bytes 0..3: scale j (low 6 bits) + top 2 bits of scale j+4.
 * Bytes 4..7: min j (low 6 bits) + top 2 bits of min j+4.
 * Bytes 8..11: low 4 bits of scale j+4 (low nibble) and of min j+4 (high nibble).
 * Done four bytes at a time on 32-bit words (little-endian, as aarch64 Linux is). */
static inline void unpack_scales_mins_k4(const uint8_t *packed, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t w[3];
    memcpy(w, packed, sizeof(w));
    const uint32_t low6 = 0x3f3f3f3fu, low4 = 0x0f0f0f0fu, bits45 = 0x30303030u;
    const uint32_t sc_lo = w[0] & low6;
    const uint32_t mn_lo = w[1] & low6;
    /* (byte >> 6) << 4 == (byte >> 2) & 0x30 per byte; the mask drops bits that the word
     * shift carried in from the neighbouring byte */
    const uint32_t sc_hi = (w[2] & low4) | ((w[0] >> 2) & bits45);
    const uint32_t mn_hi = ((w[2] >> 4) & low4) | ((w[1] >> 2) & bits45);
    memcpy(sc, &sc_lo, 4);
    memcpy(sc + 4, &sc_hi, 4);
    memcpy(mn, &mn_lo, 4);
    memcpy(mn + 4, &mn_hi, 4);
}

/* sum_j mn[j] * (bsums[2j] + bsums[2j+1]): the Q8_K activation sums per 32-weight
 * sub-block, weighted by the sub-block mins.  A pair of bsums is at most 32*128 in
 * magnitude, so the pairwise add stays in int16. */
static inline int32_t mins_dot_bsums(const uint8_t mn[8], const int16_t *bsums) {
    const int16x8_t pair = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    const int16x8_t m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
    int32x4_t acc = vmull_s16(vget_low_s16(pair), vget_low_s16(m));
    acc = vmlal_s16(acc, vget_high_s16(pair), vget_high_s16(m));
    return vaddvq_s32(acc);
}

/* dst[0:16] = d * (float)q, lane by lane (one rounding, as the scalar code). */
static inline void store_scaled_s8(float *dst, int8x16_t q, float32x4_t d) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q));
    const int16x8_t hi = vmovl_high_s8(q);
    vst1q_f32(dst + 0, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)))));
    vst1q_f32(dst + 4, vmulq_f32(d, vcvtq_f32_s32(vmovl_high_s16(lo))));
    vst1q_f32(dst + 8, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)))));
    vst1q_f32(dst + 12, vmulq_f32(d, vcvtq_f32_s32(vmovl_high_s16(hi))));
}

/* dst[0:16] = d * (float)q - m for unsigned q (K-quant sub-blocks with a min). */
static inline void store_scaled_min_u8(float *dst, uint8x16_t q, float32x4_t d, float32x4_t m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q));
    const uint16x8_t hi = vmovl_high_u8(q);
    vst1q_f32(dst + 0, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)))), m));
    vst1q_f32(dst + 4, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_high_u16(lo))), m));
    vst1q_f32(dst + 8, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)))), m));
    vst1q_f32(dst + 12, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(vmovl_high_u16(hi))), m));
}

/* Q5_0: spread the 32 bits of qh (bit j = 5th bit of weight j) to bytes holding 0x10
 * where the bit is set.  Byte k of qh covers weights 8k..8k+7. */
static inline void q5_0_high_bits(const uint8_t *qh, uint8x16_t *h_lo, uint8x16_t *h_hi) {
    uint32_t bits;
    memcpy(&bits, qh, sizeof(bits));
    const uint8x16_t rep = vreinterpretq_u8_u32(vdupq_n_u32(bits)); /* b0 b1 b2 b3 b0 ... */
    const uint8_t sel_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint8_t sel_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    const uint8_t lane_bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bit = vld1q_u8(lane_bit);
    const uint8x16_t v16 = vdupq_n_u8(0x10);
    *h_lo = vandq_u8(vtstq_u8(vqtbl1q_u8(rep, vld1q_u8(sel_lo)), bit), v16);
    *h_hi = vandq_u8(vtstq_u8(vqtbl1q_u8(rep, vld1q_u8(sel_hi)), bit), v16);
}

/* ------------------------------------------------------------------------------------ */
/* float types                                                                          */
/* ------------------------------------------------------------------------------------ */

/* Four independent float accumulators hide the FMA latency; the tail is scalar. */
static void vec_dot_f32_neon(float *s, const void *w, const void *a, int n) {
    const float *x = (const float *)w;
    const float *y = (const float *)a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(x + i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
        acc2 = vfmaq_f32(acc2, vld1q_f32(x + i + 8), vld1q_f32(y + i + 8));
        acc3 = vfmaq_f32(acc3, vld1q_f32(x + i + 12), vld1q_f32(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(x + i), vld1q_f32(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static void vec_dot_f16_neon(float *s, const void *w, const void *a, int n) {
    const sm_half *x = (const sm_half *)w;
    const float *y = (const float *)a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, load_f16x4(x + i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, load_f16x4(x + i + 4), vld1q_f32(y + i + 4));
        acc2 = vfmaq_f32(acc2, load_f16x4(x + i + 8), vld1q_f32(y + i + 8));
        acc3 = vfmaq_f32(acc3, load_f16x4(x + i + 12), vld1q_f32(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, load_f16x4(x + i), vld1q_f32(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++) sum += sm_half_to_float(x[i]) * y[i];
    *s = sum;
}

static void vec_dot_bf16_neon(float *s, const void *w, const void *a, int n) {
    const sm_bf16 *x = (const sm_bf16 *)w;
    const float *y = (const float *)a;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, load_bf16x4(x + i), vld1q_f32(y + i));
        acc1 = vfmaq_f32(acc1, load_bf16x4(x + i + 4), vld1q_f32(y + i + 4));
        acc2 = vfmaq_f32(acc2, load_bf16x4(x + i + 8), vld1q_f32(y + i + 8));
        acc3 = vfmaq_f32(acc3, load_bf16x4(x + i + 12), vld1q_f32(y + i + 12));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, load_bf16x4(x + i), vld1q_f32(y + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    for (; i < n; i++) sum += sm_bf16_to_float(x[i]) * y[i];
    *s = sum;
}

static void dequant_f16_neon(float *dst, const void *src, int64_t n) {
    const sm_half *x = (const sm_half *)src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, load_f16x4_exact(x + i));
    for (; i < n; i++) dst[i] = sm_half_to_float(x[i]);
}

static void dequant_bf16_neon(float *dst, const void *src, int64_t n) {
    const sm_bf16 *x = (const sm_bf16 *)src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, load_bf16x4(x + i));
    for (; i < n; i++) dst[i] = sm_bf16_to_float(x[i]);
}

/* ------------------------------------------------------------------------------------ */
/* 32-weight blocks against Q8_0                                                        */
/* ------------------------------------------------------------------------------------ */

/* Each block gives an int32x4 of partial sums; it is converted and scaled by
 * d_w * d_a with one vector FMA into one of two accumulators (alternating blocks). */

static inline int32x4_t q4_0_block_dot(const block_q4_0 *x, const block_q8_0 *y) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8(8);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t lo = vsubq_s8(as_s8(vandq_u8(q, m4)), off); /* weights 0..15 */
    const int8x16_t hi = vsubq_s8(as_s8(vshrq_n_u8(q, 4)), off); /* weights 16..31 */
    return sdot32(lo, hi, vld1q_s8(y->qs), vld1q_s8(y->qs + 16));
}

static inline int32x4_t q5_0_block_dot(const block_q5_0 *x, const block_q8_0 *y) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8(16);
    uint8x16_t h_lo, h_hi;
    q5_0_high_bits(x->qh, &h_lo, &h_hi);
    const uint8x16_t q = vld1q_u8(x->qs);
    const int8x16_t lo = vsubq_s8(as_s8(vorrq_u8(vandq_u8(q, m4), h_lo)), off);
    const int8x16_t hi = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(q, 4), h_hi)), off);
    return sdot32(lo, hi, vld1q_s8(y->qs), vld1q_s8(y->qs + 16));
}

static inline int32x4_t q8_0_block_dot(const block_q8_0 *x, const block_q8_0 *y) {
    return sdot32(vld1q_s8(x->qs), vld1q_s8(x->qs + 16), vld1q_s8(y->qs), vld1q_s8(y->qs + 16));
}

#define SM_NEON_DOT_Q8_0(NAME, WTYPE, BLOCK_DOT)                                          \
    static void NAME(float *s, const void *w, const void *a, int n) {                     \
        const WTYPE *x = (const WTYPE *)w;                                                \
        const block_q8_0 *y = (const block_q8_0 *)a;                                      \
        const int nb = n / QK8_0;                                                         \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;                                \
        int i = 0;                                                                        \
        for (; i + 2 <= nb; i += 2) {                                                     \
            const int32x4_t p0 = BLOCK_DOT(&x[i], &y[i]);                                 \
            const int32x4_t p1 = BLOCK_DOT(&x[i + 1], &y[i + 1]);                         \
            const float d0 = sm_half_to_float(x[i].d) * sm_half_to_float(y[i].d);         \
            const float d1 = sm_half_to_float(x[i + 1].d) * sm_half_to_float(y[i + 1].d); \
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(p0), vdupq_n_f32(d0));                   \
            acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(p1), vdupq_n_f32(d1));                   \
        }                                                                                 \
        if (i < nb) {                                                                     \
            const int32x4_t p0 = BLOCK_DOT(&x[i], &y[i]);                                 \
            const float d0 = sm_half_to_float(x[i].d) * sm_half_to_float(y[i].d);         \
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(p0), vdupq_n_f32(d0));                   \
        }                                                                                 \
        *s = vaddvq_f32(vaddq_f32(acc0, acc1));                                           \
    }

SM_NEON_DOT_Q8_0(vec_dot_q4_0_neon, block_q4_0, q4_0_block_dot)
SM_NEON_DOT_Q8_0(vec_dot_q5_0_neon, block_q5_0, q5_0_block_dot)
SM_NEON_DOT_Q8_0(vec_dot_q8_0_neon, block_q8_0, q8_0_block_dot)

#undef SM_NEON_DOT_Q8_0

static void dequant_q4_0_neon(float *dst, const void *src, int64_t n) {
    const block_q4_0 *x = (const block_q4_0 *)src;
    const int64_t nb = n / QK4_0;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8(8);
    for (int64_t i = 0; i < nb; i++) {
        const float32x4_t d = vdupq_n_f32(sm_half_to_float(x[i].d));
        const uint8x16_t q = vld1q_u8(x[i].qs);
        store_scaled_s8(dst + i * QK4_0, vsubq_s8(as_s8(vandq_u8(q, m4)), off), d);
        store_scaled_s8(dst + i * QK4_0 + 16, vsubq_s8(as_s8(vshrq_n_u8(q, 4)), off), d);
    }
}

static void dequant_q5_0_neon(float *dst, const void *src, int64_t n) {
    const block_q5_0 *x = (const block_q5_0 *)src;
    const int64_t nb = n / QK5_0;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t off = vdupq_n_s8(16);
    for (int64_t i = 0; i < nb; i++) {
        const float32x4_t d = vdupq_n_f32(sm_half_to_float(x[i].d));
        uint8x16_t h_lo, h_hi;
        q5_0_high_bits(x[i].qh, &h_lo, &h_hi);
        const uint8x16_t q = vld1q_u8(x[i].qs);
        store_scaled_s8(dst + i * QK5_0, vsubq_s8(as_s8(vorrq_u8(vandq_u8(q, m4), h_lo)), off), d);
        store_scaled_s8(dst + i * QK5_0 + 16, vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(q, 4), h_hi)), off), d);
    }
}

static void dequant_q8_0_neon(float *dst, const void *src, int64_t n) {
    const block_q8_0 *x = (const block_q8_0 *)src;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float32x4_t d = vdupq_n_f32(sm_half_to_float(x[i].d));
        store_scaled_s8(dst + i * QK8_0, vld1q_s8(x[i].qs), d);
        store_scaled_s8(dst + i * QK8_0 + 16, vld1q_s8(x[i].qs + 16), d);
    }
}

/* ------------------------------------------------------------------------------------ */
/* K-quants against Q8_K                                                                */
/* ------------------------------------------------------------------------------------ */

/* Q4_K: 4 chunks of 32 bytes; low nibbles are sub-block 2c, high nibbles 2c+1.  The
 * 4-bit values stay unsigned (0..15 fits int8), the mins come in through bsums.
 * Per super-block: sum sc*dot <= 8 * 63 * 32*15*128, well inside int32. */
static void vec_dot_q4_K_neon(float *s, const void *w, const void *a, int n) {
    const block_q4_K *x = (const block_q4_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        uint8_t sc[8], mn[8];
        unpack_scales_mins_k4(x[i].scales, sc, mn);
        const int32_t summ = mins_dot_bsums(mn, y[i].bsums);

        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        int32x4_t acc = vdupq_n_s32(0);
        for (int c = 0; c < 4; c++) {
            const uint8x16_t b0 = vld1q_u8(q4), b1 = vld1q_u8(q4 + 16);
            const int32x4_t p_lo = sdot32(as_s8(vandq_u8(b0, m4)), as_s8(vandq_u8(b1, m4)),
                                          vld1q_s8(q8), vld1q_s8(q8 + 16));
            const int32x4_t p_hi = sdot32(as_s8(vshrq_n_u8(b0, 4)), as_s8(vshrq_n_u8(b1, 4)),
                                          vld1q_s8(q8 + 32), vld1q_s8(q8 + 48));
            acc = vmlaq_n_s32(acc, p_lo, sc[2 * c]);
            acc = vmlaq_n_s32(acc, p_hi, sc[2 * c + 1]);
            q4 += 32;
            q8 += 64;
        }
        const float d = sm_half_to_float(x[i].d) * y[i].d;
        const float dmin = sm_half_to_float(x[i].dmin) * y[i].d;
        sumf += d * (float)vaddvq_s32(acc) - dmin * (float)summ;
    }
    *s = sumf;
}

/* Q5_K: as Q4_K plus a 5th bit: bit 2c of qh[l] belongs to weight l of sub-block 2c,
 * bit 2c+1 to weight l of sub-block 2c+1.  Values 0..31 stay unsigned. */
static void vec_dot_q5_K_neon(float *s, const void *w, const void *a, int n) {
    const block_q5_K *x = (const block_q5_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const uint8x16_t bit0 = vdupq_n_u8(0x01), bit1 = vdupq_n_u8(0x02);
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        uint8_t sc[8], mn[8];
        unpack_scales_mins_k4(x[i].scales, sc, mn);
        const int32_t summ = mins_dot_bsums(mn, y[i].bsums);

        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        uint8x16_t h0 = vld1q_u8(x[i].qh), h1 = vld1q_u8(x[i].qh + 16);
        int32x4_t acc = vdupq_n_s32(0);
        for (int c = 0; c < 4; c++) {
            const uint8x16_t b0 = vld1q_u8(q4), b1 = vld1q_u8(q4 + 16);
            /* bit 0 -> 0x10 for the low-nibble sub-block, bit 1 -> 0x10 for the high one */
            const uint8x16_t lo0 = vorrq_u8(vandq_u8(b0, m4), vshlq_n_u8(vandq_u8(h0, bit0), 4));
            const uint8x16_t lo1 = vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8(vandq_u8(h1, bit0), 4));
            const uint8x16_t hi0 = vorrq_u8(vshrq_n_u8(b0, 4), vshlq_n_u8(vandq_u8(h0, bit1), 3));
            const uint8x16_t hi1 = vorrq_u8(vshrq_n_u8(b1, 4), vshlq_n_u8(vandq_u8(h1, bit1), 3));
            const int32x4_t p_lo = sdot32(as_s8(lo0), as_s8(lo1), vld1q_s8(q8), vld1q_s8(q8 + 16));
            const int32x4_t p_hi = sdot32(as_s8(hi0), as_s8(hi1), vld1q_s8(q8 + 32), vld1q_s8(q8 + 48));
            acc = vmlaq_n_s32(acc, p_lo, sc[2 * c]);
            acc = vmlaq_n_s32(acc, p_hi, sc[2 * c + 1]);
            h0 = vshrq_n_u8(h0, 2);
            h1 = vshrq_n_u8(h1, 2);
            q4 += 32;
            q8 += 64;
        }
        const float d = sm_half_to_float(x[i].d) * y[i].d;
        const float dmin = sm_half_to_float(x[i].dmin) * y[i].d;
        sumf += d * (float)vaddvq_s32(acc) - dmin * (float)summ;
    }
    *s = sumf;
}

/* Q6_K: each half of 128 weights takes 64 bytes of ql and 32 of qh.  qh[l] holds the two
 * high bits of weights l, l+32, l+64, l+96 (bits 0-1, 2-3, 4-5, 6-7), moved to bits 4-5
 * with a shift and a 0x30 mask.  The -32 offset is applied in int8 (range -32..31), and
 * each 16-weight sub-block's SDOT result is scaled by its signed 8-bit scale.
 * Per super-block: |sum| <= 16 * 128 * 16*32*128, inside int32. */
static void vec_dot_q6_K_neon(float *s, const void *w, const void *a, int n) {
    const block_q6_K *x = (const block_q6_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const uint8x16_t m30 = vdupq_n_u8(0x30);
    const int8x16_t off = vdupq_n_s8(32);
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        const int8_t *sc = x[i].scales;
        int32x4_t acc = vdupq_n_s32(0);
        for (int half = 0; half < 2; half++) {
            const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
            const uint8x16_t l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);

            /* weights 0..31 of the half: low nibbles of ql[0..31], qh bits 0-1 */
            const int8x16_t qa0 = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h0, 4), m30))), off);
            const int8x16_t qa1 = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h1, 4), m30))), off);
            /* weights 32..63: low nibbles of ql[32..63], qh bits 2-3 */
            const int8x16_t qb0 = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l2, m4), vandq_u8(vshlq_n_u8(h0, 2), m30))), off);
            const int8x16_t qb1 = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l3, m4), vandq_u8(vshlq_n_u8(h1, 2), m30))), off);
            /* weights 64..95: high nibbles of ql[0..31], qh bits 4-5 */
            const int8x16_t qc0 = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h0, m30))), off);
            const int8x16_t qc1 = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(h1, m30))), off);
            /* weights 96..127: high nibbles of ql[32..63], qh bits 6-7 */
            const int8x16_t qd0 = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l2, 4), vandq_u8(vshrq_n_u8(h0, 2), m30))), off);
            const int8x16_t qd1 = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l3, 4), vandq_u8(vshrq_n_u8(h1, 2), m30))), off);

            const int32x4_t zero = vdupq_n_s32(0);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qa0, vld1q_s8(q8 + 0)), sc[0]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qa1, vld1q_s8(q8 + 16)), sc[1]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qb0, vld1q_s8(q8 + 32)), sc[2]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qb1, vld1q_s8(q8 + 48)), sc[3]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qc0, vld1q_s8(q8 + 64)), sc[4]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qc1, vld1q_s8(q8 + 80)), sc[5]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qd0, vld1q_s8(q8 + 96)), sc[6]);
            acc = vmlaq_n_s32(acc, vdotq_s32(zero, qd1, vld1q_s8(q8 + 112)), sc[7]);

            ql += 64;
            qh += 32;
            q8 += 128;
            sc += 8;
        }
        sumf += sm_half_to_float(x[i].d) * y[i].d * (float)vaddvq_s32(acc);
    }
    *s = sumf;
}

/* Dequantizers: per sub-block, ds = d * sc and dm = dmin * m once, then ds * q - dm per
 * weight, exactly the scalar expression. */
static void dequant_q4_K_neon(float *dst, const void *src, int64_t n) {
    const block_q4_K *x = (const block_q4_K *)src;
    const int64_t nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const float dmin = sm_half_to_float(x[i].dmin);
        uint8_t sc[8], mn[8];
        unpack_scales_mins_k4(x[i].scales, sc, mn);
        const uint8_t *q = x[i].qs;
        float *out = dst + i * QK_K;
        for (int c = 0; c < 4; c++) {
            const float32x4_t d1 = vdupq_n_f32(d * (float)sc[2 * c]);
            const float32x4_t m1 = vdupq_n_f32(dmin * (float)mn[2 * c]);
            const float32x4_t d2 = vdupq_n_f32(d * (float)sc[2 * c + 1]);
            const float32x4_t m2 = vdupq_n_f32(dmin * (float)mn[2 * c + 1]);
            const uint8x16_t b0 = vld1q_u8(q), b1 = vld1q_u8(q + 16);
            store_scaled_min_u8(out + 0, vandq_u8(b0, m4), d1, m1);
            store_scaled_min_u8(out + 16, vandq_u8(b1, m4), d1, m1);
            store_scaled_min_u8(out + 32, vshrq_n_u8(b0, 4), d2, m2);
            store_scaled_min_u8(out + 48, vshrq_n_u8(b1, 4), d2, m2);
            q += 32;
            out += 64;
        }
    }
}

static void dequant_q5_K_neon(float *dst, const void *src, int64_t n) {
    const block_q5_K *x = (const block_q5_K *)src;
    const int64_t nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const uint8x16_t bit0 = vdupq_n_u8(0x01), bit1 = vdupq_n_u8(0x02);
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const float dmin = sm_half_to_float(x[i].dmin);
        uint8_t sc[8], mn[8];
        unpack_scales_mins_k4(x[i].scales, sc, mn);
        const uint8_t *q = x[i].qs;
        uint8x16_t h0 = vld1q_u8(x[i].qh), h1 = vld1q_u8(x[i].qh + 16);
        float *out = dst + i * QK_K;
        for (int c = 0; c < 4; c++) {
            const float32x4_t d1 = vdupq_n_f32(d * (float)sc[2 * c]);
            const float32x4_t m1 = vdupq_n_f32(dmin * (float)mn[2 * c]);
            const float32x4_t d2 = vdupq_n_f32(d * (float)sc[2 * c + 1]);
            const float32x4_t m2 = vdupq_n_f32(dmin * (float)mn[2 * c + 1]);
            const uint8x16_t b0 = vld1q_u8(q), b1 = vld1q_u8(q + 16);
            store_scaled_min_u8(out + 0, vorrq_u8(vandq_u8(b0, m4), vshlq_n_u8(vandq_u8(h0, bit0), 4)), d1, m1);
            store_scaled_min_u8(out + 16, vorrq_u8(vandq_u8(b1, m4), vshlq_n_u8(vandq_u8(h1, bit0), 4)), d1, m1);
            store_scaled_min_u8(out + 32, vorrq_u8(vshrq_n_u8(b0, 4), vshlq_n_u8(vandq_u8(h0, bit1), 3)), d2, m2);
            store_scaled_min_u8(out + 48, vorrq_u8(vshrq_n_u8(b1, 4), vshlq_n_u8(vandq_u8(h1, bit1), 3)), d2, m2);
            h0 = vshrq_n_u8(h0, 2);
            h1 = vshrq_n_u8(h1, 2);
            q += 32;
            out += 64;
        }
    }
}

static void dequant_q6_K_neon(float *dst, const void *src, int64_t n) {
    const block_q6_K *x = (const block_q6_K *)src;
    const int64_t nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const uint8x16_t m30 = vdupq_n_u8(0x30);
    const int8x16_t off = vdupq_n_s8(32);
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        float *out = dst + i * QK_K;
        for (int half = 0; half < 2; half++) {
            const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
            const uint8x16_t l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
            int8x16_t q[8];
            q[0] = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h0, 4), m30))), off);
            q[1] = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h1, 4), m30))), off);
            q[2] = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l2, m4), vandq_u8(vshlq_n_u8(h0, 2), m30))), off);
            q[3] = vsubq_s8(as_s8(vorrq_u8(vandq_u8(l3, m4), vandq_u8(vshlq_n_u8(h1, 2), m30))), off);
            q[4] = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h0, m30))), off);
            q[5] = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(h1, m30))), off);
            q[6] = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l2, 4), vandq_u8(vshrq_n_u8(h0, 2), m30))), off);
            q[7] = vsubq_s8(as_s8(vorrq_u8(vshrq_n_u8(l3, 4), vandq_u8(vshrq_n_u8(h1, 2), m30))), off);
            /* scalar order: (d * sc) * q */
            for (int k = 0; k < 8; k++)
                store_scaled_s8(out + 16 * k, q[k], vdupq_n_f32(d * (float)sc[k]));
            ql += 64;
            qh += 32;
            sc += 8;
            out += 128;
        }
    }
}

/* ------------------------------------------------------------------------------------ */

void sm_fill_kernels_neon(sm_kernels *k) {
    k->dequant[SM_TYPE_F16] = dequant_f16_neon;
    k->dequant[SM_TYPE_BF16] = dequant_bf16_neon;
    k->dequant[SM_TYPE_Q4_0] = dequant_q4_0_neon;
    k->dequant[SM_TYPE_Q5_0] = dequant_q5_0_neon;
    k->dequant[SM_TYPE_Q8_0] = dequant_q8_0_neon;
    k->dequant[SM_TYPE_Q4_K] = dequant_q4_K_neon;
    k->dequant[SM_TYPE_Q5_K] = dequant_q5_K_neon;
    k->dequant[SM_TYPE_Q6_K] = dequant_q6_K_neon;

    k->vec_dot[SM_TYPE_F32] = vec_dot_f32_neon;
    k->vec_dot[SM_TYPE_F16] = vec_dot_f16_neon;
    k->vec_dot[SM_TYPE_BF16] = vec_dot_bf16_neon;
    k->vec_dot[SM_TYPE_Q4_0] = vec_dot_q4_0_neon;
    k->vec_dot[SM_TYPE_Q5_0] = vec_dot_q5_0_neon;
    k->vec_dot[SM_TYPE_Q8_0] = vec_dot_q8_0_neon;
    k->vec_dot[SM_TYPE_Q4_K] = vec_dot_q4_K_neon;
    k->vec_dot[SM_TYPE_Q5_K] = vec_dot_q5_K_neon;
    k->vec_dot[SM_TYPE_Q6_K] = vec_dot_q6_K_neon;
}
