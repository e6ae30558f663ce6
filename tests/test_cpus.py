"""The cores a process may use: its affinity, capped by a container's CPU quota (cgroup v2 or v1)."""

from __future__ import annotations

import os

import pytest

from imagesearch.cpus import cgroup_quota, usable_cores


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
