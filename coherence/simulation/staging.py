"""All-or-nothing writes of a dataset: what `coherence simulate` and `coherence import` share.

Why: a writer killed half-way must never leave something that looks like a dataset. The
reader (``open_dataset``) and the dashboard scan list every ``data/<split>/<class>.hdf5`` they
find, so a kill between two file renames used to publish a dataset with fewer classes or
splits.

The rules, for a dataset directory ``root`` (``<parent>/<name>``):

1. **One writer at a time.** A writer holds an exclusive ``flock`` on ``<parent>/.<name>.lock``
   for its whole run (the kernel drops it when the process dies, even on ``kill -9``), and
   deletes the file when it ends without a dataset (a refused first import); a second writer
   is refused with a message naming the lock.
2. **Nothing is written under ``data/`` directly.** Every new file is written into a hidden
   staging directory (``stage.path(split, file)``); each file there is itself written to a
   temporary name, validated, then renamed.
3. **Commit, new dataset:** when ``root`` does not exist, the staging directory is the sibling
   ``<parent>/.<name>.staging-<pid>`` and the commit is one ``rename`` of it to ``root``: the
   dataset appears complete or not at all.
4. **Commit, existing dataset** (an import adding classes, ``--overwrite``): the staging
   directory is ``<root>/.staging-<pid>``. The writer first writes the marker
   ``<staging>/COMMITTING`` (every staged file is complete by then), then renames the staged
   files into ``data/`` one by one, then removes the staging directory. While a marker exists
   the reader refuses the dataset (``pending_commit``), so a kill inside this short window
   makes the dataset invisible, never partial.
5. **Recovery** runs when a writer takes the lock: a staging directory with a marker is rolled
   forward (its files are complete: the commit is finished), one without is deleted (an
   aborted run; the old dataset is untouched), and stray ``data/<split>/.*.tmp`` files are
   deleted. Holding the lock proves no other writer owns them.

A class therefore enters a dataset with all its split files at once, and a run that adds
several classes adds all of them or none.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from coherence.cache.locks import try_lock_beside
from coherence.errors import RequestError
from coherence.workspace import enclosing_checkpoint

MARKER = "COMMITTING"
FINISHED_COMMIT = "finished the interrupted commit"  # recover()'s log line for a roll-forward
IN_ROOT_PREFIX = ".staging-"


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


def _sibling_prefix(root: Path) -> str:
    return f".{root.name}.staging-"


def pending_commit(root: str | os.PathLike) -> Path | None:
    """The staging directory of an interrupted commit, if any (the dataset is then hidden)."""
    for marker in sorted(Path(root).glob(f"{IN_ROOT_PREFIX}*/{MARKER}")):
        return marker.parent
    return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _staged_files(staging: Path) -> list[Path]:
    return sorted(p for p in (staging / "data").glob("*/*") if not p.name.startswith("."))


def _roll_forward(root: Path, staging: Path) -> None:
    for path in _staged_files(staging):
        target = root / "data" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    for split_dir in {root / "data" / p.parent.name for p in _staged_files(staging)}:
        _fsync_dir(split_dir)
    (staging / MARKER).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover(root: str | os.PathLike) -> list[str]:
    """Finish or discard what a killed writer left (call only while holding the lock).

    Returns one line per action, for the log.
    """
    root = Path(root)
    actions: list[str] = []
    if root.parent.is_dir():
        # escaped: a name like ds[12] must not match (and delete) ds1's staging
        for stale in sorted(root.parent.glob(glob.escape(_sibling_prefix(root)) + "*")):
            shutil.rmtree(stale, ignore_errors=True)
            actions.append(f"removed the unfinished new dataset {stale.name}")
    if not root.is_dir():
        return actions
    for staging in sorted(root.glob(IN_ROOT_PREFIX + "*")):
        if (staging / MARKER).exists():
            _roll_forward(root, staging)
            actions.append(f"{FINISHED_COMMIT} {staging.name}")
        else:
            shutil.rmtree(staging, ignore_errors=True)
            actions.append(f"removed the aborted staging directory {staging.name}")
    for tmp in sorted((root / "data").glob("*/.*.tmp")):
        tmp.unlink(missing_ok=True)
        actions.append(f"removed the leftover temporary file {tmp.relative_to(root)}")
    return actions


@dataclass
class Stage:
    """Where a transaction writes: ``path(split, name)`` in staging, ``final`` in the dataset."""

    root: Path
    staging: Path
    new_dataset: bool
    recovered: tuple[str, ...] = ()

    @property
    def finished_a_commit(self) -> bool:
        """Whether opening this stage rolled an interrupted commit forward."""
        return any(action.startswith(FINISHED_COMMIT) for action in self.recovered)

    def path(self, split: str, filename: str) -> Path:
        path = self.staging / "data" / split / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def final(self, split: str, filename: str) -> Path:
        return self.root / "data" / split / filename

    def commit(self) -> None:
        if not _staged_files(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        for split_dir in (self.staging / "data").iterdir():
            _fsync_dir(split_dir)
        if self.new_dataset:
            _fsync_dir(self.staging)
            os.rename(self.staging, self.root)
            _fsync_dir(self.root.parent)
            return
        marker_tmp = self.staging / f".{MARKER}.tmp"
        marker_tmp.write_text(str(os.getpid()))
        os.replace(marker_tmp, self.staging / MARKER)
        _fsync_dir(self.staging)
        _roll_forward(self.root, self.staging)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _is_workspace(folder: Path) -> bool:
    """A workspace's root: it holds datasets/, checkpoints/ or cache/ (a new one may hold
    only datasets/), the folders ``coherence.workspace`` names."""
    from coherence.workspace import cache_dir, checkpoints_dir, datasets_dir

    return any(where(folder).is_dir() for where in (datasets_dir, checkpoints_dir, cache_dir))


def check_dataset_folder(root: Path) -> None:
    """Refuse a dataset --out that is a file, or lies in a checkpoint's folder (simulate
    wrote its data/ into a checkpoint, which then read as neither), or in a dataset's data/
    folder, or is a folder of datasets or a workspace: an import wrote data/ beside the
    datasets (read as a broken dataset "data") or into the workspace root. A dataset's own
    folder (classes added to it) always passes."""
    from coherence.simulation.dataset import dataset_files  # it imports this module
    from coherence.workspace import datasets_dir, workspace_root

    if root.exists() and not root.is_dir():
        raise RequestError(f"--out {root}: a file, not a folder; choose a folder for the dataset")
    checkpoint = enclosing_checkpoint(root)
    if checkpoint is not None:
        raise RequestError(
            f"--out {root}: {checkpoint} is a checkpoint; write the dataset to its own folder "
            "(e.g. <workspace>/datasets/NAME)"
        )
    # its data/ or data/<split>/ folder (a sibling of data/ is a folder of its own)
    dataset = next(
        (d for d in (root.parent, root.parent.parent) if root.is_relative_to(d / "data")), None
    )
    if dataset is not None and dataset_files(dataset):
        raise RequestError(
            f"--out {root}: it lies in the data folder of the dataset {dataset}; choose a "
            f"folder of its own beside it (e.g. {dataset.parent / 'NAME'})"
        )
    if dataset_files(root):
        return
    if root == workspace_root() or _is_workspace(root):
        what, example = "a workspace", root / "datasets" / "NAME"
    elif root == datasets_dir() or (root.name == "datasets" and root.parent.name != "datasets"):
        what, example = "a workspace's folder of datasets", root / "NAME"
    else:
        held = (
            [
                c.name
                for c in sorted(root.iterdir())
                if c.is_dir() and not c.name.startswith(".") and dataset_files(c)  # not staging
            ]
            if root.is_dir()
            else []
        )
        if not held:
            return
        what, example = f"a folder of datasets ({', '.join(held[:3])})", root / "NAME"
    raise RequestError(
        f"--out {root}: that is {what}, not a dataset's folder; write the dataset to a "
        f"folder of its own, e.g. {example}"
    )


@contextlib.contextmanager
def dataset_transaction(root: str | os.PathLike) -> Iterator[Stage]:
    """Lock ``root``, recover leftovers, stage new files; commit on success, discard on error."""
    # resolved: a symlinked --out and its target must share one lock (else the second
    # writer's recovery deletes the first one's staging; try_lock_beside)
    given, root = Path(root).expanduser().absolute(), Path(root).expanduser().resolve()
    check_dataset_folder(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock, acquired = try_lock_beside(given, lock_path)
    try:
        if not acquired:
            raise RequestError(
                f"{root}: another `coherence simulate` or `coherence import` is writing this "
                f"dataset (it holds {lock.path}); wait for it to finish"
            )
        recovered = tuple(recover(root))
        new = not root.exists()
        staging = (
            root.parent / f"{_sibling_prefix(root)}{os.getpid()}"
            if new
            else root / f"{IN_ROOT_PREFIX}{os.getpid()}"
        )
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        stage = Stage(root=root, staging=staging, new_dataset=new, recovered=recovered)
        try:
            yield stage
        except BaseException:
            stage.abort()
            raise
        stage.commit()
    finally:
        # a refused import left .NAME.lock beside a dataset that never existed: deleted then;
        # beside a dataset it stays, for another user's writer may share it (try_lock_beside)
        lock.release(remove=acquired and not root.exists())
