/* The one place that chooses an instruction set, plus per-type facts.
 * Tables are built once per ISA (scalar first, then the ISA's overrides), so switching
 * is just a pointer swap; nothing else in the library looks at CPU features. */
#include <stddef.h>

#include "kernels.h"

static const char *const isa_names[SM_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

static sm_kernels tables[SM_ISA_COUNT];
static int tables_built[SM_ISA_COUNT];
static int current_isa = -1;

const char *sm_isa_name(int isa) {
    return (isa >= 0 && isa < SM_ISA_COUNT) ? isa_names[isa] : "unknown";
}

int sm_isa_best(void) {
    const int order[] = {SM_ISA_AVX512, SM_ISA_AVX2, SM_ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (sm_isa_available(order[i]) && !sm_isa_emulated(order[i])) return order[i];
    return SM_ISA_SCALAR;
}

/* Apply a unit's overrides on top of the table, keeping each type's dot kernels (vec_dot,
 * vec_dot_n, vec_dot_tile) from one unit.  kernels.h promises that a (weight row, token)
 * gives the same floats whatever the batch, and each unit adds its float terms in its own
 * order, so a table that mixed one unit's vec_dot with another's batched kernels would make
 * a token's logits depend on what it was batched with.  Per type:
 * - the unit brings batched kernels of its own: its set replaces the table's, and inherited
 *   batched entries it did not replace are dropped;
 * - the unit brings only a vec_dot while the table already has batched kernels: the table's
 *   set stays whole and the unit's vec_dot is not taken.  One-token-at-a-time dots would
 *   cost batches and prefill far more than a faster vec_dot gains at batch 1 (on a Zen 4,
 *   avx2's set beats avx512's lone vec_dot for every batched shape: shared/measurements);
 * - otherwise the unit's vec_dot replaces the table's. */
static inline void override_with(sm_kernels *k, void (*fill)(sm_kernels *)) {
    sm_kernels unit = *k;
    fill(&unit);
    for (int t = 0; t < SM_TYPE_COUNT; t++) {
        if (unit.vec_dot[t] == k->vec_dot[t]) continue;
        const int brings_batched = unit.vec_dot_n[t] != k->vec_dot_n[t] || unit.vec_dot_tile[t] != k->vec_dot_tile[t];
        const int had_batched = k->vec_dot_n[t] || k->vec_dot_tile[t];
        if (had_batched && !brings_batched) {
            unit.vec_dot[t] = k->vec_dot[t];
            continue;
        }
        if (unit.vec_dot_n[t] == k->vec_dot_n[t]) unit.vec_dot_n[t] = NULL;
        if (unit.vec_dot_tile[t] == k->vec_dot_tile[t]) unit.vec_dot_tile[t] = NULL;
    }
    *k = unit;
}

/* Whether the AVX-512 table takes the avx512 unit's dot kernels for `type` rather than
 * AVX2's: only where they were measured faster on this CPU family
 * (scripts/bench_kernels.py --isas avx2,avx512), so that the table chosen by default is
 * never slower than forcing avx2.  Zen 4 (shared/measurements): F32 and F16 as fast or
 * faster, BF16 slower on the LM head.  An Intel Xeon with AVX-512 (Sapphire Rapids class,
 * 2026-12-07): F32, F16 and BF16 10-25% slower.  Unmeasured families keep AVX2's.  For the
 * quantized types the avx512 unit has only a vec_dot, which override_with leaves out anyway.
 * An emulated build (tests) takes every entry, so that the whole extension runs them. */
static int avx512_dot_preferred(int type) {
    if (sm_isa_emulated(SM_ISA_AVX512)) return 1;
    return sm_cpu_is_amd() && (type == SM_TYPE_F32 || type == SM_TYPE_F16);
}

static void build_table(int isa) {
    sm_kernels *k = &tables[isa];
    *k = (sm_kernels){0}; /* entries no unit fills stay NULL */
    sm_fill_kernels_scalar(k);
    switch (isa) {
#if defined(SM_HAVE_AVX2_UNIT)
    case SM_ISA_AVX2: override_with(k, sm_fill_kernels_avx2); break;
#endif
#if defined(SM_HAVE_AVX512_UNIT)
    /* AVX-512 CPUs have AVX2 too: the avx512 unit overrides what it does better. */
    case SM_ISA_AVX512: {
        override_with(k, sm_fill_kernels_avx2);
        const sm_kernels avx2 = *k;
        override_with(k, sm_fill_kernels_avx512);
        for (int t = 0; t < SM_TYPE_COUNT; t++) {
            if (avx512_dot_preferred(t)) continue;
            k->vec_dot[t] = avx2.vec_dot[t];
            k->vec_dot_n[t] = avx2.vec_dot_n[t];
            k->vec_dot_tile[t] = avx2.vec_dot_tile[t];
        }
        break;
    }
#endif
#if defined(SM_HAVE_NEON_UNIT)
    case SM_ISA_NEON: override_with(k, sm_fill_kernels_neon); break;
#endif
    default: break;
    }
    tables_built[isa] = 1;
}

int sm_isa_select(int isa) {
    if (isa < 0 || isa >= SM_ISA_COUNT || !sm_isa_available(isa)) return SM_E_ISA;
    if (!tables_built[isa]) build_table(isa);
    current_isa = isa;
    return SM_OK;
}

int sm_isa_current(void) {
    if (current_isa < 0) sm_isa_select(sm_isa_best());
    return current_isa;
}

const sm_kernels *sm_kernels_current(void) { return &tables[sm_isa_current()]; }

/* ---- per-type facts ---- */

typedef struct {
    int64_t block;  /* values per block */
    int64_t bytes;  /* bytes per block */
    int vec_dot_type;
    int weight;     /* readable as a weight type */
} type_info;

static type_info info_of(int type) {
    switch (type) {
    case SM_TYPE_F32: return (type_info){1, 4, SM_TYPE_F32, 1};
    case SM_TYPE_F16: return (type_info){1, 2, SM_TYPE_F32, 1};
    case SM_TYPE_BF16: return (type_info){1, 2, SM_TYPE_F32, 1};
    case SM_TYPE_Q4_0: return (type_info){QK4_0, sizeof(block_q4_0), SM_TYPE_Q8_0, 1};
    case SM_TYPE_Q5_0: return (type_info){QK5_0, sizeof(block_q5_0), SM_TYPE_Q8_0, 1};
    case SM_TYPE_Q8_0: return (type_info){QK8_0, sizeof(block_q8_0), SM_TYPE_Q8_0, 1};
    case SM_TYPE_Q4_K: return (type_info){QK_K, sizeof(block_q4_K), SM_TYPE_Q8_K, 1};
    case SM_TYPE_Q5_K: return (type_info){QK_K, sizeof(block_q5_K), SM_TYPE_Q8_K, 1};
    case SM_TYPE_Q6_K: return (type_info){QK_K, sizeof(block_q6_K), SM_TYPE_Q8_K, 1};
    case SM_TYPE_Q8_K: return (type_info){QK_K, sizeof(block_q8_K), SM_TYPE_Q8_K, 0};
    default: return (type_info){0, 0, -1, 0};
    }
}

int sm_type_supported(int type) { return info_of(type).weight; }
int64_t sm_block_size(int type) { return info_of(type).block; }
int64_t sm_type_size(int type) { return info_of(type).bytes; }
int sm_vec_dot_type(int type) { return info_of(type).vec_dot_type; }

int64_t sm_row_size(int type, int64_t n) {
    const type_info t = info_of(type);
    if (t.block == 0 || n < 0 || n % t.block != 0) return -1;
    return n / t.block * t.bytes;
}
