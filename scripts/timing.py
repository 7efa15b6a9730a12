"""Timing shared by the benchmark scripts."""

import statistics
import time


def median_seconds(fn, repeat: int) -> float:
    """The median wall time of `repeat` calls of `fn`, after one untimed call that pages in the
    weights and warms the caches."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
