"""The workspace: the one directory tree the product reads and writes.

Default ``./workspace``, or ``COHERENCE_WORKSPACE``. Every user-supplied path that the
dashboard opens is resolved inside it, so a crafted name (``../../etc``) cannot escape.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from coherence.errors import RequestError, WorkspacePathError

ENV_VAR = "COHERENCE_WORKSPACE"


def workspace_root(root: str | os.PathLike | None = None) -> Path:
    """The workspace directory (not created here)."""
    if root is not None:
        return Path(root).expanduser().resolve()
    return Path(os.environ.get(ENV_VAR, "workspace")).expanduser().resolve()


def named_by(root: str | os.PathLike | None) -> str:
    """Where the workspace came from, in the user's words: '--workspace X', the variable
    'COHERENCE_WORKSPACE=X', or the default folder (an error blamed --workspace for a path
    set in the environment)."""
    resolved = workspace_root(root)
    if root is not None:
        return f"--workspace {resolved}"
    if ENV_VAR in os.environ:
        return f"{ENV_VAR}={resolved}"
    return f"the default workspace {resolved} (no --workspace, no {ENV_VAR})"


def datasets_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "datasets"


def checkpoints_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "checkpoints"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    return workspace_root(root) / "cache"


def link_out_of(root: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """The first file or directory under ``path`` that is a link resolving outside ``root``
    (a dataset or checkpoint directory inside the workspace may still link a file out), as a
    path relative to root; None when there is none."""
    for directory, subdirs, files in os.walk(path):
        for name in (*subdirs, *files):
            item = Path(directory) / name
            if stat.S_ISLNK(item.lstat().st_mode):
                try:
                    resolve_inside(root, item)
                except WorkspacePathError:
                    return str(item.relative_to(root))
    return None


def resolve_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Resolve ``path`` (relative to root, or absolute) and refuse it if it leaves root."""
    base = Path(root).expanduser().resolve()
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if resolved != base and base not in resolved.parents:
        raise WorkspacePathError(
            f"{path}: this path is outside the workspace ({base}); copy it in there, or use "
            f"a workspace that contains it (--workspace or {ENV_VAR})"
        )
    return resolved


def secure_tree(path: str | os.PathLike) -> list[str]:
    """Make a directory the product writes (the cache) safe to read back: refuse it when any
    entry belongs to another user, and remove group and other write permission where it is
    set. Why: the cache holds results the dashboard loads and serves; an entry another local
    account can write is an entry it can replace. Returns one note per permission fixed;
    raises WorkspacePathError naming the entry, its owner and the fix. Absent: nothing to do.
    """
    top = Path(path)
    if not top.exists():
        return []
    notes = []
    uid = os.geteuid()
    for directory, subdirs, files in os.walk(top):  # subdirectories: each in its own turn
        here = Path(directory)
        links = [here / n for n in subdirs if (here / n).is_symlink()]  # not walked into
        for item in (here, *links, *(here / n for n in files)):
            info = item.lstat()
            if info.st_uid != uid:
                raise WorkspacePathError(
                    f"{item}: owned by user id {info.st_uid}, not by this user ({uid}); "
                    f"another account could replace what the dashboard serves from {top}. "
                    f"Remove {top} (it is only a cache) or give it to this user with chown -R"
                )
            loose = stat.S_IMODE(info.st_mode) & (stat.S_IWGRP | stat.S_IWOTH)
            if loose and not stat.S_ISLNK(info.st_mode):
                item.chmod(stat.S_IMODE(info.st_mode) & ~loose)
                notes.append(f"{item}: removed group/other write permission")
    return notes


# the files that make a folder a checkpoint (coherence.surrogates.checkpoint writes both; a
# snapshot under epochs/NNNN is one too)
CHECKPOINT_FILES = ("config.json", "model.safetensors")


def enclosing_checkpoint(path: str | os.PathLike) -> Path | None:
    """The outermost checkpoint folder that ``path`` is or lies in, None if none: what a
    command must not write its own files into (a result's .json sidecar named config.json
    replaced a checkpoint's config)."""
    found = None
    for folder in [Path(path).resolve(), *Path(path).resolve().parents]:
        if all((folder / name).is_file() for name in CHECKPOINT_FILES):
            found = folder
    return found


def enclosing_dataset(path: str | os.PathLike) -> Path | None:
    """The Well dataset folder (its files under ``data/<split>/``) that ``path`` is, or lies
    in as ``data/`` or ``data/<split>/``; None if none. A result or report written there sits
    among the dataset's own files. Only those three levels: a project folder far above a
    dataset is not one."""
    from coherence.simulation.dataset import dataset_files  # it imports this module
    from coherence.simulation.families import SPLITS

    folder = Path(path).resolve()
    candidates = [folder]
    if folder.name == "data":
        candidates.append(folder.parent)
    if folder.name in SPLITS and folder.parent.name == "data":
        candidates.append(folder.parent.parent)
    # only those: a workspace beside a dataset's data/ folder was taken for the dataset
    return next((c for c in candidates if dataset_files(c)), None)


def checked_workspace(root: str | os.PathLike | None = None) -> Path:
    """``workspace_root(root)``, refused when it is (or lies in) a checkpoint or a dataset:
    `--workspace <checkpoint>` made a cache/ tree inside the checkpoint, even for the
    read-only `cache info`, and analyses stored their results there."""
    resolved = workspace_root(root)
    if resolved.exists() and not resolved.is_dir():  # "Not a directory: …/afile/cache"
        raise RequestError(
            f"{named_by(root)} is a file, not a folder; name the folder that holds "
            "checkpoints/, datasets/ and cache/, or a new folder (it is made)"
        )
    if found := enclosing_input(resolved):
        kind, folder = found
        raise RequestError(
            f"workspace {resolved} (--workspace or {ENV_VAR}): {folder} is a {kind}, not "
            "a workspace; name the folder that holds checkpoints/, datasets/ and cache/, "
            f"e.g. {_beside_inputs(folder)}"
        )
    return resolved


def enclosing_input(path: str | os.PathLike) -> tuple[str, Path] | None:
    """("checkpoint" | "dataset", its folder) that ``path`` is or lies in, or None: what no
    command may write its own files into."""
    for kind, enclosing in (("checkpoint", enclosing_checkpoint), ("dataset", enclosing_dataset)):
        folder = enclosing(path)
        if folder is not None:
            return kind, folder
    return None


def refuse_inside_inputs(out: Path, what: str) -> None:
    """RequestError when ``out`` (a file to write) lies in a checkpoint or a dataset, naming
    an example path beside it: ``what`` is the thing written ("results", "the report")."""
    if found := enclosing_input(out.parent):
        kind, folder = found
        raise RequestError(
            f"--out {out}: {folder} is a {kind}; write {what} outside it, e.g. "
            f"{_beside_inputs(folder) / out.name}"
        )


def _beside_inputs(folder: Path) -> Path:
    """Where a file refused inside ``folder`` (a checkpoint or dataset) may go: its parent,
    or the workspace above it when that parent is a workspace's checkpoints or datasets
    folder (the example had put a result among the checkpoints the dashboard lists). A
    workspace is known by holding more than that one of its folders."""
    parent, above = folder.parent, folder.parent.parent
    folders = (checkpoints_dir(above), datasets_dir(above), cache_dir(above))
    if parent in folders and sum(f.is_dir() for f in folders) > 1:
        return above
    return parent
