"""Small I/O rules every stage follows: files appear whole or not at all, and a device name
means the same thing everywhere.

``atomic_write_bytes`` writes to a temporary name in the target's directory and renames it
(``os.replace`` is atomic on POSIX), so a reader or a killed writer never sees half a file.
``check_device`` is the one rule for a device name (auto, cpu or cuda, and cuda only where a
GPU is visible); ``resolve_device`` turns it into a torch device (auto: CUDA when visible).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from coherence.analysis.vocabulary import Device, parse_device
from coherence.errors import RequestError

if TYPE_CHECKING:
    import torch


def _process_umask() -> int:
    """The umask, read once at import (reading it means setting it: not from threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _process_umask()
FILE_MODE = 0o666 & ~UMASK  # what open() would give: mkstemp's 0600 hid results from a group
DIR_MODE = 0o777 & ~UMASK  # what mkdir() would give, for mkdtemp's 0700 staging folders


def shared_mode(fd_or_path: int | str | os.PathLike, *, directory: bool = False) -> None:
    """Give a temporary file (by descriptor) or folder the mode a plain open()/mkdir() would
    have: a workspace shared by a group stays readable by it once the file is renamed."""
    mode = DIR_MODE if directory else FILE_MODE
    try:
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, mode)
        else:
            os.chmod(fd_or_path, mode)
    except OSError:  # a file system without POSIX modes (vfat, some FUSE mounts): keep going
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all; returns the path."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        shared_mode(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def check_folder_for(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse a file path whose folder cannot be made: a missing folder is created when
    the file is written, but one under a file (``--out notes.txt/r.npz``) would fail only
    then, after the work."""
    target = Path(path)
    ancestor = target.parent.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RequestError(
            f"{flag} {target}: {ancestor} is a file, not a folder; give a path in a folder"
        )
    try:  # a probe, as the write will be: permissions alone miss /proc, read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".coherence-probe.", dir=ancestor)
    except OSError as error:
        raise RequestError(
            f"{flag} {target}: cannot write in {ancestor} ({error.strerror or error}); give "
            "a path in a folder you can write to"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return target


def check_device(device: str | Device) -> Device:
    """The Device named ``device``; RequestError for an unknown name, or for cuda when no
    CUDA GPU is visible (torch is imported only to ask that)."""
    parsed = parse_device(device)
    if parsed is Device.CUDA:
        import torch

        if not torch.cuda.is_available():
            raise RequestError("device='cuda' but no CUDA GPU is visible; use auto or cpu")
    return parsed


def resolve_device(device: str | Device) -> torch.device:
    """ "auto" → CUDA when a GPU is visible, else CPU; "cpu" / "cuda" as named (checked by
    ``check_device``)."""
    import torch

    parsed = check_device(device)
    if parsed is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(parsed.value)
