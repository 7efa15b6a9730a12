"""How many compute threads this process should run when nobody says.

Three limits, the smallest wins:
- the CPUs the process may run on (its affinity mask);
- one thread per physical core among them: SMT siblings share one core's integer units, which
  the quantized dot products keep busy, so a second thread per core adds contention, not
  throughput (llama.cpp counts physical cores for the same reason);
- the cgroup CPU quota (Docker ``--cpus``, a Kubernetes CPU limit): a container allowed 2 CPUs
  on a 64-core host that ran 64 threads would be throttled every period, stalling each step.

OpenMP alone would take every online CPU (``omp_get_num_procs``) and see none of this."""

from __future__ import annotations

import math
import os
from pathlib import Path


def allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many distinct cores the CPUs sit on (their SMT sibling sets); len(cpus) when the
    topology cannot be read."""
    cores = set()
    for cpu in cpus:
        try:
            siblings = (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add(siblings)
    return len(cores) or len(cpus)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs the cgroup quota allows (rounded up), or None when there is no quota.
    cgroup v2 keeps it in cpu.max ("quota period" or "max period"), v1 in cpu.cfs_quota_us
    and cpu.cfs_period_us (quota -1: none)."""
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()[:2]
        if quota_text == "max":
            return None
        return max(1, math.ceil(int(quota_text) / int(period_text)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def default_threads() -> int:
    n = physical_cores(allowed_cpus())
    limit = cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)
