/* Portable scalar kernels: the reference every SIMD path is tested against.
 *
 * Dequantization is bit-exact with ggml (and with gguf-py's numpy code): every weight is
 * computed with the same float operations in the same order.  The integer dot products
 * follow llama.cpp: int32 sums of q_w * q_a inside a block or sub-block, scaled by the
 * float scales only once per block, so only the float summation order across blocks may
 * differ from another implementation. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "quants.h"

/* Dequantization must round each product on its own, as ggml's reference and numpy do.
 * With -std=gnu11 (GCC) or by default (clang), an FMA target such as aarch64 would fuse
 * "d1 * q - m1" and change the last bit, so contraction is switched off for this file. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                              */
/* ------------------------------------------------------------------------------------ */

/* Sub-block j (0..7) of a Q4_K/Q5_K super-block has a 6-bit scale and a 6-bit min.
 * Sub-blocks 0..3 keep them in the low 6 bits of bytes j and j+4; sub-blocks 4..7 keep
 * their low 4 bits in byte j+4 (scale: low nibble, min: high nibble) and borrow the top
 * 2 bits of bytes j-4 and j as their high bits. */
static inline void unpack_k4_scale_min(const uint8_t *scales, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (uint8_t)((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4));
        *m = (uint8_t)((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
    }
}

/* llama.cpp's nearest_int: adding 1.5 * 2^23 leaves the rounded integer (ties to even) in
 * the low mantissa bits.  Q8_K needs exactly this rounding, not roundf's ties-away.
 * Valid for |x| < 2^22, which |iscale * x| <= 127 always is. */
static inline int nearest_int_k(float x) {
    const float v = x + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

/* ------------------------------------------------------------------------------------ */
/* float types                                                                          */
/* ------------------------------------------------------------------------------------ */

static void dequant_f32(float *dst, const void *src, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void dequant_f16(float *dst, const void *src, int64_t n) {
    const sm_half *x = (const sm_half *)src;
    for (int64_t i = 0; i < n; i++) dst[i] = sm_half_to_float(x[i]);
}

static void dequant_bf16(float *dst, const void *src, int64_t n) {
    const sm_bf16 *x = (const sm_bf16 *)src;
    for (int64_t i = 0; i < n; i++) dst[i] = sm_bf16_to_float(x[i]);
}

/* The float dots accumulate in double, as ggml's generic ggml_vec_dot_f32/f16 do, so the
 * reference does not lose precision on long rows. */
static void vec_dot_f32_f32(float *s, const void *w, const void *a, int n) {
    const float *x = (const float *)w;
    const float *y = (const float *)a;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

static void vec_dot_f16_f32(float *s, const void *w, const void *a, int n) {
    const sm_half *x = (const sm_half *)w;
    const float *y = (const float *)a;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(sm_half_to_float(x[i]) * y[i]);
    *s = (float)sum;
}

static void vec_dot_bf16_f32(float *s, const void *w, const void *a, int n) {
    const sm_bf16 *x = (const sm_bf16 *)w;
    const float *y = (const float *)a;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(sm_bf16_to_float(x[i]) * y[i]);
    *s = (float)sum;
}

/* ------------------------------------------------------------------------------------ */
/* 32-weight blocks                                                                     */
/* ------------------------------------------------------------------------------------ */

static void dequant_q4_0(float *dst, const void *src, int64_t n) {
    const block_q4_0 *x = (const block_q4_0 *)src;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        float *y = dst + i * QK4_0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = d * (float)((x[i].qs[j] & 0x0F) - 8);
            y[j + QK4_0 / 2] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequant_q5_0(float *dst, const void *src, int64_t n) {
    const block_q5_0 *x = (const block_q5_0 *)src;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh)); /* little-endian bit j = 5th bit of weight j */
        float *y = dst + i * QK5_0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int hi0 = (int)((qh >> j) & 1) << 4;
            const int hi1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)(((x[i].qs[j] & 0x0F) | hi0) - 16);
            y[j + QK5_0 / 2] = d * (float)(((x[i].qs[j] >> 4) | hi1) - 16);
        }
    }
}

static void dequant_q8_0(float *dst, const void *src, int64_t n) {
    const block_q8_0 *x = (const block_q8_0 *)src;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        for (int j = 0; j < QK8_0; j++) dst[i * QK8_0 + j] = (float)x[i].qs[j] * d;
    }
}

static void vec_dot_q4_0_q8_0(float *s, const void *w, const void *a, int n) {
    const block_q4_0 *x = (const block_q4_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK4_0;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            const int v0 = (x[i].qs[j] & 0x0F) - 8;
            const int v1 = (x[i].qs[j] >> 4) - 8;
            sumi += v0 * y[i].qs[j] + v1 * y[i].qs[j + QK4_0 / 2];
        }
        sumf += (float)sumi * (sm_half_to_float(x[i].d) * sm_half_to_float(y[i].d));
    }
    *s = sumf;
}

static void vec_dot_q5_0_q8_0(float *s, const void *w, const void *a, int n) {
    const block_q5_0 *x = (const block_q5_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK5_0;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof(qh));
        int32_t sumi = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int v0 = ((x[i].qs[j] & 0x0F) | ((int)((qh >> j) & 1) << 4)) - 16;
            const int v1 = ((x[i].qs[j] >> 4) | ((int)((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += v0 * y[i].qs[j] + v1 * y[i].qs[j + QK5_0 / 2];
        }
        sumf += (float)sumi * (sm_half_to_float(x[i].d) * sm_half_to_float(y[i].d));
    }
    *s = sumf;
}

static void vec_dot_q8_0_q8_0(float *s, const void *w, const void *a, int n) {
    const block_q8_0 *x = (const block_q8_0 *)w;
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int nb = n / QK8_0;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sumf += (float)sumi * (sm_half_to_float(x[i].d) * sm_half_to_float(y[i].d));
    }
    *s = sumf;
}

/* llama.cpp's quantize_row_q8_0_ref: multiply by 1/d (not divide by d) and round half
 * away from zero, so the bytes match ggml's and gguf-py's. */
static void quantize_q8_0(void *dst, const float *src, int64_t n) {
    block_q8_0 *y = (block_q8_0 *)dst;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
            const float ax = fabsf(x[j]);
            amax = amax > ax ? amax : ax;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = sm_float_to_half(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* ------------------------------------------------------------------------------------ */
/* K-quants (256-weight super-blocks)                                                   */
/* ------------------------------------------------------------------------------------ */

static void dequant_q4_K(float *dst, const void *src, int64_t n) {
    const block_q4_K *x = (const block_q4_K *)src;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const float dmin = sm_half_to_float(x[i].dmin);
        const uint8_t *q = x[i].qs;
        float *y = dst + i * QK_K;
        /* each 32 bytes of qs hold two sub-blocks: low nibbles, then high nibbles */
        for (int j = 0; j < QK_K / 32; j += 2) {
            uint8_t sc, m;
            unpack_k4_scale_min(x[i].scales, j, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            unpack_k4_scale_min(x[i].scales, j + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0x0F) - m1;
            for (int l = 0; l < 32; l++) y[l + 32] = d2 * (float)(q[l] >> 4) - m2;
            q += 32;
            y += 64;
        }
    }
}

static void dequant_q5_K(float *dst, const void *src, int64_t n) {
    const block_q5_K *x = (const block_q5_K *)src;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const float dmin = sm_half_to_float(x[i].dmin);
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        float *y = dst + i * QK_K;
        /* bit j of qh[l] is the 5th bit of weight l of sub-block j */
        for (int j = 0; j < QK_K / 32; j += 2) {
            uint8_t sc, m;
            unpack_k4_scale_min(x[i].scales, j, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            unpack_k4_scale_min(x[i].scales, j + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                y[l] = d1 * (float)((ql[l] & 0x0F) | (((qh[l] >> j) & 1) << 4)) - m1;
            for (int l = 0; l < 32; l++)
                y[l + 32] = d2 * (float)((ql[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4)) - m2;
            ql += 32;
            y += 64;
        }
    }
}

static void dequant_q6_K(float *dst, const void *src, int64_t n) {
    const block_q6_K *x = (const block_q6_K *)src;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = sm_half_to_float(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        float *y = dst + i * QK_K;
        /* each half of 128 weights uses 64 ql bytes and 32 qh bytes; qh[l] carries the
         * 2 high bits of weights l, l+32, l+64, l+96 of that half */
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int)((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int)((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* The mins enter as dmin * m * sum(q8) over a sub-block, and sum(q8) over each 16 is
 * already in bsums, so the min term costs one multiply per 16 weights. */
static void vec_dot_q4_K_q8_K(float *s, const void *w, const void *a, int n) {
    const block_q4_K *x = (const block_q4_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        int32_t sumi = 0, summ = 0;
        for (int j = 0; j < QK_K / 32; j += 2) {
            uint8_t sc1, m1, sc2, m2;
            unpack_k4_scale_min(x[i].scales, j, &sc1, &m1);
            unpack_k4_scale_min(x[i].scales, j + 1, &sc2, &m2);
            int32_t s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += (q4[l] & 0x0F) * q8[l];
                s2 += (q4[l] >> 4) * q8[l + 32];
            }
            sumi += sc1 * s1 + sc2 * s2;
            summ += m1 * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]) +
                    m2 * (y[i].bsums[2 * j + 2] + y[i].bsums[2 * j + 3]);
            q4 += 32;
            q8 += 64;
        }
        const float d = sm_half_to_float(x[i].d) * y[i].d;
        const float dmin = sm_half_to_float(x[i].dmin) * y[i].d;
        sumf += d * (float)sumi - dmin * (float)summ;
    }
    *s = sumf;
}

static void vec_dot_q5_K_q8_K(float *s, const void *w, const void *a, int n) {
    const block_q5_K *x = (const block_q5_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        int32_t sumi = 0, summ = 0;
        for (int j = 0; j < QK_K / 32; j += 2) {
            uint8_t sc1, m1, sc2, m2;
            unpack_k4_scale_min(x[i].scales, j, &sc1, &m1);
            unpack_k4_scale_min(x[i].scales, j + 1, &sc2, &m2);
            int32_t s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                const int v1 = (ql[l] & 0x0F) | (((qh[l] >> j) & 1) << 4);
                const int v2 = (ql[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4);
                s1 += v1 * q8[l];
                s2 += v2 * q8[l + 32];
            }
            sumi += sc1 * s1 + sc2 * s2;
            summ += m1 * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]) +
                    m2 * (y[i].bsums[2 * j + 2] + y[i].bsums[2 * j + 3]);
            ql += 32;
            q8 += 64;
        }
        const float d = sm_half_to_float(x[i].d) * y[i].d;
        const float dmin = sm_half_to_float(x[i].dmin) * y[i].d;
        sumf += d * (float)sumi - dmin * (float)summ;
    }
    *s = sumf;
}

/* The 6-bit quants are kept unsigned (0..63) in the inner loop and the -32 offset is
 * applied once per 16 weights through bsums: sum((q-32)*a) = sum(q*a) - 32*bsum. */
static void vec_dot_q6_K_q8_K(float *s, const void *w, const void *a, int n) {
    const block_q6_K *x = (const block_q6_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    const int nb = n / QK_K;
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        /* per-16 sums in weight order: sub-block (half*8 + g*2 + l/16) for group g */
        int32_t sub[QK_K / 16] = {0};
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                const int is = half * 8 + l / 16;
                const int q1 = (ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4);
                const int q2 = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                sub[is + 0] += q1 * q8[l];
                sub[is + 2] += q2 * q8[l + 32];
                sub[is + 4] += q3 * q8[l + 64];
                sub[is + 6] += q4 * q8[l + 96];
            }
            ql += 64;
            qh += 32;
            q8 += 128;
        }
        int32_t sumi = 0;
        for (int j = 0; j < QK_K / 16; j++)
            sumi += x[i].scales[j] * (sub[j] - 32 * y[i].bsums[j]);
        sumf += sm_half_to_float(x[i].d) * y[i].d * (float)sumi;
    }
    *s = sumf;
}

/* llama.cpp's quantize_row_q8_K_ref.  The scale is taken from the signed value of largest
 * magnitude (iscale = -127/max), so that value maps to exactly -127 and the rest fit;
 * only the opposite sign can round to 128, hence the clamp at 127. */
static void quantize_q8_K(void *dst, const float *src, int64_t n) {
    block_q8_K *y = (block_q8_K *)dst;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK_K;
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            /* ggml leaves bsums untouched here; zeroing them keeps the output
             * deterministic and is what the dot products expect anyway */
            memset(&y[i], 0, sizeof(y[i]));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int_k(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[j * 16 + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------------------------ */

/* ---- attention over the f16 KV cache ---- */

/* Each score in double, as vec_dot_f16_f32. */
static void attn_scores_scalar(float *s, size_t s_stride, const float *q, size_t q_stride, int n_q,
                               const sm_half *k, size_t k_stride, int n_k, int n) {
    for (int i = 0; i < n_q; i++)
        for (int j = 0; j < n_k; j++)
            vec_dot_f16_f32(&s[i * s_stride + j], k + j * k_stride, q + i * q_stride, n);
}

static void attn_pv_scalar(float *o, size_t o_stride, const float *p, size_t p_stride, int n_q,
                           const sm_half *v, size_t v_stride, int n_k, int n) {
    for (int i = 0; i < n_q; i++) {
        float *oi = o + i * o_stride;
        for (int j = 0; j < n_k; j++) {
            const float pj = p[i * p_stride + j];
            if (pj == 0.0f) continue; /* o + 0 * v == o */
            const sm_half *vj = v + j * v_stride;
            for (int d = 0; d < n; d++) oi[d] += pj * sm_half_to_float(vj[d]);
        }
    }
}

void sm_fill_kernels_scalar(sm_kernels *k) {
    k->dequant[SM_TYPE_F32] = dequant_f32;
    k->dequant[SM_TYPE_F16] = dequant_f16;
    k->dequant[SM_TYPE_BF16] = dequant_bf16;
    k->dequant[SM_TYPE_Q4_0] = dequant_q4_0;
    k->dequant[SM_TYPE_Q5_0] = dequant_q5_0;
    k->dequant[SM_TYPE_Q8_0] = dequant_q8_0;
    k->dequant[SM_TYPE_Q4_K] = dequant_q4_K;
    k->dequant[SM_TYPE_Q5_K] = dequant_q5_K;
    k->dequant[SM_TYPE_Q6_K] = dequant_q6_K;

    k->vec_dot[SM_TYPE_F32] = vec_dot_f32_f32;
    k->vec_dot[SM_TYPE_F16] = vec_dot_f16_f32;
    k->vec_dot[SM_TYPE_BF16] = vec_dot_bf16_f32;
    k->vec_dot[SM_TYPE_Q4_0] = vec_dot_q4_0_q8_0;
    k->vec_dot[SM_TYPE_Q5_0] = vec_dot_q5_0_q8_0;
    k->vec_dot[SM_TYPE_Q8_0] = vec_dot_q8_0_q8_0;
    k->vec_dot[SM_TYPE_Q4_K] = vec_dot_q4_K_q8_K;
    k->vec_dot[SM_TYPE_Q5_K] = vec_dot_q5_K_q8_K;
    k->vec_dot[SM_TYPE_Q6_K] = vec_dot_q6_K_q8_K;

    k->quantize[SM_TYPE_Q8_0] = quantize_q8_0;
    k->quantize[SM_TYPE_Q8_K] = quantize_q8_K;

    k->attn_scores = attn_scores_scalar;
    k->attn_pv = attn_pv_scalar;

    /* No scalar multi-row kernels: a NULL vec_dot_n makes sm_matmul_q loop over the
     * table's vec_dot, which for a unit that only overrides vec_dot (NEON) is its own SIMD
     * dot rather than inherited scalar code. */
    for (int t = 0; t < SM_TYPE_COUNT; t++) k->vec_dot_n[t] = NULL;
}
