/* Quantized block layouts, byte-compatible with GGUF/ggml.
 *
 * Every block is one struct, one QK constant and one static_assert on its size, so a
 * pointer into an mmapped GGUF tensor can be read as an array of these structs.
 * "bpw" is bits per weight.  Decode formulas are written next to each block. */
#ifndef SMALLMIND_QUANTS_H
#define SMALLMIND_QUANTS_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

/* ggml type ids as stored in GGUF tensor infos. */
enum sm_type {
    SM_TYPE_F32 = 0,
    SM_TYPE_F16 = 1,
    SM_TYPE_Q4_0 = 2,
    SM_TYPE_Q5_0 = 6,
    SM_TYPE_Q8_0 = 8,
    SM_TYPE_Q4_K = 12,
    SM_TYPE_Q5_K = 13,
    SM_TYPE_Q6_K = 14,
    SM_TYPE_Q8_K = 15, /* activations only */
    SM_TYPE_BF16 = 30,
    SM_TYPE_COUNT = 31
};

typedef uint16_t sm_half; /* IEEE 754 binary16 bits */
typedef uint16_t sm_bf16; /* bfloat16 bits */

/* ---- 32-weight blocks ---- */
#define QK4_0 32
/* w = d * (q - 8), q = 4-bit; low nibbles hold weights 0..15, high nibbles 16..31. 4.5 bpw */
typedef struct {
    sm_half d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

#define QK5_0 32
/* w = d * (q - 16), q = 4 low bits from qs (as q4_0) | 5th bit j from qh (little-endian u32). 5.5 bpw */
typedef struct {
    sm_half d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 size");

#define QK8_0 32
/* w = d * q, q signed 8-bit. 8.5 bpw; also the activation type for the 32-blocks. */
typedef struct {
    sm_half d;
    int8_t qs[QK8_0];
} block_q8_0;
static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

/* ---- 256-weight super-blocks (K-quants) ---- */
#define QK_K 256
#define K_SCALE_SIZE 12

/* 8 sub-blocks of 32; 6-bit scale and min per sub-block packed in scales[12].
 * w = d * sc * q - dmin * m, q = 4-bit. 4.5 bpw */
typedef struct {
    sm_half d;
    sm_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;
static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

/* As q4_K with a 5th bit per weight in qh. w = d * sc * q - dmin * m, q = 5-bit. 5.5 bpw */
typedef struct {
    sm_half d;
    sm_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

/* 16 sub-blocks of 16; 8-bit signed scales. w = d * sc * (q - 32), q = 6-bit
 * (4 low bits in ql, 2 high bits in qh). 6.5625 bpw */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    sm_half d;
} block_q6_K;
static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

/* Activation block for the K-quants: float scale, and the sums of each 16 quants
 * (bsums) so the "- dmin * m" term costs one multiply per sub-block. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
static_assert(sizeof(block_q8_K) == 4 + QK_K + 2 * QK_K / 16, "block_q8_K size");

/* ---- scalar conversions (exact, no hardware F16C needed) ---- */
static inline float sm_fp32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t sm_fp32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

static inline float sm_half_to_float(sm_half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31) return sm_fp32_from_bits(sign | 0x7f800000u | (man << 13));
    return sm_fp32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

/* round-to-nearest-even, as numpy's float16 cast */
static inline sm_half sm_float_to_half(float f) {
    uint32_t x = sm_fp32_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return (sm_half)(sign | 0x7c00 | (x > 0x7f800000u ? 0x200 : 0));
    if (x >= 0x477ff000u) return (sm_half)(sign | 0x7c00); /* overflow to inf */
    if (x < 0x38800000u) { /* subnormal or zero in half */
        if (x < 0x33000000u) return (sm_half)sign;
        const uint32_t e = x >> 23;
        const uint32_t m = (x & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (sm_half)(sign | r);
    }
    uint32_t r = x + 0xfffu + ((x >> 13) & 1); /* round to nearest even at bit 13 */
    r -= 0x38000000u;                          /* rebias exponent 127 -> 15 */
    return (sm_half)(sign | (r >> 13));
}

static inline float sm_bf16_to_float(sm_bf16 h) { return sm_fp32_from_bits((uint32_t)h << 16); }

#endif
