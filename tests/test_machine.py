"""The cores and memory a process may use: affinity and physical memory, capped by a container's cgroup
(v2 or v1) limits."""

from __future__ import annotations

import os

import pytest

from imagesearch.machine import cgroup_memory_limit, cgroup_quota, usable_cores, usable_memory


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "150000 100000\n"}, 1.5),                                        # v2: --cpus=1.5
    ({"cpu.max": "max 100000\n"}, None),                                          # v2: no limit
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),     # v1: no limit
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),                                                                   # no cgroup files
])
def test_the_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path, files, quota):
    assert cgroup_quota(_cgroup(tmp_path, files)) == quota


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_up(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert usable_cores(cgroup=_cgroup(tmp_path / "a", {"cpu.max": "150000 100000"})) == 2
    assert usable_cores(cgroup=_cgroup(tmp_path / "b", {"cpu.max": "50000 100000"})) == 1
    assert usable_cores(cgroup=_cgroup(tmp_path / "c", {"cpu.max": "max 100000"})) == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_cores(cgroup=_cgroup(tmp_path / "d", {"cpu.max": "800000 100000"})) == 2


@pytest.mark.parametrize("files, limit", [
    ({"memory.max": "2147483648\n"}, 2 * 2**30),                                   # v2: --memory=2g
    ({"memory.max": "max\n"}, None),                                               # v2: no limit
    ({"memory/memory.limit_in_bytes": "1073741824\n"}, 2**30),                     # v1
    ({"memory.max": "lots\n"}, None),
    ({}, None),
])
def test_the_cgroup_memory_limit_is_read_from_v2_or_v1_files(tmp_path, files, limit):
    assert cgroup_memory_limit(_cgroup(tmp_path, files)) == limit


def test_usable_memory_is_the_machines_capped_by_the_cgroup_limit(tmp_path, monkeypatch):
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 16 * 2**30 // 4096}  # a 16 GiB machine
    monkeypatch.setattr(os, "sysconf", pages.__getitem__)
    assert usable_memory(cgroup=_cgroup(tmp_path / "a", {"memory.max": str(2 * 2**30)})) == 2 * 2**30
    assert usable_memory(cgroup=_cgroup(tmp_path / "b", {"memory.max": "max"})) == 16 * 2**30
    # cgroup v1 without a limit reports a number larger than the machine
    assert usable_memory(cgroup=_cgroup(tmp_path / "c", {"memory/memory.limit_in_bytes": str(2**63 - 4096)})) == 16 * 2**30


def test_usable_memory_without_the_machines_figure_falls_back_to_the_cgroup_or_4_gib(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: -1)
    assert usable_memory(cgroup=_cgroup(tmp_path / "a", {"memory.max": str(2**30)})) == 2**30
    assert usable_memory(cgroup=_cgroup(tmp_path / "b", {})) == 4 * 2**30
