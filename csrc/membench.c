/* Memory read bandwidth probe for the benchmarks: the ceiling a memory-bound matvec is
 * compared against.  Baseline flags only: 16-byte SSE2 loads (always there on x86-64)
 * with independent accumulators are enough to saturate a core's share of DRAM bandwidth. */
#include "kernels.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* XOR of all 16-byte words of buf (n_bytes rounded down to 64), split over n_threads.
 * Returning it keeps the compiler from dropping the loads. */
uint64_t sm_read_memory(const void *buf, size_t n_bytes, int n_threads) {
    const int64_t n_lines = (int64_t)(n_bytes / 64);
    uint64_t total = 0;
#pragma omp parallel num_threads(n_threads > 0 ? n_threads : 1) reduction(^ : total)
    {
#if defined(__SSE2__)
        __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(static)
        for (int64_t line = 0; line < n_lines; line++) {
            const __m128i *p = (const __m128i *)((const uint8_t *)buf + line * 64);
            a0 = _mm_xor_si128(a0, _mm_loadu_si128(p + 0));
            a1 = _mm_xor_si128(a1, _mm_loadu_si128(p + 1));
            a2 = _mm_xor_si128(a2, _mm_loadu_si128(p + 2));
            a3 = _mm_xor_si128(a3, _mm_loadu_si128(p + 3));
        }
        const __m128i a = _mm_xor_si128(_mm_xor_si128(a0, a1), _mm_xor_si128(a2, a3));
        uint64_t lanes[2];
        _mm_storeu_si128((__m128i *)lanes, a);
        total ^= lanes[0] ^ lanes[1];
#else
        const uint64_t *w = (const uint64_t *)buf;
        uint64_t acc = 0;
#pragma omp for schedule(static)
        for (int64_t line = 0; line < n_lines; line++) {
            const uint64_t *p = w + line * 8;
            acc ^= (p[0] ^ p[1]) ^ (p[2] ^ p[3]) ^ (p[4] ^ p[5]) ^ (p[6] ^ p[7]);
        }
        total ^= acc;
#endif
    }
    return total;
}
