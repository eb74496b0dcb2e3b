"""What the machine has free now: memory (within a container's limit) and disk space.

Torch-free, so the importers (which never load torch) check before they write: a 110 GB
import into 62 GB free used to fill the disk and end in h5py's traceback; a trajectory larger
than memory in numpy's allocation error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

UNKNOWN = 2**63 - 1  # no reading: refuse nothing
# the share of free memory a training step or an analysis may plan to use: a fifth is kept
# free, as the peaks are estimates (one rule for `analyze`, `train` and the study's plan)
USABLE_SHARE = 0.8


def cgroup_free() -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), or None without one. The
    page cache the kernel can drop (``inactive_file``) counts as free: after reading a
    69 GB file, memory.current alone says the container is full."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((base / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    try:
        for line in (base / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "inactive_file":
                used -= int(value)
    except (OSError, ValueError):
        pass
    return int(limit) - max(used, 0)


def free_memory() -> int:
    """CPU memory free for new allocations: MemAvailable (else the free pages), bounded by a
    cgroup v2 limit when the process runs in a container."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        free = None
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return UNKNOWN
    cgroup = cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def free_disk(path: str | os.PathLike) -> int:
    """Bytes free on the file system that holds ``path`` (its nearest existing ancestor)."""
    here = Path(path).expanduser().absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        usage = shutil.disk_usage(here)
    except OSError:
        return UNKNOWN
    return usage.free if usage.total > 0 else UNKNOWN  # pseudo / FUSE file systems say 0


def size_text(n: int) -> str:
    """'12.4 GB' / '380 MB': disk sizes as file managers show them (decimal units)."""
    if n >= 1e9:
        return f"{n / 1e9:,.1f} GB"
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"  # not "0 MB"
