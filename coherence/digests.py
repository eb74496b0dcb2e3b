"""Content digests of files (sha256), the identity behind every cache key.

Hashing is the price of content addressing: a PDEgym class imported at 128² is ≈ 69 GB, and
every fresh process (each dashboard job is one) would re-read it. So a digest is memoized in
the process and, for files of 64 MiB and more, on disk under the user's cache directory
(``$COHERENCE_DIGEST_CACHE``, else ``$XDG_CACHE_HOME/coherence/digests``, mode 0700), keyed
by the file's identity: resolved path, size, inode, device, mtime and ctime (nanoseconds).
ctime cannot be set by a user, so a rewrite of the bytes always changes the identity and the
digest is recomputed. A memo that cannot be read or written is simply not used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from coherence.io import atomic_write_bytes

ENV_VAR = "COHERENCE_DIGEST_CACHE"
DISK_MEMO_MIN_BYTES = 64 * 2**20
_MEMO: dict[tuple, str] = {}


def memo_directory() -> Path:
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "coherence" / "digests"


def _identity(path: Path) -> tuple:
    stat = path.stat()
    return (
        str(path.resolve()),
        stat.st_size,
        stat.st_ino,
        stat.st_dev,
        stat.st_mtime_ns,
        stat.st_ctime_ns,
    )


def _memo_file(identity: tuple) -> Path:
    name = hashlib.sha256(repr(identity).encode()).hexdigest()
    return memo_directory() / name[:2] / name


def _read_memo(identity: tuple) -> str | None:
    try:
        text = _memo_file(identity).read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _write_memo(identity: tuple, digest: str) -> None:
    target = _memo_file(identity)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(memo_directory(), 0o700)
        atomic_write_bytes(target, digest.encode())
    except OSError:
        pass  # a read-only home: the digest is recomputed next time


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, memoized on the file's identity (see above)."""
    path = Path(path)
    identity = _identity(path)
    if identity in _MEMO:
        return _MEMO[identity]
    large = identity[1] >= DISK_MEMO_MIN_BYTES
    digest = _read_memo(identity) if large else None
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
        if large:
            _write_memo(identity, digest)
    _MEMO[identity] = digest
    return digest
