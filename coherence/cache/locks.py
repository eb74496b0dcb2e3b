"""Per-key job locks: fcntl.flock on ``<cache>/locks/<key>.lock``.

The OS releases a flock when the last descriptor of its open file closes, so a worker killed
with SIGKILL frees its key at once, and "a job for this key is running" is exactly "its lock
is held". A held descriptor can be handed to a child process (``pass_fds``): the lock then
lives as long as the child, with no gap between submitting a job and the worker starting.
Lock files are empty. The cache's per-key ones are deleted only by a cache clear, each while
it holds it (``ResultStore.clear``), so a running job's stays. A lock beside a dataset or
checkpoint (``try_lock_beside``) is deleted by its holder (``release(remove=True)``) only when
the write left no target (a refused first import): beside an existing one it stays, since a
user who may not create files in that folder shares it read-only, and would otherwise lock a
private file beside a link while the next writer creates a new shared one. Unlinking a flock
file races with processes that opened it just before, so ``acquire`` checks, once it holds the
lock, that its file is still the one at the path, and otherwise takes the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from coherence.errors import RequestError

# a folder that refuses a new file: no permission, or a read-only mount
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class KeyLock:
    """An exclusive, non-reentrant lock on one file; ``acquire`` and ``probe`` never block
    unless asked to."""

    def __init__(self, path: str | os.PathLike, *, mode: int = 0o600) -> None:
        """``mode``: of a lock file this creates (before the umask). 0o600 for the cache's
        per-key locks; 0o666 (the umask decides) for a lock beside a shared dataset or
        checkpoint, which other users' writers must be able to open."""
        self.path = Path(path)
        self.mode = mode
        self._fd: int | None = None

    @classmethod
    def inherited(cls, path: str | os.PathLike, fd: int) -> KeyLock:
        """Adopt a descriptor that already holds the lock (passed by the submitting process).

        Re-locking a held open file description is a no-op, so this also checks the claim.
        """
        lock = cls(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            raise RuntimeError(f"descriptor {fd} does not hold the lock {path}") from error
        lock._fd = fd
        return lock

    @property
    def held(self) -> bool:
        """Held by this object (not: by anyone)."""
        return self._fd is not None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} is not held")
        return self._fd

    def acquire(
        self,
        *,
        blocking: bool = False,
        poll_seconds: float = 0.2,
        on_wait: Callable[[], None] | None = None,
    ) -> bool:
        """Take the lock; with ``blocking`` wait for it, calling ``on_wait()`` every poll."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        while True:
            fd = self._open()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not blocking:
                        os.close(fd)
                        return False
                    if on_wait is not None:
                        on_wait()
                    time.sleep(poll_seconds)
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                break
            if self._still_at_path(fd):
                self._fd = fd
                return True
            os.close(fd)  # its holder removed it after we opened it: lock the path's new file

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        except OSError as error:  # another user's lock file, or a read-only mount:
            if error.errno not in _UNWRITABLE or not self.path.is_file():
                raise
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # flock needs no write access

    def _still_at_path(self, fd: int) -> bool:
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def release(self, *, remove: bool = False) -> None:
        """Close this descriptor: the lock is freed unless a child still holds a copy.
        ``remove``: delete the lock file first, while still holding it (a writer's lock beside
        its target; a file that cannot be deleted, e.g. another user's, stays)."""
        if self._fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> KeyLock:
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock_beside(out: Path, lock_name: Callable[[Path], Path]) -> tuple[KeyLock, bool]:
    """The lock guarding writes into ``out``, taken without blocking: ``(lock, acquired)``.

    It lies at ``lock_name(the resolved out)``, so a symlinked ``out`` and its target share one
    lock (two writers through different names would otherwise clean up each other's files),
    created readable to others (another user's writer opens it read-only: flock needs no
    more); at ``lock_name(out as given)`` only where the target's folder refuses to create
    it, e.g. a link into a read-only share whose inside the writer may still write to. An
    existing lock there that cannot even be read is refused by name: a private lock beside
    the link would let two writers in at once."""
    shared = KeyLock(lock_name(out.resolve()), mode=0o666)
    try:
        return shared, shared.acquire()
    except OSError as error:
        if error.errno not in _UNWRITABLE:
            raise
        if shared.path.exists():
            raise RequestError(
                f"{out}: cannot open its lock {shared.path} ({error.strerror}); another "
                "user's writer holds it private: ask them to make it readable (chmod a+r) so "
                "that writers take turns"
            ) from None
    beside = KeyLock(lock_name(out.absolute()), mode=0o666)
    return beside, beside.acquire()


def lock_is_held(path: str | os.PathLike) -> bool:
    """Whether some process holds the lock right now (probe: take it and let go at once)."""
    if not Path(path).exists():
        return False
    probe = KeyLock(path)
    if probe.acquire(blocking=False):
        probe.release()
        return False
    return True


def acquire_soon(lock: KeyLock, attempts: int = 3, pause: float = 0.02) -> bool:
    """Try a few times: ``lock_is_held`` probes hold the lock for microseconds."""
    for attempt in range(attempts):
        if lock.acquire(blocking=False):
            return True
        if attempt + 1 < attempts:
            time.sleep(pause)
    return False
