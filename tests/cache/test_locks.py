"""cache.locks: the lock beside a dataset or checkpoint that writers share, across links and
users. Other users are played by os.open refusing access (the tests may run as root, whom
file modes do not stop)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from coherence.cache.locks import KeyLock, lock_is_held, try_lock_beside
from coherence.errors import RequestError
from coherence.simulation.staging import dataset_transaction, lock_path


def _beside(at):
    return at.parent / f".{at.name}.lock"


def test_a_shared_lock_file_is_as_open_as_the_umask_allows(tmp_path):
    """Datasets' locks were made by open(…, "a"), so the umask decided (0664 under umask
    002); the shared helper made them 0600, and another user's writer could not open them (a
    review). The cache's own per-key locks stay private."""
    old = os.umask(0o002)
    modes = {}
    try:
        with pytest.raises(InterruptedError), dataset_transaction(tmp_path / "d"):
            modes["dataset"] = stat.S_IMODE(lock_path(tmp_path / "d").stat().st_mode)
            raise InterruptedError  # nothing committed: only the lock file is of interest
        lock, acquired = try_lock_beside(tmp_path / "ckpt", _beside)
        modes["checkpoint"] = stat.S_IMODE(lock.path.stat().st_mode)
        lock.release()
        private = KeyLock(tmp_path / "key.lock")
        assert private.acquire()
        private.release()
    finally:
        os.umask(old)
    assert acquired
    assert modes == {"dataset": 0o664, "checkpoint": 0o664}
    assert stat.S_IMODE((tmp_path / "key.lock").stat().st_mode) == 0o600


def test_a_removed_lock_file_is_not_taken_by_one_who_opened_it_before(tmp_path, monkeypatch):
    """A writer deletes its lock file beside a dataset when it ends (refused imports left
    `.NAME.lock` files beside datasets that never existed). A process that opened the file
    just before the delete then locks a file no longer at the path: it must take the path's
    new file instead, or a third writer, creating that new file, would run beside it."""
    import fcntl

    path = tmp_path / ".d.lock"
    holder = KeyLock(path)
    assert holder.acquire()
    real_flock, calls = fcntl.flock, []

    def holder_ends_first(fd, operation):  # the holder finishes between open and flock
        calls.append(fd)
        if len(calls) == 1:
            holder.release(remove=True)
        return real_flock(fd, operation)

    late = KeyLock(path)
    monkeypatch.setattr(fcntl, "flock", holder_ends_first)
    assert late.acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(calls) == 2  # it let go of the deleted file and locked the path's new one
    third = KeyLock(path)
    assert not third.acquire()  # the path's file is held: excluded
    late.release(remove=True)
    assert not path.exists()
    assert third.acquire()  # and free again
    third.release()


def _refusing(monkeypatch, path, *, read_too: bool) -> None:
    """os.open refuses ``path`` for writing (and for reading with ``read_too``), as another
    user's lock file does."""
    real_open = os.open

    def another_users(file, flags, *args, **kwargs):
        writing = flags & (os.O_RDWR | os.O_WRONLY)
        if os.fspath(file) == os.fspath(path) and (writing or read_too):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", another_users)


def test_another_users_lock_is_taken_read_only_and_still_excludes(tmp_path, monkeypatch):
    """flock needs no write access: a lock file another user made (readable, not writable
    here) is opened read-only, and a second writer is still refused."""
    out = tmp_path / "real"
    out.mkdir()
    (tmp_path / "link").symlink_to(out)
    _beside(out).touch()
    _refusing(monkeypatch, _beside(out), read_too=False)
    first, acquired = try_lock_beside(out, _beside)
    assert acquired and first.path == _beside(out)
    second, again = try_lock_beside(tmp_path / "link", _beside)  # through the link: same lock
    assert second.path == _beside(out) and not again
    first.release()
    assert not (tmp_path / ".link.lock").exists()  # no private lock beside the link


def test_an_unreadable_lock_of_another_user_is_refused_by_name(tmp_path, monkeypatch):
    """Falling back to a private lock beside the link would let two writers in at once (a
    review): the lock is named instead, with the fix."""
    out = tmp_path / "real"
    out.mkdir()
    (tmp_path / "link").symlink_to(out)
    _beside(out).touch()
    _refusing(monkeypatch, _beside(out), read_too=True)
    with pytest.raises(RequestError, match=r"cannot open its lock .*\.real\.lock.*chmod a\+r"):
        try_lock_beside(tmp_path / "link", _beside)
    assert not (tmp_path / ".link.lock").exists()


def test_a_link_into_a_share_that_refuses_new_files_locks_beside_the_link(tmp_path, monkeypatch):
    """No lock file yet beside the target, and its folder refuses to create one (a read-only
    share): the writer locks beside the link it was given, in a folder it may write to."""
    out = tmp_path / "share" / "real"
    out.mkdir(parents=True)
    (tmp_path / "link").symlink_to(out)
    _refusing(monkeypatch, _beside(out), read_too=False)
    lock, acquired = try_lock_beside(tmp_path / "link", _beside)
    assert acquired and lock.path == tmp_path / ".link.lock"
    assert not _beside(out).exists()
    lock.release()


def test_a_keys_lock_is_held_exactly_while_a_holder_has_it(tmp_path):
    """The job status reads "running" from this probe; the cache's per-key lock files stay
    (a release without ``remove`` keeps the file), and probing creates none."""
    path = tmp_path / "locks" / "k.lock"
    assert not lock_is_held(path) and not path.exists()
    holder = KeyLock(path)
    assert holder.acquire() and holder.held
    assert lock_is_held(path)
    assert lock_is_held(path)  # the probe let go of nothing it did not take
    holder.release()
    assert not lock_is_held(path) and path.exists()


def test_an_inherited_descriptor_must_hold_the_lock(tmp_path):
    path = tmp_path / "k.lock"
    holder = KeyLock(path)
    assert holder.acquire()
    stranger = os.open(path, os.O_RDONLY)  # another open of the file: does not hold it
    with pytest.raises(RuntimeError, match="does not hold the lock"):
        KeyLock.inherited(path, stranger)
    adopted = KeyLock.inherited(path, os.dup(holder.fd))  # a copy of the holder's: holds it
    holder.release()
    assert adopted.held and lock_is_held(path)  # the copy keeps the lock alive
    adopted.release()
    assert not lock_is_held(path)
