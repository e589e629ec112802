"""The process's share of the machine: how many threads a call uses by default.

A call with ``n_threads=None`` uses the thread count the user set (``OMP_NUM_THREADS``,
threadpoolctl, ``omp_set_num_threads``) or, when none is set, the process's CPU share: the
processors it may run on (its affinity mask: ``taskset``, ``os.sched_setaffinity``, a
container's cpuset) and no more than its cgroup CPU quota allows (v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``, v2 ``cpu.max``; a quota of 1.5 CPUs gives 2 threads, as loky's
``cpu_count`` rounds). A count the user set is honoured up to the processor count; the share
is read once, when bnfast is imported.
"""
from __future__ import annotations

import math
import os

from . import _kernels

__all__ = ["cpu_share", "cgroup_cpu_limit", "affinity_count", "explicit_thread_count"]


def affinity_count() -> int:
    """Processors this process may run on (its affinity mask where the OS has one)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _v2_limit(text: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD")."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(quota: str | None, period: str | None) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none)."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _ancestors(path: str) -> list[str]:
    """A cgroup path and every parent up to the root, deepest first."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) if i else "/" for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup",
                     mount: str = "/sys/fs/cgroup") -> float | None:
    """The CPUs this process's cgroups allow (the smallest quota on its path), or None.

    Parameters
    ----------
    proc_cgroup : str
        The process's cgroup membership file (``/proc/self/cgroup``).
    mount : str
        Where the cgroup file systems are mounted (``/sys/fs/cgroup``): cgroup v2 unified, or
        v1 controllers in subfolders (``cpu``, ``cpu,cpuacct``).
    """
    limits: list[float] = []
    membership = _read(proc_cgroup) or ""
    for line in membership.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2: "0::/path"
            for p in _ancestors(path):
                lim = _v2_limit(_read(os.path.join(mount + p, "cpu.max")))
                if lim is not None:
                    limits.append(lim)
        elif "cpu" in controllers.split(","):
            for folder in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = os.path.join(mount, folder)
                if not os.path.isdir(base):
                    continue
                for p in _ancestors(path):
                    d = base + p
                    lim = _v1_limit(_read(os.path.join(d, "cpu.cfs_quota_us")),
                                    _read(os.path.join(d, "cpu.cfs_period_us")))
                    if lim is not None:
                        limits.append(lim)
                break
    # In a container the process's own cgroup is often the namespace's root: read it too.
    root_v2 = _v2_limit(_read(os.path.join(mount, "cpu.max")))
    root_v1 = _v1_limit(_read(os.path.join(mount, "cpu", "cpu.cfs_quota_us")),
                        _read(os.path.join(mount, "cpu", "cpu.cfs_period_us")))
    limits += [v for v in (root_v2, root_v1) if v is not None]
    return min(limits) if limits else None


def cpu_share(procs: int | None = None, limit: float | None = None) -> int:
    """Threads worth running by default: the affinity count, capped by the cgroup quota
    rounded up (at least 1). Arguments stand for the machine's own values (tests)."""
    procs = affinity_count() if procs is None else procs
    limit = cgroup_cpu_limit() if limit is None else limit
    share = procs if limit is None else min(procs, max(1, math.ceil(limit)))
    return max(1, share)


def explicit_thread_count(environ: dict[str, str] | None = None) -> int:
    """The count OMP_NUM_THREADS sets (its first entry), or 0 when unset or unreadable."""
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(text.split(",")[0])
    except ValueError:
        return 0
    return n if n > 0 else 0


def configure() -> None:
    """Tell the kernels the processors, the share and the user's count (at import)."""
    procs = affinity_count()
    _kernels.set_cpus(procs, cpu_share(procs), explicit_thread_count())
