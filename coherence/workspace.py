"""The workspace: the one directory tree the product reads and writes.

Default ``./workspace``, or ``COHERENCE_WORKSPACE``. Every user-supplied path that the
dashboard opens is resolved inside it, so a crafted name (``../../etc``) cannot escape.
"""

from __future__ import annotations

import os
from pathlib import Path

from coherence.errors import WorkspacePathError

ENV_VAR = "COHERENCE_WORKSPACE"


def workspace_root(root: str | os.PathLike | None = None) -> Path:
    """The workspace directory (not created here)."""
    if root is not None:
        return Path(root).expanduser().resolve()
    return Path(os.environ.get(ENV_VAR, "workspace")).expanduser().resolve()


def datasets_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "datasets"


def checkpoints_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "checkpoints"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "cache"


def resolve_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Resolve ``path`` (relative to root, or absolute) and refuse it if it leaves root."""
    base = Path(root).expanduser().resolve()
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if resolved != base and base not in resolved.parents:
        raise WorkspacePathError(
            f"{path}: this path is outside the workspace {base}; copy or link the file into "
            f"the workspace (or point {ENV_VAR} at a directory that contains it)"
        )
    return resolved
