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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all; returns the path."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
