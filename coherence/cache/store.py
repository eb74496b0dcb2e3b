"""The result store: diskcache under ``<workspace>/cache`` (mode 0700), never a pickle.

Values are bytes only (``safedisk``): a result, a finished unit or a task artifact is one npz
blob with its JSON metadata (``blobs``), the records jobs share are small JSON values
(``records``); anything not in that form is reported, deleted and treated as a miss.

Atomicity: diskcache writes a large value to a new file first and only then commits the row
that points at it (one SQLite transaction), so a process killed at any moment leaves a
complete entry or none. At worst it leaves an orphan value file, which no entry points to and
the size limit does not see: ``remove_orphans`` deletes those older than a grace period (a
live writer commits within it) whenever the store is opened and before each eviction pass.

Layout of the cache directory: ``store/`` (diskcache), ``locks/`` (per-key flock files),
``logs/`` (worker logs). Record keys inside the store: ``result:<key>``, ``progress:<key>``,
``request:<key>``, ``cancel:<key>``, ``computations:<key>``, ``timing:job_setup`` (records),
and ``unit:<unit key>`` for each
finished (checkpoint, batch) unit (``keys.unit_keys``): evicted like results, they let a
subset of a cached selection be assembled without computing and a killed job resume. Jobs of
another kind (``tasks``, e.g. the counterfactual check) keep their spec under ``task:<key>``
and their result under ``artifact:<key>`` (npz arrays + JSON, the same safe form).
"""

from __future__ import annotations

import io
import logging
import os
import re
import sqlite3
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

from coherence.analysis.results import AnalysisResult, UnitResult
from coherence.cache import layout, sqlview
from coherence.cache.blobs import (
    READ_ERRORS,
    decode_result,
    decode_unit,
    encode_artifact,
    encode_result,
    encode_unit,
    identify_blob,
    open_npz,
    read_entry_metadata,
    read_metadata,
    unpack_blob,
)
from coherence.cache.layout import validate_key
from coherence.cache.locks import KeyLock
from coherence.cache.records import JobRecords
from coherence.cache.safedisk import CacheCorruptionError, SafeDisk, UnsafeKey
from coherence.cache.states import ProgressRecord  # noqa: F401 (re-exported)
from coherence.errors import CoherenceError, RequestError

log = logging.getLogger(__name__)

SIZE_ENV = "COHERENCE_CACHE_SIZE_LIMIT"
DEFAULT_SIZE_LIMIT = 2_000_000_000  # 2 GB
CLEARING = "clearing"  # a marker file in the cache folder while ``clear`` runs
ORPHAN_GRACE_SECONDS = 600.0  # an unreferenced value file younger than this may be mid-write
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str | int) -> int:
    """Bytes from ``2000000``, ``500MB``, ``2GB`` or ``1.5GiB`` (decimal kB/MB/GB, binary
    KiB/MiB/GiB)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise RequestError(
                f"cache size limit {text!r}: expected a number of bytes, optionally with a "
                f"unit, e.g. 500MB or 2GB (set {SIZE_ENV})"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise RequestError(f"cache size limit {text!r}: must be positive, e.g. 2GB")
    return value


SMALLEST_SIZE_LIMIT = 10**6  # below it one demo result (0.35 MB) evicts the rest


def default_size_limit() -> int:
    """The limit from COHERENCE_CACHE_SIZE_LIMIT (default 2 GB). One under 1 MB is refused:
    ``500`` meant as 500 MB evicted every cached result but the newest (a walk-through)."""
    text = os.environ.get(SIZE_ENV)
    if text is None:
        return DEFAULT_SIZE_LIMIT
    value = parse_size(text)
    if value < SMALLEST_SIZE_LIMIT:
        raise RequestError(
            f"{SIZE_ENV}={text!r} is {value} bytes, too small for the cache to keep a result "
            "beside the newest; give a unit, e.g. 500MB or 2GB"
        )
    return value


def private_directory(path: str | os.PathLike) -> Path:
    """Create ``path`` with mode 0700, or tighten an existing one to 0700."""
    path = Path(path)
    if path.exists() and not path.is_dir():  # "File exists: …/cache" named no fix
        raise CoherenceError(
            f"{path} should be a folder of the result cache but is a file: move it away (the "
            "cache is made afresh there)"
        )
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o700:
        try:
            path.chmod(0o700)
        except OSError as error:
            raise CoherenceError(
                f"cache directory {path}: mode {mode:o} lets other users write cache entries "
                f"and it cannot be restricted to 700 ({error.strerror}); use a workspace you "
                "own (COHERENCE_WORKSPACE)"
            ) from None
    return path


class DamagedCacheError(CoherenceError):
    """The cache's sqlite database (``database``) cannot be read; ``discard_damaged``
    removes it."""

    def __init__(self, message: str, database: Path) -> None:
        super().__init__(message)
        self.database = database


def discard_damaged(directory: str | os.PathLike) -> int:
    """Remove the results store of a cache whose database is damaged (the locks of running
    jobs and the logs stay); returns the files removed. Only ``cache clear`` calls this."""
    import shutil

    store_dir = Path(directory) / "store"

    def count() -> int:
        return sum(1 for p in store_dir.rglob("*") if p.is_file()) if store_dir.is_dir() else 0

    before = count()
    shutil.rmtree(store_dir, ignore_errors=True)
    left = count()
    if left:  # a read-only or foreign store: say so, not "removed"
        raise CoherenceError(
            f"{store_dir}: could not remove {left} of its {before} files (read-only, or not "
            "yours); remove the folder with the rights to, or use another workspace"
        )
    return before


class ResultStore(JobRecords):
    """Analysis results by request key, plus the small records background jobs share
    (``JobRecords``)."""

    def __init__(self, directory: str | os.PathLike, size_limit: int | str | None = None) -> None:
        self.directory = private_directory(directory)
        self.newer: set[str] = set()
        self.size_limit = default_size_limit() if size_limit is None else parse_size(size_limit)
        store_dir = private_directory(self.directory / "store")
        self.locks_dir = private_directory(self.directory / "locks")
        self.logs_dir = private_directory(self.directory / "logs")
        # cull_limit=0: diskcache's own culling deletes 10 rows at a time, job records and the
        # entry just written included; ``_evict`` below removes results only, oldest use first.
        try:
            self._cache = diskcache.Cache(
                str(store_dir),
                disk=SafeDisk,
                size_limit=self.size_limit,
                eviction_policy="least-recently-used",
                cull_limit=0,
                statistics=0,
                tag_index=0,
                disk_min_file_size=2**15,
            )
            self.remove_orphans()
        except sqlite3.OperationalError as error:  # locked, read-only, not ours: not damaged
            if "full" in str(error):  # "database or disk is full": not a lock to wait for
                raise CoherenceError(
                    f"{store_dir / 'cache.db'}: the disk is full ({error}); free space there "
                    "or use a workspace on another disk (--workspace, COHERENCE_WORKSPACE)"
                ) from None
            raise CoherenceError(
                f"{store_dir / 'cache.db'}: the cache's database cannot be used now ({error}): "
                "another process may hold it locked, or the workspace is read-only or not "
                "yours; wait for that process and rerun, or use a workspace you can write "
                "(COHERENCE_WORKSPACE). The cache is not damaged: do not clear it"
            ) from None
        except sqlite3.DatabaseError as error:  # a disk fault, or a file written over
            raise DamagedCacheError(
                f"{store_dir / 'cache.db'}: the cache's database is damaged ({error}); "
                f"`coherence cache clear --workspace {self.directory.parent} --yes` starts it "
                "afresh (results are recomputed on demand; checkpoints and data are not "
                "touched)",
                database=store_dir / "cache.db",
            ) from None

    # ------------------------------------------------------------------ results ------

    def get(self, key: str) -> AnalysisResult | None:
        """The cached result, or None (missing, or unsafe/corrupt: reported and deleted)."""
        name = f"result:{validate_key(key)}"
        try:
            blob = self._cache.get(name, retry=True)
            if blob is None:
                return None
            return decode_result(key, blob)
        except CacheCorruptionError as error:
            self._refuse(name, error)
            return None

    def put(self, key: str, result: AnalysisResult) -> None:
        """Store in one transaction, then evict least-recently-used results over the limit."""
        name = f"result:{validate_key(key)}"
        self._cache.set(name, encode_result(key, result, time.time()), retry=True)
        self._evict(keep=name)

    def put_unit(self, key: str, unit: UnitResult) -> None:
        """Store one finished (checkpoint, batch) unit under its unit key."""
        name = f"unit:{validate_key(key)}"
        self._cache.set(name, encode_unit(key, unit, time.time()), retry=True)
        self._evict(keep=name)

    def get_unit(self, key: str) -> UnitResult | None:
        """A cached unit, or None (missing, or not in the safe form: reported and deleted)."""
        name = f"unit:{validate_key(key)}"
        try:
            blob = self._cache.get(name, retry=True)
            return None if blob is None else decode_unit(key, blob)
        except CacheCorruptionError as error:
            self._refuse(name, error)
            return None

    def delete_unit(self, key: str) -> bool:
        return bool(self._cache.delete(f"unit:{validate_key(key)}", retry=True))

    def has_unit(self, key: str) -> bool:
        return f"unit:{validate_key(key)}" in self._cache

    def contains(self, key: str) -> bool:
        """Whether an entry exists (not validated: ``get`` may still refuse it)."""
        return f"result:{validate_key(key)}" in self._cache

    def _metadata(
        self, key: str, kind: str = "result", reader: Callable = read_metadata
    ) -> dict[str, Any] | None:
        """An entry's JSON metadata (a result's, or a task ``artifact``'s with
        ``read_entry_metadata``), read without loading its arrays; None if missing (or
        deleted meanwhile). An entry not in the safe form is refused (deleted) and None."""
        name = f"{kind}:{validate_key(key)}"
        try:
            handle = self._cache.get(name, read=True, retry=True)
            if handle is None:
                return None
            source = io.BytesIO(handle) if isinstance(handle, bytes) else handle
            try:
                with open_npz(source) as archive:
                    return reader(archive, key)
            finally:
                source.close()
        except CacheCorruptionError as error:
            self._refuse(name, error)
        except OSError:
            pass  # deleted between the lookup and the read
        except READ_ERRORS as error:
            self._refuse(name, CacheCorruptionError(f"{type(error).__name__}: {error}"))
        return None

    def age(self, key: str) -> float | None:
        """Seconds since the result was stored (reads only its metadata), or None."""
        metadata = self._metadata(key)
        if metadata is None:
            return None
        return max(time.time() - float(metadata["cache"]["created"]), 0.0)

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(f"result:{validate_key(key)}", retry=True))

    def peek_request(self, key: str) -> dict[str, Any] | None:
        """The request (as a dict) a cached result was computed for, read from its JSON
        metadata only (no arrays), for a listing (``coherence cache info``, the dashboard's):
        the read is not a use, so the least-recently-used order eviction follows stays as it
        was (a listing read every entry and made the oldest the newest); None if missing or
        not in the safe form."""
        metadata = self.peek_metadata(key)
        return None if metadata is None else dict(metadata["request"])

    def peek_metadata(self, key: str) -> dict[str, Any] | None:
        """A result's JSON metadata (request, provenance, …) for a listing, read as
        ``peek_request`` reads: not a use."""
        name = f"result:{validate_key(key)}"
        used = sqlview.access_time(self._cache, name)
        metadata = self._metadata(key)
        if used is not None and metadata is not None:
            sqlview.set_access_time(self._cache, name, used)
        return metadata

    # ---------------------------------------------------------------- artifacts ------
    # The result of a job of another kind than an analysis (``coherence.cache.tasks``): named
    # arrays plus a JSON object, in the same safe form as a result (one npz blob, no pickle).

    def put_artifact(self, key: str, arrays: dict[str, np.ndarray], metadata: dict) -> None:
        name = f"artifact:{validate_key(key)}"
        self._cache.set(name, encode_artifact(key, arrays, metadata, time.time()), retry=True)
        self._evict(keep=name)

    def get_artifact(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(arrays, metadata) of a stored artifact, or None (missing or refused)."""
        name = f"artifact:{validate_key(key)}"
        blob = self._safe_get(name)
        if blob is None:
            return None
        try:
            arrays, metadata = unpack_blob(key, blob)
        except CacheCorruptionError as error:
            self._refuse(name, error)
            return None
        return arrays, metadata

    def artifact_age(self, key: str) -> float | None:
        """Seconds since the task artifact was stored (reads only its metadata, as ``age``
        does: a job's status asked it on every page run, and unpacked every array), or
        None."""
        metadata = self._metadata(key, "artifact", read_entry_metadata)
        if metadata is None:
            return None
        return max(time.time() - float(metadata["cache"]["created"]), 0.0)

    def _evict(self, keep: str) -> int:
        """Delete results, least recently used first (never ``keep``), until the volume
        (SQLite pages + value files) is within the limit. Returns how many were removed."""
        self.remove_orphans()
        removed = 0
        while self._cache.volume() > self.size_limit:
            # diskcache keeps access_time per row (updated on every get under this policy)
            oldest = sqlview.least_recently_used(self._cache, keep)
            if oldest is None:
                log.warning(
                    "the cache holds %s bytes, over its limit of %s, with only the newest "
                    "result left; raise %s to keep more",
                    self._cache.volume(),
                    self.size_limit,
                    SIZE_ENV,
                )
                break
            self._cache.delete(oldest, retry=True)
            removed += 1
        return removed

    # ------------------------------------------------------------------ upkeep ------

    def log_path(self, key: str) -> Path:
        return layout.log_path(self.directory, key)

    def lock_path(self, key: str) -> Path:
        return layout.lock_path(self.directory, key)

    def entries(self) -> list[dict[str, Any]]:
        """Every result: key, bytes on disk, stored and last-used unix times (newest first)."""
        return sqlview.result_rows(self._cache)

    def info(self) -> dict[str, Any]:
        """Results, finished units, task artifacts (rollouts, checks) and the small job
        records held, bytes on disk against the limit, and how many entries have pickled
        keys (planted; never read, removed by ``clear``)."""
        counts = {"entries": 0, "units": 0, "artifacts": 0, "records": 0, "unsafe": 0}
        kinds = {"result:": "entries", "unit:": "units", "artifact:": "artifacts"}
        for name in self._cache.iterkeys():
            if isinstance(name, UnsafeKey) or not isinstance(name, str):
                counts["unsafe"] += 1
            else:  # units and artifacts were counted as job records: most of the bytes
                kind = next((k for prefix, k in kinds.items() if name.startswith(prefix)), None)
                counts[kind or "records"] += 1
        return {
            "directory": str(self.directory),
            **counts,
            "bytes": int(self._cache.volume()),
            "limit": self.size_limit,
        }

    def clear(self) -> int:
        """Delete every entry and record, orphan files and old logs; returns rows removed.
        A marker stands while it runs: diskcache deletes rows before their files, and the
        files of a clear cut short (Ctrl-C) would be taken back as whole entries."""
        marker = self.directory / CLEARING
        marker.touch()
        removed = int(self._cache.clear(retry=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._cache.check(fix=True, retry=True)  # orphan value files of killed writers
        for path in self.logs_dir.glob("*.log"):
            path.unlink(missing_ok=True)
        self._remove_idle_locks()
        marker.unlink(missing_ok=True)
        return removed

    def _remove_idle_locks(self) -> None:
        """Delete the per-key lock files no job holds: one stayed behind for every key ever
        computed. Each is deleted while this holds it, so a process that opened it a moment
        before takes the path's new file instead (``KeyLock.acquire``); a running job's
        stays."""
        for path in self.locks_dir.glob("*.lock"):
            lock = KeyLock(path)
            try:
                taken = lock.acquire()
            except OSError:  # another user's file on a shared cache: not ours to delete
                continue
            if taken:
                lock.release(remove=True)

    def remove_orphans(self, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> int:
        """Value files that no entry points to and that are older than ``grace_seconds``: a
        whole entry's is indexed again under the key it names (the database was lost or
        emptied), any other (a writer killed mid-write, the files of a clear cut short) is
        deleted; returns how many were deleted. Younger ones may belong to a write in
        progress."""
        store_dir = Path(self._cache.directory)
        try:
            referenced = sqlview.referenced_files(self._cache)
        except sqlite3.OperationalError as exc:  # busy beyond diskcache's timeout: upkeep
            log.info("skipped the orphan file sweep of %s this time: %s", store_dir, exc)
            return 0  # only housekeeping: the next open or eviction sweeps again
        cutoff = time.time() - grace_seconds
        removed = adopted = 0
        marker = self.directory / CLEARING
        clearing = marker.exists()  # a clear cut short: its files go, never taken back
        for path in list(store_dir.glob("*/*/*.val")):  # adopting writes new files
            if path.relative_to(store_dir).as_posix() in referenced:
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                if not clearing and self._adopt(path.read_bytes()):
                    adopted += 1
                else:
                    removed += 1
                    log.info("removed orphan cache file %s (a writer was killed mid-write)", path)
                path.unlink()
            except FileNotFoundError:
                continue  # deleted by another process
            except sqlite3.OperationalError as exc:  # busy or full: upkeep, tried next time
                log.info("left orphan cache file %s for the next sweep: %s", path, exc)
        try:
            if clearing and marker.stat().st_mtime <= cutoff:  # not a clear still running
                marker.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # that clear finished meanwhile
        if adopted:
            log.warning(
                "the cache's database did not name %d whole entries in %s (it was missing, "
                "emptied or replaced): they were taken back from their files",
                adopted,
                store_dir,
            )
        return removed

    def _adopt(self, blob: bytes) -> bool:
        """Index a whole entry's value file again under the key it names (``identify_blob``);
        False for a file that is no whole entry. Why: a database lost or emptied made every
        result file an orphan, and the sweep deleted hours of results silently."""
        found = identify_blob(blob)
        if found is None:
            return False
        kind, key, created = found
        name = f"{kind}:{key}"
        if name not in self._cache:  # else a newer write of the same key is indexed
            self._cache.set(name, blob, retry=True)
            # its first storing as its last use: least-recently-used order, and cache info's
            # "stored … ago", read the entry's own time, not the moment it was taken back
            sqlview.set_stored_time(self._cache, name, created)
        return True

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
