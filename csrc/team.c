/* Barriers of a step's team (team.h): bounded spin, then a futex sleep (Linux; elsewhere
 * short naps). */
#include "team.h"

#include <limits.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* for sm_thread_counts (kernels.h) */
static _Atomic int64_t n_forks, n_barriers, n_sleeps;

void sm_thread_counts(int64_t *forks, int64_t *barriers, int64_t *sleeps) {
    *forks = atomic_load_explicit(&n_forks, memory_order_relaxed);
    *barriers = atomic_load_explicit(&n_barriers, memory_order_relaxed);
    *sleeps = atomic_load_explicit(&n_sleeps, memory_order_relaxed);
}

void sm_team_init(sm_team *tm, int n_threads) {
    if (n_threads > 1) atomic_fetch_add_explicit(&n_forks, 1, memory_order_relaxed);
    atomic_init(&tm->n_threads, n_threads > 0 ? n_threads : 1);
    atomic_init(&tm->arrived, 0);
    atomic_init(&tm->generation, 0);
    atomic_init(&tm->sleepers, 0);
    atomic_init(&tm->next, 0);
    atomic_init(&tm->published, 0);
    atomic_init(&tm->sync_sleepers, 0);
    atomic_init(&tm->preempted, 0);
}

/* Times this thread was preempted (involuntary context switches), or 0 where unknown. */
static long thread_preemptions(void) {
#if defined(__linux__) && defined(RUSAGE_THREAD)
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) return ru.ru_nivcsw;
#endif
    return 0;
}

/* this thread's count when it entered the current region */
static _Thread_local long preemptions_at_enter;

void sm_team_enter(sm_team *tm, int n_threads) {
    /* every thread stores the same value before its first barrier */
    atomic_store_explicit(&tm->n_threads, n_threads, memory_order_relaxed);
    if (n_threads > 1) preemptions_at_enter = thread_preemptions();
}

void sm_team_leave(sm_team *tm) {
    if (atomic_load_explicit(&tm->n_threads, memory_order_relaxed) > 1 && thread_preemptions() != preemptions_at_enter)
        atomic_fetch_add_explicit(&tm->preempted, 1, memory_order_relaxed);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps while *word is still `seen` (may return early; the caller rechecks). */
static void sleep_while(_Atomic unsigned *word, unsigned seen) {
#ifdef __linux__
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    (void)word;
    (void)seen;
    const struct timespec nap = {0, 50000};
    nanosleep(&nap, NULL);
#endif
}

static void wake_all(_Atomic unsigned *word) {
#ifdef __linux__
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

/* How long a thread spins at a barrier before it sleeps, learned from the steps before:
 * a step in which another process preempted one of the team's threads (the machine is
 * shared) drops it to the minimum, a step without doubles it up to the maximum.  On a
 * quiet machine the barriers then pass without sleeping; under load a spinning thread only
 * delays the threads it waits for (the time slice it burns is charged against it when it
 * is woken), so it sleeps almost at once.  Why preemptions and not long waits: a wait is
 * also long when the thread waited for was asleep at the barrier before (a futex wake
 * takes tens of microseconds), which would keep a quiet machine at the minimum. */
static _Atomic int64_t spin_budget_ns = SM_TEAM_SPIN_MIN_NS;

void sm_team_learn(sm_team *tm) {
    const int64_t budget = atomic_load_explicit(&spin_budget_ns, memory_order_relaxed);
    int64_t next = budget * 2 < SM_TEAM_SPIN_MAX_NS ? budget * 2 : SM_TEAM_SPIN_MAX_NS;
    if (atomic_load_explicit(&tm->preempted, memory_order_relaxed) > 0) next = SM_TEAM_SPIN_MIN_NS;
    atomic_store_explicit(&spin_budget_ns, next, memory_order_relaxed);
}

/* Waits until *word >= target: spins for the learned budget, then sleeps (announced in
 * *sleepers, so that whoever moves the word on wakes it). */
static void wait_at_least(_Atomic unsigned *word, unsigned target, _Atomic int *sleepers) {
    const int64_t start = now_ns(), budget = atomic_load_explicit(&spin_budget_ns, memory_order_relaxed);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(word, memory_order_acquire) >= target) return;
            cpu_relax();
        }
        if (now_ns() - start > budget) break;
    }
    atomic_fetch_add_explicit(&n_sleeps, 1, memory_order_relaxed);
    /* seq_cst pairs with the waker's: either it sees this sleeper or this sees the word */
    atomic_fetch_add_explicit(sleepers, 1, memory_order_seq_cst);
    for (unsigned v; (v = atomic_load_explicit(word, memory_order_seq_cst)) < target;) sleep_while(word, v);
    atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
}

/* Moves *word on by one and wakes its sleepers; returns the new value. */
static unsigned advance(_Atomic unsigned *word, _Atomic int *sleepers) {
    const unsigned v = atomic_fetch_add_explicit(word, 1, memory_order_seq_cst) + 1;
    if (atomic_load_explicit(sleepers, memory_order_seq_cst) > 0) wake_all(word);
    return v;
}

void sm_team_barrier(sm_team *tm) {
    const int n = atomic_load_explicit(&tm->n_threads, memory_order_relaxed);
    if (n <= 1) {
        atomic_store_explicit(&tm->next, 0, memory_order_relaxed);
        atomic_store_explicit(&tm->published, 0, memory_order_relaxed);
        return;
    }
    const unsigned seen = atomic_load_explicit(&tm->generation, memory_order_acquire);
    if (atomic_fetch_add_explicit(&tm->arrived, 1, memory_order_acq_rel) == n - 1) {
        /* last to arrive: rearm, then release the others */
        atomic_store_explicit(&tm->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&tm->next, 0, memory_order_relaxed);
        atomic_store_explicit(&tm->published, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&n_barriers, 1, memory_order_relaxed);
        advance(&tm->generation, &tm->sleepers);
        return;
    }
    wait_at_least(&tm->generation, seen + 1, &tm->sleepers);
}

void sm_team_publish(sm_team *tm, int tid, int64_t n_tok) {
    const int n = atomic_load_explicit(&tm->n_threads, memory_order_relaxed);
    if (n <= 1) return;
    const int64_t groups = (n_tok + SM_VEC_DOT_N_MAX - 1) / SM_VEC_DOT_N_MAX;
    const unsigned owners = (unsigned)(groups < n ? groups : n);
    if ((unsigned)tid < owners && advance(&tm->published, &tm->sync_sleepers) == owners) return;
    wait_at_least(&tm->published, owners, &tm->sync_sleepers);
}
