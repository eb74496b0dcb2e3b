"""Small I/O rules every stage follows: files appear whole or not at all, and a device name
means the same thing everywhere.

``atomic_write_bytes`` writes to a temporary name in the target's directory and renames it
(``os.replace`` is atomic on POSIX), so a reader or a killed writer never sees half a file.
``resolve_device`` turns "auto" | "cpu" | "cuda" into a torch device (auto: CUDA when visible).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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


def resolve_device(device: str) -> torch.device:
    """ "auto" → CUDA when a GPU is visible, else CPU; "cpu" / "cuda" as named."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
