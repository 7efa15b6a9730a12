/* What the CPU and OS can run, read once from CPUID/XGETBV (x86) or HWCAP/sysctl (arm).
 * An ISA counts as available only if its translation unit was compiled in
 * (SM_HAVE_<ISA>_UNIT, set by setup.py) and the hardware and OS support it. */
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int x86_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!(osxsave && avx && fma && f16c)) return 0;
    if ((read_xcr0() & 0x6) != 0x6) return 0; /* OS saves XMM and YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1;
}

static int x86_class(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return SM_CPU_OTHER;
    if (b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u) return SM_CPU_AMD; /* "AuthenticAMD" */
    if (b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu) {                    /* "GenuineIntel" */
        /* AMX-TILE, which Sapphire Rapids brought; the model number is no guide in VMs */
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1)) return SM_CPU_INTEL_AMX;
    }
    return SM_CPU_OTHER;
}

/* Only the native AVX-512 unit asks the CPU; an emulated one needs AVX2 alone. */
#if defined(SM_HAVE_AVX512_UNIT) && !defined(SM_EMULATED_AVX512)
static int x86_has_avx512(void) {
    unsigned a, b, c, d;
    if (!x86_has_avx2()) return 0;
    if ((read_xcr0() & 0xe6) != 0xe6) return 0; /* plus opmask and ZMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    const int vnni = (c >> 11) & 1;
    return f && dq && bw && vl && vnni;
}
#endif
#endif

#if defined(__aarch64__)
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
static int arm_has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
#elif defined(__APPLE__)
#include <sys/sysctl.h>
static int arm_has_dotprod(void) {
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) != 0) return 0;
    return v != 0;
}
#else
static int arm_has_dotprod(void) { return 0; }
#endif
#endif

int sm_cpu_class(void) {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    return x86_class();
#else
    return SM_CPU_OTHER;
#endif
}

/* SM_EMULATED_<ISA> (test builds only, setup.py's SMALLMIND_EMULATE): the unit was compiled
 * through SIMDe on top of AVX2, so it runs wherever AVX2 does. */
int sm_isa_emulated(int isa) {
    switch (isa) {
#if defined(SM_EMULATED_AVX512)
    case SM_ISA_AVX512: return 1;
#endif
#if defined(SM_EMULATED_NEON)
    case SM_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

int sm_isa_available(int isa) {
    switch (isa) {
    case SM_ISA_SCALAR: return 1;
#if defined(SM_HAVE_AVX2_UNIT)
    case SM_ISA_AVX2: return x86_has_avx2();
#endif
#if defined(SM_EMULATED_AVX512)
    case SM_ISA_AVX512: return x86_has_avx2();
#elif defined(SM_HAVE_AVX512_UNIT)
    case SM_ISA_AVX512: return x86_has_avx512();
#endif
#if defined(SM_EMULATED_NEON)
    case SM_ISA_NEON: return x86_has_avx2();
#elif defined(SM_HAVE_NEON_UNIT)
    case SM_ISA_NEON: return arm_has_dotprod();
#endif
    default: return 0;
    }
}
