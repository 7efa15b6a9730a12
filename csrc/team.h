/* The threads of one forward step: a team that is forked once per step and meets at
 * barriers between the step's operations (ggml's CPU graph compute: one graph per call,
 * a barrier per node), instead of one OpenMP fork/join per matmul.
 *
 * Every thread of the team runs the same code (SPMD) with its own tid; work inside an
 * operation is split by token (sm_team_owns_token) or claimed in chunks from a shared
 * counter (sm_team_claim); after a per-token step the owners publish (sm_team_publish)
 * and the others wait for them, after a shared-out one all meet at a barrier.  A thread
 * that has to wait spins for a bounded, learned time, then sleeps: on a quiet machine the
 * step's ~200 waits pass with less than one sleep per step (scripts/bench_threads.py), and
 * on a shared one a thread whose partner was preempted gives its core away instead of
 * burning the slice. */
#ifndef SMALLMIND_TEAM_H
#define SMALLMIND_TEAM_H

#include <stdatomic.h>
#include <stdint.h>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* The spin at a barrier before sleeping adapts (team.c) between these bounds: the longest
 * is longer than the imbalance of one operation of a step on a quiet machine (a few to a
 * few tens of microseconds) and than a futex wake, and far shorter than a step or a
 * scheduler time slice (milliseconds). */
#define SM_TEAM_SPIN_MIN_NS 5000
#define SM_TEAM_SPIN_MAX_NS 100000

typedef struct sm_team {
    _Atomic int n_threads;        /* threads in the team (set by each thread on entry) */
    _Atomic int arrived;          /* threads at the current barrier */
    _Atomic unsigned generation;  /* barriers passed; the futex word sleepers wait on */
    _Atomic int sleepers;         /* threads asleep (or about to be) at a barrier */
    _Atomic unsigned published;   /* owners done since the last barrier (sm_team_publish) */
    _Atomic int sync_sleepers;    /* threads asleep (or about to be) in sm_team_publish */
    _Atomic int preempted;        /* threads another process preempted during the region */
    _Atomic int64_t next;         /* next unclaimed index of the current claimed loop */
} sm_team;

/* A team for up to n_threads threads (1 when n_threads < 1). */
void sm_team_init(sm_team *tm, int n_threads);
/* Called by every thread when the region starts: the number of threads it really has. */
void sm_team_enter(sm_team *tm, int n_threads);
/* Called by every thread when it is done with the region's work (for sm_team_learn). */
void sm_team_leave(sm_team *tm);
/* Waits until every thread of the team has arrived; also rearms sm_team_claim. */
void sm_team_barrier(sm_team *tm);
/* After a per-token step over n_tok tokens: the threads that own some of them
 * (sm_team_owns_token) say they are done, and every thread waits until all of them are.
 * Unlike a barrier, an owner that is the only one (a batch of at most SM_VEC_DOT_N_MAX
 * tokens: decode) goes on at once; the others start when it is done.  At most one per
 * stretch between barriers. */
void sm_team_publish(sm_team *tm, int tid, int64_t n_tok);
/* After the region: sets the barriers' spin for the next teams from this team's waits. */
void sm_team_learn(sm_team *tm);

/* The first index of a chunk of up to `chunk` indices below n that no thread has claimed
 * since the last barrier, or n when none is left. */
static inline int64_t sm_team_claim(sm_team *tm, int64_t chunk, int64_t n) {
    const int64_t i = atomic_fetch_add_explicit(&tm->next, chunk, memory_order_relaxed);
    return i < n ? i : n;
}

/* Per-token work (norms, rope, activation quantization) goes to the thread that owns the
 * token's group of SM_VEC_DOT_N_MAX tokens (kernels.h), so that consecutive per-token
 * steps, and the scale panel of a group in sm_matmul_team, need no barrier between them. */
static inline int sm_team_owns_token(sm_team *tm, int tid, int64_t t) {
    return (int)(t / SM_VEC_DOT_N_MAX % atomic_load_explicit(&tm->n_threads, memory_order_relaxed)) == tid;
}

/* This thread's number in the enclosing OpenMP region and the region's size (0 and 1
 * outside one, or in a build without OpenMP). */
static inline int sm_team_region_tid(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int sm_team_region_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

#endif
