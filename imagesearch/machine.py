"""The cores and memory this process may use, as a container sees them.

Cores: the affinity mask, capped by the cgroup's CPU quota (a container's ``--cpus``), which
``os.cpu_count()`` does not see: a container limited to 2 CPUs on a 64-core host would otherwise
size its decode processes and search connections for 64. Memory: the physical memory, capped by
the cgroup's limit (``--memory``), which sizes the embedded PostgreSQL's buffers."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores(*, cgroup: Path = CGROUP) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs the cgroup's quota allows (v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us``), or None."""
    for quota_file, period_file in ((cgroup / "cpu.max", None),
                                    (cgroup / "cpu" / "cpu.cfs_quota_us", cgroup / "cpu" / "cpu.cfs_period_us")):
        try:
            if period_file is None:  # v2: "<quota> <period>", or "max <period>"
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
        except ValueError:
            return None
    return None


def usable_memory(*, cgroup: Path = CGROUP) -> int:
    """Bytes of memory: the machine's, or its cgroup's limit where lower."""
    try:
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        physical = page * pages if page > 0 and pages > 0 else -1
    except (AttributeError, ValueError, OSError):  # not on this platform
        physical = -1
    limit = cgroup_memory_limit(cgroup)
    if physical <= 0:
        return limit or 4 * 2**30  # unknown: a modest machine's
    return min(physical, limit) if limit else physical


def cgroup_memory_limit(cgroup: Path = CGROUP) -> int | None:
    """Bytes the cgroup's limit allows (v2 ``memory.max``, else v1 ``memory/memory.limit_in_bytes``),
    or None. v1 reports no limit as a huge number, which the caller's min() with the machine drops."""
    for limit_file in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            return int(text) if int(text) > 0 else None
        except ValueError:
            return None
    return None
