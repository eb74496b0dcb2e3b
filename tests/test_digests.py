"""File digests: exact sha256, memoized on disk for large files across processes, and never
stale: rewriting the bytes (even with the old mtime restored) recomputes the digest."""

from __future__ import annotations

import hashlib
import os

import pytest

from coherence import digests


@pytest.fixture
def disk_memo(tmp_path, monkeypatch):
    """A fresh memo: on disk under tmp_path/memo for files of 10 bytes or more, none in memory."""
    monkeypatch.setenv(digests.ENV_VAR, str(tmp_path / "memo"))
    monkeypatch.setattr(digests, "DISK_MEMO_MIN_BYTES", 10)
    monkeypatch.setattr(digests, "_MEMO", {})
    return tmp_path / "memo"


def test_digest_is_the_sha256_of_the_bytes_and_is_remembered_on_disk(
    tmp_path, monkeypatch, disk_memo
):
    data = tmp_path / "big.hdf5"
    data.write_bytes(b"x" * 1000)
    expected = hashlib.sha256(b"x" * 1000).hexdigest()
    assert digests.file_digest(data) == expected
    assert len(list((tmp_path / "memo").glob("*/*"))) == 1
    assert oct((tmp_path / "memo").stat().st_mode & 0o777) == "0o700"

    # a new process: no in-memory memo, and reading the file would fail
    monkeypatch.setattr(digests, "_MEMO", {})

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(digests, "open", no_reading, raising=False)
    assert digests.file_digest(data) == expected
    monkeypatch.undo()


def test_rewritten_bytes_are_hashed_again_even_with_the_old_mtime(tmp_path, disk_memo):
    data = tmp_path / "big.hdf5"
    data.write_bytes(b"a" * 100)
    before = data.stat()
    first = digests.file_digest(data)
    with open(data, "r+b") as handle:  # same size, same inode
        handle.write(b"b")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back
    assert digests.file_digest(data) == hashlib.sha256(b"b" + b"a" * 99).hexdigest() != first


def test_small_files_are_not_memoized_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(digests.ENV_VAR, str(tmp_path / "memo"))
    monkeypatch.setattr(digests, "_MEMO", {})
    small = tmp_path / "config.json"
    small.write_text("{}")
    assert digests.file_digest(small) == hashlib.sha256(b"{}").hexdigest()
    assert not (tmp_path / "memo").exists()
