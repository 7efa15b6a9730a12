/* Memory read bandwidth probe for the benchmarks: the ceiling a memory-bound matvec
 * is compared against.  Baseline flags only (SSE2 on x86-64 is enough to saturate a core's
 * share of DRAM bandwidth). */
#include "kernels.h"

/* Sum of all 64-bit words of buf (n_bytes rounded down to 64), split over n_threads.
 * Returning the sum keeps the compiler from dropping the loads. */
uint64_t sm_read_memory(const void *buf, size_t n_bytes, int n_threads) {
    const uint64_t *w = (const uint64_t *)buf;
    const int64_t n_lines = (int64_t)(n_bytes / 64);
    uint64_t total = 0;
#pragma omp parallel for schedule(static) num_threads(n_threads > 0 ? n_threads : 1) reduction(+ : total)
    for (int64_t line = 0; line < n_lines; line++) {
        const uint64_t *p = w + line * 8;
        total += (p[0] + p[1]) + (p[2] + p[3]) + (p[4] + p[5]) + (p[6] + p[7]);
    }
    return total;
}
