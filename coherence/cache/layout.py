"""Names inside a workspace's cache directory, importable without torch.

A queued job worker waits for a compute slot before it imports the analysis stack (so a queue
of jobs costs a few MB each); it needs its key checked and its lock file named first, hence
this stdlib-only module. Layout: ``store/`` (diskcache), ``locks/<key>.lock`` (per-key
flock), ``logs/<key>.log`` (worker logs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from coherence.errors import RequestError

KEY_PATTERN = re.compile(r"[0-9a-f]{64}")


def validate_key(key: str) -> str:
    """A key names files (locks, logs) and comes from URLs: accept only 64 hex digits."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise RequestError(
            f"cache key {key!r}: expected 64 lowercase hexadecimal characters (the sha256 of "
            "an analysis request); copy it from `coherence cache info` or the dashboard"
        )
    return key


def lock_path(cache_directory: str | os.PathLike, key: str) -> Path:
    return Path(cache_directory) / "locks" / f"{validate_key(key)}.lock"


def log_path(cache_directory: str | os.PathLike, key: str) -> Path:
    return Path(cache_directory) / "logs" / f"{validate_key(key)}.log"
