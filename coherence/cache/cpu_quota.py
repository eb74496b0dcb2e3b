"""The CPU limit of this process's cgroup: how many cores' worth of time it may use.

Why: a container started with ``docker run --cpus 2`` on a 64-core host sees all 64 CPUs in
its affinity set, yet the kernel lets it run 2 cores' worth per period and throttles the rest.
Torch on 64 threads there spends most of its time stalled, and the compute slots would let 32
jobs start at once. ``machine_cores`` therefore takes the smaller of the affinity set and this
limit.

Read the way the kernel publishes it, standard library only: /proc/self/mountinfo says where
each cgroup hierarchy is mounted and which of its paths that mount shows (a container sees its
own cgroup as the mount's root), /proc/self/cgroup names this process's cgroup in each, and
the limit is the tightest of that cgroup and its ancestors up to the mount: ``cpu.max``
("<quota> <period>" or "max <period>") under cgroup v2, ``cpu.cfs_quota_us`` (-1: none) and
``cpu.cfs_period_us`` under cgroup v1's ``cpu`` controller.
"""

from __future__ import annotations

import math
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUP = Path("/proc/self/cgroup")


def quota_cores(mountinfo: Path | None = None, own_cgroup: Path | None = None) -> int | None:
    """Whole cores the cgroup limit allows (the quota rounded down, at least 1: a job on more
    torch threads than that is throttled), or None where no limit is set or none can be read
    (not Linux, no cgroup mounted)."""
    limit = quota_cpus(mountinfo, own_cgroup)
    return None if limit is None else max(1, math.floor(limit + 1e-9))


def quota_cpus(mountinfo: Path | None = None, own_cgroup: Path | None = None) -> float | None:
    """The cgroup CPU limit in cores (quota / period, e.g. 1.5), the tightest over every
    mounted hierarchy and every ancestor; None when unlimited or unreadable. The two paths
    default to this process's /proc files."""
    try:
        mounts = (mountinfo or MOUNTINFO).read_text().splitlines()
        memberships = (own_cgroup or OWN_CGROUP).read_text().splitlines()
    except OSError:
        return None
    limits = [
        limit
        for directory, mount_point, version in _cpu_cgroup_dirs(mounts, memberships)
        for limit in _limits_up_to_mount(directory, mount_point, version)
    ]
    return min(limits) if limits else None


def _cpu_cgroup_dirs(mounts: list[str], memberships: list[str]) -> list[tuple[Path, Path, int]]:
    """(this process's cgroup directory, the mount point, cgroup version) for the v2
    hierarchy and the v1 hierarchy holding the ``cpu`` controller, where mounted."""
    paths: dict[str, str] = {}  # "v2" or "cpu" -> the process's cgroup path
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["cpu"] = path
    found: list[tuple[Path, Path, int]] = []
    for line in mounts:
        left, sep, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if not sep or len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2" and "v2" in paths:
            path, version = paths["v2"], 2
        elif kind[0] == "cgroup" and "cpu" in kind[2].split(",") and "cpu" in paths:
            path, version = paths["cpu"], 1
        else:
            continue
        mount_point = Path(_unescape(fields[4]))
        found.append((_inside(mount_point, _unescape(fields[3]), path), mount_point, version))
    return found


def _inside(mount_point: Path, root: str, path: str) -> Path:
    """Where the cgroup ``path`` lies under a mount showing ``root`` of its hierarchy; the mount
    point itself when the path is not below that root (a cgroup namespace shows "/")."""
    relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path()
    return mount_point / relative


def _limits_up_to_mount(directory: Path, mount_point: Path, version: int) -> list[float]:
    """The limits a cgroup and its ancestors set, up to the mount's root (a parent's limit
    binds its children: a systemd slice, a pod around its containers)."""
    limits: list[float] = []
    while True:
        limit = _read_limit(directory, version)
        if limit is not None:
            limits.append(limit)
        if directory == mount_point or mount_point not in directory.parents:
            return limits
        directory = directory.parent


def _read_limit(directory: Path, version: int) -> float | None:
    """One cgroup's own limit in cores, None when it sets none or its files are missing."""
    try:
        if version == 2:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
