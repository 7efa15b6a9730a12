/* The one place that chooses an instruction set, plus per-type facts.
 * Tables are built once per ISA (scalar first, then the ISA's overrides), so switching
 * is just a pointer swap; nothing else in the library looks at CPU features. */
#include <stddef.h>

#include "kernels.h"

static const char *const isa_names[SM_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

/* A kernel table and, per weight type, the unit (an sm_isa) each entry came from. */
typedef struct {
    sm_kernels k;
    signed char dot_unit[SM_TYPE_COUNT];     /* vec_dot, vec_dot_n, vec_dot_tile: -1 if none */
    signed char dequant_unit[SM_TYPE_COUNT]; /* -1 if none */
} built_table;

/* tables[isa]: the table dispatch runs on `isa` (the per-CPU choices below applied);
 * unit_tables[isa]: every entry the isa's unit has taken from it, the candidates the
 * timing tool compares (smallmind/isa_bench.py). */
static built_table tables[SM_ISA_COUNT], unit_tables[SM_ISA_COUNT];
static int tables_built[SM_ISA_COUNT];
static const built_table *current = NULL;
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

typedef void (*fill_fn)(sm_kernels *);

static fill_fn unit_fill(int isa) {
    switch (isa) {
#if defined(SM_HAVE_AVX2_UNIT)
    case SM_ISA_AVX2: return sm_fill_kernels_avx2;
#endif
#if defined(SM_HAVE_AVX512_UNIT)
    case SM_ISA_AVX512: return sm_fill_kernels_avx512;
#endif
#if defined(SM_HAVE_NEON_UNIT)
    case SM_ISA_NEON: return sm_fill_kernels_neon;
#endif
    default: return NULL;
    }
}

static void scalar_table(built_table *b) {
    *b = (built_table){0}; /* entries no unit fills stay NULL */
    sm_fill_kernels_scalar(&b->k);
    for (int t = 0; t < SM_TYPE_COUNT; t++) {
        b->dot_unit[t] = b->k.vec_dot[t] ? SM_ISA_SCALAR : -1;
        b->dequant_unit[t] = b->k.dequant[t] ? SM_ISA_SCALAR : -1;
    }
}

/* Take from `unit` the entries whose type bit is set in dot_types / dequant_types (where
 * the unit has one), plus its quantizers and attention kernels when `rest`.  A type's dot
 * kernels (vec_dot, vec_dot_n, vec_dot_tile) are taken together, NULL where the unit has
 * none: kernels.h promises that a (weight row, token) gives the same floats whatever the
 * batch, and each unit adds its float terms in its own order, so a table that mixed one
 * unit's vec_dot with another's batched kernels would make a token's logits depend on
 * what it was batched with.  A unit with only a vec_dot then runs batches one token at a
 * time, which is why taking it is a measured choice (avx512_choices). */
static void take_unit(built_table *b, int isa, uint32_t dot_types, uint32_t dequant_types, int rest) {
    sm_kernels scalar = {0}, unit;
    sm_fill_kernels_scalar(&scalar);
    unit = scalar;
    unit_fill(isa)(&unit);
    for (int t = 0; t < SM_TYPE_COUNT; t++) {
        if ((dot_types >> t & 1) && unit.vec_dot[t] != scalar.vec_dot[t]) {
            b->k.vec_dot[t] = unit.vec_dot[t];
            b->k.vec_dot_n[t] = unit.vec_dot_n[t];
            b->k.vec_dot_tile[t] = unit.vec_dot_tile[t];
            b->dot_unit[t] = (signed char)isa;
        }
        if ((dequant_types >> t & 1) && unit.dequant[t] != scalar.dequant[t]) {
            b->k.dequant[t] = unit.dequant[t];
            b->dequant_unit[t] = (signed char)isa;
        }
    }
    if (rest) {
        for (int t = 0; t < SM_TYPE_COUNT; t++) b->k.quantize[t] = unit.quantize[t];
        b->k.attn_scores = unit.attn_scores;
        b->k.attn_pv = unit.attn_pv;
    }
}

#define ALL_TYPES 0xffffffffu
#define TYPE_BIT(t) (1u << (t))

/* Which entries the AVX-512 table takes from the avx512 unit rather than AVX2's, per CPU
 * class: only those measured faster on it at every shape by `python -m smallmind bench
 * --isa` (smallmind/isa_bench.py), so that the table chosen by default is never slower
 * than forcing avx2; tests/test_isa_bench.py checks the choice against the tool on the
 * machine it runs on.  A built-in table, not a calibration at start-up: the choice of a
 * type's dot kernels sets the order of its float sums, so it must be the same in every
 * run and every process on a CPU class, where a timing taken at start-up on a busy
 * machine could flip a close call and with it the logits.  (dequant is exact in every
 * unit, so its choice changes speed only.)
 * - AMD (Zen 4, shared/measurements, 2026-12-07): F32 and F16 dots as fast or faster;
 *   BF16 slower on the LM head; the quantized types' lone vec_dot loses every batch to
 *   AVX2's tile kernels.  dequant not measured there: AVX2's.
 * - Intel with AMX (a Sapphire Rapids class Xeon, 2026-12-07; weights 64-byte aligned,
 *   in L2): F32, F16 and BF16 dots 15-30% faster at 1 token and at 8; the quantized
 *   types' lone vec_dot 1.4-3.5x slower than AVX2's kernels at 8 tokens (Q4_K, Q5_K,
 *   Q6_K: a tie or up to 15% faster at 1 token); dequant 8-60% slower.
 * Unmeasured classes keep AVX2's entries: the same kernels as the avx2 table.
 * An emulated build (tests) takes the dots some class takes and every dequant, so that
 * the whole extension runs them (tests/test_isa_emulated.py compares each of the unit's
 * kernels with the scalar ones, the quantized types' lone vec_dots included). */
typedef struct {
    uint32_t dot_types, dequant_types;
} unit_choice;

static unit_choice avx512_choices(void) {
    const uint32_t floats = TYPE_BIT(SM_TYPE_F32) | TYPE_BIT(SM_TYPE_F16) | TYPE_BIT(SM_TYPE_BF16);
    if (sm_isa_emulated(SM_ISA_AVX512)) return (unit_choice){floats, ALL_TYPES};
    switch (sm_cpu_class()) {
    case SM_CPU_AMD: return (unit_choice){TYPE_BIT(SM_TYPE_F32) | TYPE_BIT(SM_TYPE_F16), 0};
    case SM_CPU_INTEL_AMX: return (unit_choice){floats, 0};
    default: return (unit_choice){0, 0};
    }
}

/* The table of `isa`: scalar, then the isa's unit; AVX-512 CPUs have AVX2 too, so the
 * AVX-512 table is AVX2's with the avx512 unit's entries where `avx512` chooses them. */
static void build(built_table *b, int isa, unit_choice avx512) {
    scalar_table(b);
    if (isa == SM_ISA_SCALAR || !unit_fill(isa)) return;
    if (isa == SM_ISA_AVX512) {
        take_unit(b, SM_ISA_AVX2, ALL_TYPES, ALL_TYPES, 1);
        take_unit(b, SM_ISA_AVX512, avx512.dot_types, avx512.dequant_types, 0);
        return;
    }
    take_unit(b, isa, ALL_TYPES, ALL_TYPES, 1);
}

static void build_tables(int isa) {
    build(&tables[isa], isa, avx512_choices());
    build(&unit_tables[isa], isa, (unit_choice){ALL_TYPES, ALL_TYPES});
    tables_built[isa] = 1;
}

static int select_table(int isa, int unit_only) {
    if (isa < 0 || isa >= SM_ISA_COUNT || !sm_isa_available(isa)) return SM_E_ISA;
    if (!tables_built[isa]) build_tables(isa);
    current = unit_only ? &unit_tables[isa] : &tables[isa];
    current_isa = isa;
    return SM_OK;
}

int sm_isa_select(int isa) { return select_table(isa, 0); }

int sm_isa_select_unit(int isa) { return select_table(isa, 1); }

int sm_isa_current(void) {
    if (current_isa < 0) sm_isa_select(sm_isa_best());
    return current_isa;
}

const sm_kernels *sm_kernels_current(void) {
    sm_isa_current();
    return &current->k;
}

int sm_entry_unit(int entry, int type) {
    if (!sm_type_supported(type)) return SM_E_TYPE;
    sm_isa_current();
    switch (entry) {
    case SM_ENTRY_DOT: return current->dot_unit[type];
    case SM_ENTRY_DEQUANT: return current->dequant_unit[type];
    default: return SM_E_ARG;
    }
}

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
