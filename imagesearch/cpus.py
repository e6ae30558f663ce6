"""The CPU cores this process may use: its affinity mask, capped by its cgroup's CPU quota (a
container's ``--cpus``), which ``os.cpu_count()`` does not see: a container limited to 2 CPUs on a
64-core host would otherwise size its decode processes and search connections for 64."""

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
