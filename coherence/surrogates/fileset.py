"""A directory's set of files replaced as a whole: one rename commits a save.

Renaming files one after another is not enough: a kill between the weights and history.json
leaves weights one epoch ahead of the history, and a resume then trains that epoch twice.
So a save writes the whole new set elsewhere first and commits it with a single rename:

    D/<name>...            the current set: plain files, read directly by other tools
    D/manifest.json        size and SHA-256 of each file of the set, plus metadata (epochs)
    D/.staging-XXXX/       a set being written; incomplete, ignored, deleted by the next save
    D/.commit/             a complete set being moved into D; the commit point is the rename
                           .staging-XXXX → .commit. The manifest moves last, then .commit goes.

A kill before the commit rename leaves the old set whole; after it, the new set is whole in
.commit + D, :func:`finish_pending` (run by every writer before it writes) completes the
move, and readers meanwhile take each file from .commit while it is there. A staged
directory is itself a complete set with its manifest, so it can instead be renamed to a
snapshot directory (e.g. ``epochs/0004``) in one step.

Test-only hook: COHERENCE_TEST_SAVE_DELAY=<seconds> sleeps after each file is written or
moved, to widen the save window for crash tests. Never set it outside tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from coherence.io import shared_mode

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "coherence-file-set"
STAGING_PREFIX = ".staging-"
COMMIT_DIR = ".commit"
SAVE_DELAY_ENV = "COHERENCE_TEST_SAVE_DELAY"  # test-only: see the module docstring


def _test_delay() -> None:
    delay = os.environ.get(SAVE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_set(
    directory: Path, files: Mapping[str, bytes], meta: Mapping[str, Any], managed: Iterable[str]
) -> None:
    """Replace the file set of ``directory`` by ``files`` (name → content) atomically.

    ``managed``: every name a set of this kind may hold; those absent from ``files`` are
    removed on commit, so no stale file of an older set survives next to the new one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    finish_pending(directory, managed)
    _stage_and_rename(directory, files, meta, directory / COMMIT_DIR)
    _fsync_dir(directory)
    _test_delay()
    finish_pending(directory, managed)


def write_new_directory(target: Path, files: Mapping[str, bytes], meta: Mapping[str, Any]) -> bool:
    """Create ``target`` holding ``files`` plus a manifest, all or nothing: the set is staged
    beside it (``<parent>/.staging-XXXX``) and renamed to ``target`` in one step, so a kill
    leaves no ``target`` or a complete one. An existing ``target`` is kept (False returned):
    snapshots are written once. Abandoned staging directories of the parent are removed."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(STAGING_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        return False
    _stage_and_rename(parent, files, meta, target)
    _fsync_dir(parent)
    return True


def _stage_and_rename(
    parent: Path, files: Mapping[str, bytes], meta: Mapping[str, Any], target: Path
) -> None:
    """Write ``files`` and their manifest into a new staging directory under ``parent``,
    then rename it to ``target`` (the commit point); on any failure the staging goes."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    try:
        shared_mode(staging, directory=True)  # it becomes the checkpoint or snapshot folder
        entries = {}
        for name, data in files.items():
            _write_synced(staging / name, data)
            entries[name] = {"bytes": len(data), "sha256": digest(data)}
            _test_delay()
        manifest = {"format": MANIFEST_FORMAT, "files": entries, **meta}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _write_synced(staging / MANIFEST_FILE, text.encode())
        _fsync_dir(staging)
        os.rename(staging, target)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finish_pending(directory: Path, managed: Iterable[str]) -> None:
    """Complete an interrupted commit and delete abandoned staging directories.

    Only a writer calls this (readers never modify a directory). Idempotent: a kill inside
    it leaves work that the next call completes.
    """
    for stale in directory.glob(STAGING_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    commit = directory / COMMIT_DIR
    if not commit.is_dir() or commit.is_symlink():
        return
    manifest = read_manifest(directory)
    names = list(manifest["files"]) if manifest else []
    for name in names:
        if (commit / name).is_file():
            os.replace(commit / name, directory / name)
            _test_delay()
    for name in set(managed) - set(names):
        (directory / name).unlink(missing_ok=True)
    if (commit / MANIFEST_FILE).is_file():
        os.replace(commit / MANIFEST_FILE, directory / MANIFEST_FILE)
    _fsync_dir(directory)
    shutil.rmtree(commit, ignore_errors=True)


def current_path(directory: Path, name: str) -> Path:
    """Where the current set's ``name`` is: in .commit while a commit is being completed."""
    pending = directory / COMMIT_DIR / name
    return pending if pending.is_file() else directory / name


def read_bytes(directory: Path, name: str) -> bytes:
    """Bytes of the current set's ``name`` (raises FileNotFoundError if the set lacks it).

    A writer may move the file from .commit into ``directory`` between the lookup and the
    open; the second lookup then finds it there.
    """
    for _ in range(3):
        path = current_path(directory, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if path.parent == directory:
                raise
    return (directory / name).read_bytes()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The current set's manifest, or None for a directory written without one (older
    versions). A manifest that is not a JSON object with a ``files`` object counts as
    damaged: ValueError."""
    try:
        data = json.loads(read_bytes(directory, MANIFEST_FILE))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{directory / MANIFEST_FILE}: not valid JSON ({exc})") from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != MANIFEST_FORMAT
        or not isinstance(data.get("files"), dict)
    ):
        raise ValueError(f"{directory / MANIFEST_FILE}: not a {MANIFEST_FORMAT} manifest")
    return data


def mismatches(directory: Path, manifest: Mapping[str, Any], contents: Mapping[str, bytes]):
    """Names among ``contents`` whose size or digest differs from the manifest (or that the
    manifest does not list), each with what was found and what was recorded."""
    out = []
    files = manifest["files"]
    for name, data in contents.items():
        entry = files.get(name)
        if not isinstance(entry, dict):
            out.append(f"{name} is not listed in {MANIFEST_FILE}")
        elif entry.get("bytes") != len(data) or entry.get("sha256") != digest(data):
            out.append(
                f"{name} has {len(data)} bytes, sha256 {digest(data)[:12]}…, but the "
                f"manifest records {entry.get('bytes')} bytes, "
                f"sha256 {str(entry.get('sha256'))[:12]}…"
            )
    missing = [n for n in files if n not in contents and not current_path(directory, n).is_file()]
    out.extend(f"{name} is listed in {MANIFEST_FILE} but absent" for name in missing)
    return out
