"""diskcache serialization without pickle: ``str`` keys and ``bytes`` values only.

diskcache pickles every value that is not bytes/str/int/float and unpickles on read, so anyone
who can write the cache directory could run code in the app (CVE-2025-69872). ``SafeDisk``
stores only ``bytes`` values under ``str`` keys and refuses, on read, any entry that is not
raw bytes; ``pickle.load`` is never reached. A pickled key found while listing the store is
handed back as ``UnsafeKey`` bytes, never unpickled.
"""

from __future__ import annotations

from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW

from coherence.errors import CoherenceError


class CacheCorruptionError(CoherenceError):
    """A cache entry is not in the safe form (raw npz/JSON bytes); it is never loaded."""


class NewerEntryError(CacheCorruptionError):
    """A cache entry written by a newer coherence (a later result schema): not read, and
    kept, since it is not damaged (a container and a local install may share a workspace)."""


class UnsafeKey(bytes):
    """A pickled key found while listing the store: kept as bytes, never unpickled."""


class SafeDisk(diskcache.Disk):
    """diskcache serialization restricted to str keys and bytes values, no pickle at all."""

    def __init__(self, directory: str, min_file_size: int = 2**15, **_settings: Any) -> None:
        # Extra ``disk_*`` settings read from the database (e.g. a pickle protocol) are ignored.
        super().__init__(directory, min_file_size=int(min_file_size), pickle_protocol=0)

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if raw:
            return bytes(key) if isinstance(key, bytes | memoryview) else key
        return UnsafeKey(key)  # a pickled key: listed as bytes, never unpickled

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if read or type(value) is not bytes:
            raise TypeError(f"cache values must be bytes, got {type(value).__name__}")
        return super().store(value, False, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_RAW and isinstance(value, bytes | memoryview):
            return bytes(value)
        if mode == MODE_BINARY and filename is not None:
            return super().fetch(mode, filename, value, read)
        kind = "a Python pickle" if mode == MODE_PICKLE else f"mode {mode}, {type(value).__name__}"
        raise CacheCorruptionError(f"entry stored as {kind}, not raw bytes")
