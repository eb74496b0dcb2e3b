"""The cgroup CPU limit, read from files laid out as the kernel publishes them.

Each case writes /proc/self/mountinfo and /proc/self/cgroup lines in the kernel's format (the
v1 lines are those of a podman container started with ``--cpus 1`` on the test machine) and
the cgroup files they point to, and checks the limit read back; the slots then count no more
cores than the limit allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coherence.cache import cpu_quota, slots

CONTAINER = "/libpod_parent/libpod-c53f18bf"


def _layout(
    tmp_path: Path, mounts: list[str], cgroup: list[str], files: dict[str, str]
) -> tuple[Path, Path]:
    """mountinfo and cgroup files naming mount points under tmp_path, and the cgroup files."""
    mountinfo, own = tmp_path / "mountinfo", tmp_path / "cgroup"
    mountinfo.write_text("\n".join(line.replace("@", str(tmp_path)) for line in mounts) + "\n")
    own.write_text("\n".join(cgroup) + "\n")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return mountinfo, own


V2_MOUNT = "31 23 0:28 / @/fs rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw"


def _v1_mount(root: str, point: str = "@/cpu", options: str = "rw,cpu") -> str:
    return f"102 101 0:29 {root} {point} ro,nosuid,nodev,relatime - cgroup cgroup {options}"


@pytest.mark.parametrize(
    ("cpu_max", "cpus", "cores"),
    [
        ("200000 100000", 2.0, 2),
        ("150000 100000", 1.5, 1),  # rounded down: a second thread would be throttled
        ("50000 100000", 0.5, 1),  # at least one thread
        ("400000 200000", 2.0, 2),  # the period need not be 100 ms
        ("max 100000", None, None),
    ],
)
def test_cgroup_v2_container(tmp_path: Path, cpu_max: str, cpus, cores) -> None:
    paths = _layout(tmp_path, [V2_MOUNT], ["0::/"], {"fs/cpu.max": cpu_max})
    assert cpu_quota.quota_cpus(*paths) == cpus
    assert cpu_quota.quota_cores(*paths) == cores


def test_cgroup_v2_ancestor_limit_binds(tmp_path: Path) -> None:
    """A slice's limit binds the cgroups inside it, tighter or looser than their own."""
    files = {
        "fs/user.slice/cpu.max": "150000 100000",
        "fs/user.slice/job.scope/cpu.max": "max 100000",
        "fs/cpu.max": "800000 100000",
    }
    paths = _layout(tmp_path, [V2_MOUNT], ["0::/user.slice/job.scope"], files)
    assert cpu_quota.quota_cpus(*paths) == 1.5
    files["fs/user.slice/job.scope/cpu.max"] = "100000 100000"
    paths = _layout(tmp_path, [V2_MOUNT], ["0::/user.slice/job.scope"], files)
    assert cpu_quota.quota_cpus(*paths) == 1.0


def test_cgroup_v1_container_as_podman_mounts_it(tmp_path: Path) -> None:
    """The mount shows the container's own cgroup as its root: the files are at the mount point."""
    cgroup = [f"2:cpuacct:{CONTAINER}", f"1:cpu:{CONTAINER}", f"0::{CONTAINER}"]
    files = {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}
    paths = _layout(tmp_path, [_v1_mount(CONTAINER)], cgroup, files)
    assert cpu_quota.quota_cores(*paths) == 1
    (tmp_path / "cpu/cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota.quota_cpus(*paths) is None


def test_cgroup_v1_host_layout_with_joint_controllers(tmp_path: Path) -> None:
    """On a host the mount shows the hierarchy's root and the process sits below it, in a
    hierarchy mounted as cpu,cpuacct; the memory controller's limit is not a CPU limit."""
    mounts = [
        _v1_mount("/", "@/cpu,cpuacct", "rw,cpu,cpuacct"),
        _v1_mount("/", "@/memory", "rw,memory"),
    ]
    cgroup = ["4:memory:/batch/7", "3:cpu,cpuacct:/batch/7"]
    files = {
        "cpu,cpuacct/batch/7/cpu.cfs_quota_us": "300000",
        "cpu,cpuacct/batch/7/cpu.cfs_period_us": "100000",
        "memory/batch/7/cpu.cfs_quota_us": "100000",
        "memory/batch/7/cpu.cfs_period_us": "100000",
    }
    assert cpu_quota.quota_cpus(*_layout(tmp_path, mounts, cgroup, files)) == 3.0


def test_hybrid_layout_takes_the_tighter_hierarchy(tmp_path: Path) -> None:
    mounts = [_v1_mount("/"), V2_MOUNT]
    cgroup = ["1:cpu:/", "0::/"]
    files = {
        "cpu/cpu.cfs_quota_us": "400000",
        "cpu/cpu.cfs_period_us": "100000",
        "fs/cpu.max": "200000 100000",
    }
    assert cpu_quota.quota_cpus(*_layout(tmp_path, mounts, cgroup, files)) == 2.0


def test_a_path_outside_the_mount_reads_the_mount_point(tmp_path: Path) -> None:
    """A cgroup path that is not below what the mount shows (a process moved to a cgroup the
    container cannot see): the mount point's files are the nearest it can read."""
    files = {
        "cpu/cpu.cfs_quota_us": "200000",
        "cpu/cpu.cfs_period_us": "100000",
        "cpu/elsewhere/cpu.cfs_quota_us": "50000",  # not this process's: never read
        "cpu/elsewhere/cpu.cfs_period_us": "100000",
    }
    paths = _layout(tmp_path, [_v1_mount(CONTAINER)], ["1:cpu:/elsewhere"], files)
    assert cpu_quota.quota_cpus(*paths) == 2.0


def test_escaped_mount_point(tmp_path: Path) -> None:
    mount = V2_MOUNT.replace("@/fs", "@/cg\\040root")
    paths = _layout(tmp_path, [mount], ["0::/"], {"cg root/cpu.max": "200000 100000"})
    assert cpu_quota.quota_cpus(*paths) == 2.0


@pytest.mark.parametrize("cpu_max", ["", "garbage", "0 100000", "100000 0", "-5 100000", "100000"])
def test_unreadable_or_absent_limits_set_none(tmp_path: Path, cpu_max: str) -> None:
    paths = _layout(tmp_path, [V2_MOUNT], ["0::/"], {"fs/cpu.max": cpu_max})
    assert cpu_quota.quota_cpus(*paths) is None


def test_no_cgroup_files_sets_none(tmp_path: Path) -> None:
    assert cpu_quota.quota_cpus(tmp_path / "absent", tmp_path / "absent") is None
    paths = _layout(tmp_path, ["31 23 0:28 / @/fs rw - tmpfs tmpfs rw"], ["0::/"], {})
    assert cpu_quota.quota_cpus(*paths) is None


def test_slots_count_no_more_cores_than_the_limit(tmp_path: Path, monkeypatch) -> None:
    """A one-core limit on a machine of more CPUs: one job of one thread, and the load
    reading still compares other processes' use with the CPUs it is read over."""
    monkeypatch.delenv(slots.THREADS_ENV, raising=False)
    monkeypatch.delenv(slots.MAX_JOBS_ENV, raising=False)
    monkeypatch.setattr(slots, "visible_cpus", lambda: 8)
    monkeypatch.setattr(slots, "cores_taken_by_others", lambda: 0)
    limit = {"fs/cpu.max": "100000 100000"}
    mountinfo, own = _layout(tmp_path, [V2_MOUNT], ["0::/"], limit)
    monkeypatch.setattr(cpu_quota, "MOUNTINFO", mountinfo)
    monkeypatch.setattr(cpu_quota, "OWN_CGROUP", own)
    assert (slots.machine_cores(), slots.max_jobs(), slots.threads_per_job()) == (1, 1, 1)
    (tmp_path / "fs/cpu.max").write_text("600000 100000\n")  # 6 of 8 CPUs
    assert (slots.machine_cores(), slots.max_jobs(), slots.threads_per_job()) == (6, 3, 2)
    monkeypatch.setattr(slots, "cores_taken_by_others", lambda: 7)  # the host is busy
    assert slots.threads_and_taken() == (1, 7)
    monkeypatch.setattr(slots, "cores_taken_by_others", lambda: 5)
    assert slots.threads_and_taken() == (2, 5)  # 3 CPUs free, the share is 2
    (tmp_path / "fs/cpu.max").write_text("max 100000\n")
    assert slots.machine_cores() == 8


def test_cpuset_is_not_the_cpu_controller(tmp_path: Path) -> None:
    """``cpuset`` (which CPUs, not how much time) is another controller: neither its line in
    /proc/self/cgroup nor its mount names the ``cpu`` hierarchy, whatever their order."""
    mounts = [
        _v1_mount("/", "@/cpu,cpuacct", "rw,cpu,cpuacct"),
        _v1_mount("/", "@/cpuset", "rw,cpuset"),
    ]
    cgroup = ["3:cpu,cpuacct:/batch/7", "5:cpuset:/pinned"]
    files = {
        "cpu,cpuacct/batch/7/cpu.cfs_quota_us": "300000",
        "cpu,cpuacct/batch/7/cpu.cfs_period_us": "100000",
        "cpuset/pinned/cpu.cfs_quota_us": "100000",  # not a cpu hierarchy: never read
        "cpuset/pinned/cpu.cfs_period_us": "100000",
        "cpuset/batch/7/cpu.cfs_quota_us": "100000",
        "cpuset/batch/7/cpu.cfs_period_us": "100000",
    }
    assert cpu_quota.quota_cpus(*_layout(tmp_path, mounts, cgroup, files)) == 3.0


def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    """Lines this reader does not understand (a truncated mountinfo line, a cgroup line without
    its path, a cgroup2 mount the process has no line for) are skipped, not a crash."""
    mounts = [
        "31 23 0:28 / @/fs",  # no " - " separator
        "32 23 0:29 / - cgroup",  # too few fields
        V2_MOUNT,  # the process names no v2 cgroup below: not its hierarchy
        _v1_mount("/"),
    ]
    cgroup = ["garbage", "7:cpu", "1:cpu:/"]
    files = {
        "cpu/cpu.cfs_quota_us": "200000",
        "cpu/cpu.cfs_period_us": "100000",
        "fs/cpu.max": "100000 100000",
    }
    assert cpu_quota.quota_cpus(*_layout(tmp_path, mounts, cgroup, files)) == 2.0


def test_an_ancestors_tighter_limit_binds_a_cgroup_with_its_own(tmp_path: Path) -> None:
    """A container's own limit of 4 CPUs inside a pod limited to 1.5: 1.5 binds (the walk up
    does not stop at the first limit found)."""
    files = {
        "fs/kubepods/pod1/cpu.max": "150000 100000",
        "fs/kubepods/pod1/ctr/cpu.max": "400000 100000",
    }
    paths = _layout(tmp_path, [V2_MOUNT], ["0::/kubepods/pod1/ctr"], files)
    assert cpu_quota.quota_cpus(*paths) == 1.5
    assert cpu_quota.quota_cores(*paths) == 1
