"""The result store: diskcache under ``<workspace>/cache`` (mode 0700), never a pickle.

diskcache pickles every value that is not bytes/str/int/float and unpickles on read, so anyone
who can write the cache directory could run code in the app (CVE-2025-69872). Here a
``SafeDisk`` stores only ``bytes`` values under ``str`` keys and refuses, on read, any entry
that is not raw bytes; ``pickle.load`` is never reached. A result is one bytes blob: an
uncompressed npz of its arrays plus ``__metadata__`` (UTF-8 JSON: request, diagnostics,
provenance, cache key and creation time), loaded with ``allow_pickle=False`` and checked
against the expected schema; anything else is reported, deleted and treated as a miss.

Atomicity: diskcache writes a large value to a new file first and only then commits the row
that points at it (one SQLite transaction), so a process killed at any moment leaves a
complete entry or none. At worst it leaves an orphan value file, which no entry points to and
the size limit does not see: ``remove_orphans`` deletes those older than a grace period (a
live writer commits within it) whenever the store is opened and before each eviction pass.

Layout of the cache directory: ``store/`` (diskcache), ``locks/`` (per-key flock files),
``logs/`` (worker logs). Record keys inside the store: ``result:<key>``, ``progress:<key>``,
``request:<key>``, ``cancel:<key>``, ``computations:<key>``, and ``unit:<unit key>`` for each
finished (checkpoint, batch) unit (``keys.unit_keys``): evicted like results, they let a
subset of a cached selection be assembled without computing and a killed job resume. Jobs of
another kind (``tasks``, e.g. the counterfactual check) keep their spec under ``task:<key>``
and their result under ``artifact:<key>`` (npz arrays + JSON, the same safe form).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import torch
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW

from coherence.analysis.pipeline import AnalysisResult
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.results import (
    RESULT_SCHEMA,
    UnitResult,
    result_arrays,
    result_from_parts,
)
from coherence.cache import layout, sqlview
from coherence.cache.layout import validate_key
from coherence.errors import CoherenceError, RequestError

log = logging.getLogger(__name__)

SIZE_ENV = "COHERENCE_CACHE_SIZE_LIMIT"
DEFAULT_SIZE_LIMIT = 2_000_000_000  # 2 GB
ORPHAN_GRACE_SECONDS = 600.0  # an unreferenced value file younger than this may be mid-write
METADATA_ARRAY = "__metadata__"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


class CacheCorruptionError(CoherenceError):
    """A cache entry is not in the safe form (raw npz/JSON bytes); it is never loaded."""


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


@dataclass(frozen=True)
class ProgressRecord:
    """What a job reports while it runs, and how it ended (JSON in the store)."""

    state: str  # running | done | failed | cancelled
    fraction: float = 0.0
    stage: str = ""
    started: float = 0.0  # unix time
    updated: float = 0.0  # unix time
    eta_seconds: float | None = None
    error: str | None = None
    pid: int | None = None
    log: str | None = None  # worker log path
    units_done: int | None = None  # (checkpoint, batch) units finished, cached ones included
    units_total: int | None = None
    units_cached: int | None = None  # found in the cache when the job started

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProgressRecord:
        fields = json.loads(data.decode())
        if not isinstance(fields, dict) or fields.get("state") not in JOB_RECORD_STATES:
            raise ValueError("not a progress record")
        record = cls(**fields)
        optional = {
            "eta_seconds": float,
            "error": str,
            "pid": int,
            "log": str,
            "units_done": int,
            "units_total": int,
            "units_cached": int,
        }
        return replace(
            record,
            fraction=float(record.fraction),
            stage=str(record.stage),
            started=float(record.started),
            updated=float(record.updated),
            **{
                k: None if getattr(record, k) is None else t(getattr(record, k))
                for k, t in optional.items()
            },
        )


JOB_RECORD_STATES = ("running", "done", "failed", "cancelled")


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


def default_size_limit() -> int:
    return parse_size(os.environ.get(SIZE_ENV, DEFAULT_SIZE_LIMIT))


def private_directory(path: str | os.PathLike) -> Path:
    """Create ``path`` with mode 0700, or tighten an existing one to 0700."""
    path = Path(path)
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


def encode_result(key: str, result: AnalysisResult, created: float) -> bytes:
    """One npz blob (uncompressed: float64 influence values barely compress and loading
    stays a memcpy). ``H``/``H_std`` are dropped: they repeat ``H__<first response>``."""
    arrays = result_arrays(result)
    arrays.pop("H")
    arrays.pop("H_std")
    metadata = {
        "schema": RESULT_SCHEMA,
        "request": result.request.to_dict(),
        "diagnostics": result.diagnostics,
        "provenance": result.provenance,
        "cache": {"key": key, "created": created},
    }
    text = json.dumps(metadata, allow_nan=True)
    arrays[METADATA_ARRAY] = np.frombuffer(text.encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _read_metadata(archive: Any, key: str) -> dict[str, Any]:
    if METADATA_ARRAY not in archive.files:
        raise CacheCorruptionError(f"npz has no {METADATA_ARRAY}")
    raw = archive[METADATA_ARRAY]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CacheCorruptionError(f"{METADATA_ARRAY} is {raw.dtype}{list(raw.shape)}")
    metadata = json.loads(raw.tobytes().decode())
    cache = metadata.get("cache") if isinstance(metadata, dict) else None
    if not isinstance(cache, dict) or cache.get("key") != key:
        raise CacheCorruptionError("metadata does not name this key")
    if not isinstance(cache.get("created"), float | int):
        raise CacheCorruptionError("metadata has no creation time")
    expected = {"schema": int, "request": dict, "diagnostics": list, "provenance": dict}
    for name, kind in expected.items():
        if not isinstance(metadata.get(name), kind):
            raise CacheCorruptionError(f"metadata field {name!r} should be a {kind.__name__}")
    if metadata["schema"] != RESULT_SCHEMA:
        raise CacheCorruptionError(f"result schema {metadata['schema']} is not {RESULT_SCHEMA}")
    return metadata


def decode_result(key: str, blob: bytes) -> AnalysisResult:
    """Parse a blob written by ``encode_result`` (no pickle); CacheCorruptionError if not."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            metadata = _read_metadata(archive, key)
            arrays = {name: archive[name] for name in archive.files if name != METADATA_ARRAY}
        fields = metadata["request"]
        if fields.get("device") == "cuda" and not torch.cuda.is_available():
            # computed on a GPU elsewhere; the device is not part of the key
            metadata["request"] = {**fields, "device": "auto"}
        result = result_from_parts(arrays, metadata)
        return replace(result, provenance={**result.provenance, "cache_key": key})
    except CacheCorruptionError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError) as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None


def encode_unit(key: str, unit: UnitResult, created: float) -> bytes:
    """A unit as one npz blob with its JSON metadata (same safe form as a result)."""
    arrays, metadata = unit.to_parts()
    metadata = {**metadata, "cache": {"key": key, "created": created}}
    arrays[METADATA_ARRAY] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_blob(key: str, blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) of a unit or artifact blob (npz + JSON, no pickle); the metadata
    must name ``key`` and its creation time. CacheCorruptionError otherwise."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            if METADATA_ARRAY not in archive.files:
                raise CacheCorruptionError(f"npz has no {METADATA_ARRAY}")
            metadata = json.loads(archive[METADATA_ARRAY].tobytes().decode())
            arrays = {name: archive[name] for name in archive.files if name != METADATA_ARRAY}
    except CacheCorruptionError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, EOFError) as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None
    cache = metadata.get("cache") if isinstance(metadata, dict) else None
    if not isinstance(cache, dict) or cache.get("key") != key:
        raise CacheCorruptionError("metadata does not name this key")
    if not isinstance(cache.get("created"), float | int):
        raise CacheCorruptionError("metadata has no creation time")
    return arrays, metadata


def decode_unit(key: str, blob: bytes) -> UnitResult:
    """Parse a blob written by ``encode_unit`` (no pickle); CacheCorruptionError if not."""
    arrays, metadata = unpack_blob(key, blob)
    try:
        return UnitResult.from_parts(arrays, metadata)
    except CacheCorruptionError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CacheCorruptionError(f"{type(error).__name__}: {error}") from None


class ResultStore:
    """Analysis results by request key, plus the small records background jobs share."""

    def __init__(self, directory: str | os.PathLike, size_limit: int | str | None = None) -> None:
        self.directory = private_directory(directory)
        self.size_limit = default_size_limit() if size_limit is None else parse_size(size_limit)
        store_dir = private_directory(self.directory / "store")
        self.locks_dir = private_directory(self.directory / "locks")
        self.logs_dir = private_directory(self.directory / "logs")
        # cull_limit=0: diskcache's own culling deletes 10 rows at a time, job records and the
        # entry just written included; ``_evict`` below removes results only, oldest use first.
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

    def _metadata(self, key: str) -> dict[str, Any] | None:
        """A result's JSON metadata, read without loading its arrays; None if missing (or
        deleted meanwhile). An entry not in the safe form is refused (deleted) and None."""
        name = f"result:{validate_key(key)}"
        try:
            handle = self._cache.get(name, read=True, retry=True)
            if handle is None:
                return None
            source = io.BytesIO(handle) if isinstance(handle, bytes) else handle
            try:
                with np.load(source, allow_pickle=False) as archive:
                    return _read_metadata(archive, key)
            finally:
                source.close()
        except CacheCorruptionError as error:
            self._refuse(name, error)
        except (ValueError, KeyError, TypeError, EOFError) as error:
            self._refuse(name, CacheCorruptionError(f"{type(error).__name__}: {error}"))
        except OSError:
            pass  # deleted between the lookup and the read
        return None

    def age(self, key: str) -> float | None:
        """Seconds since the result was stored (reads only its metadata), or None."""
        metadata = self._metadata(key)
        if metadata is None:
            return None
        return max(time.time() - float(metadata["cache"]["created"]), 0.0)

    def delete(self, key: str) -> bool:
        return bool(self._cache.delete(f"result:{validate_key(key)}", retry=True))

    def result_request(self, key: str) -> dict[str, Any] | None:
        """The request (as a dict) a cached result was computed for, read from its JSON
        metadata only (no arrays); None if missing or not in the safe form."""
        metadata = self._metadata(key)
        return None if metadata is None else dict(metadata["request"])

    # ---------------------------------------------------------------- artifacts ------
    # The result of a job of another kind than an analysis (``coherence.cache.tasks``): named
    # arrays plus a JSON object, in the same safe form as a result (one npz blob, no pickle).

    def put_artifact(self, key: str, arrays: dict[str, np.ndarray], metadata: dict) -> None:
        name = f"artifact:{validate_key(key)}"
        text = json.dumps({**metadata, "cache": {"key": key, "created": time.time()}})
        payload = {k: np.asarray(v) for k, v in arrays.items()}
        if METADATA_ARRAY in payload or any(v.dtype.hasobject for v in payload.values()):
            raise TypeError("artifact arrays must be plain numeric arrays")
        payload[METADATA_ARRAY] = np.frombuffer(text.encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **payload)
        self._cache.set(name, buffer.getvalue(), retry=True)
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
        found = self.get_artifact(key)
        if found is None:
            return None
        return max(time.time() - float(found[1]["cache"]["created"]), 0.0)

    def put_task(self, key: str, kind: str, spec: dict[str, Any]) -> None:
        """The spec of a job of another kind (JSON), read back by its worker."""
        record = json.dumps({"kind": kind, "spec": spec}).encode()
        self._cache.set(f"task:{validate_key(key)}", record, retry=True)

    def get_task(self, key: str) -> tuple[str, dict[str, Any]] | None:
        name = f"task:{validate_key(key)}"
        data = self._safe_get(name)
        if data is None:
            return None
        try:
            record = json.loads(data.decode())
            if not isinstance(record.get("spec"), dict) or not isinstance(record.get("kind"), str):
                raise TypeError("not a task record")
            return record["kind"], record["spec"]
        except (ValueError, TypeError, AttributeError) as error:
            self._refuse(name, CacheCorruptionError(f"bad task record: {error}"))
            return None

    def _refuse(self, name: str, error: CacheCorruptionError) -> None:
        log.warning(
            "cache entry %s refused: not in the safe form (raw npz bytes + JSON metadata): %s; "
            "it was not loaded and has been deleted, the analysis will be recomputed "
            "(see CVE-2025-69872 for why pickled entries are never read)",
            name,
            error,
        )
        self._cache.delete(name, retry=True)

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

    # -------------------------------------------------------------- job records ------

    def set_progress(self, key: str, record: ProgressRecord) -> None:
        self._cache.set(f"progress:{validate_key(key)}", record.to_json(), retry=True)

    def get_progress(self, key: str) -> ProgressRecord | None:
        name = f"progress:{validate_key(key)}"
        data = self._safe_get(name)
        if data is None:
            return None
        try:
            return ProgressRecord.from_json(data)
        except (ValueError, TypeError) as error:
            self._refuse(name, CacheCorruptionError(f"bad progress record: {error}"))
            return None

    def put_request(self, key: str, request: AnalysisRequest) -> None:
        self._cache.set(
            f"request:{validate_key(key)}", json.dumps(request.to_dict()).encode(), retry=True
        )

    def get_request(self, key: str) -> AnalysisRequest | None:
        """The stored request (validated by AnalysisRequest), or None."""
        name = f"request:{validate_key(key)}"
        data = self._safe_get(name)
        if data is None:
            return None
        try:
            fields = json.loads(data.decode())
            if not isinstance(fields, dict):
                raise TypeError("not a JSON object")
            return AnalysisRequest.from_dict(fields)
        except (ValueError, TypeError) as error:  # RequestError is a ValueError
            self._refuse(name, CacheCorruptionError(f"bad request record: {error}"))
            return None

    def request_cancel(self, key: str) -> None:
        self._cache.set(f"cancel:{validate_key(key)}", b"1", retry=True)

    def cancel_requested(self, key: str) -> bool:
        return f"cancel:{validate_key(key)}" in self._cache  # a SELECT, no write transaction

    def clear_cancel(self, key: str) -> None:
        self._cache.delete(f"cancel:{validate_key(key)}", retry=True)

    def record_computation(self, key: str) -> int:
        """Count one more computation of ``key`` (atomic); returns the new count."""
        name = f"computations:{validate_key(key)}"
        with self._cache.transact(retry=True):
            count = self.computations(key) + 1
            self._cache.set(name, str(count).encode(), retry=True)
        return count

    def computations(self, key: str) -> int:
        """How many times ``key`` was computed since the store was last cleared."""
        data = self._safe_get(f"computations:{validate_key(key)}")
        try:
            return int(data.decode()) if data is not None else 0
        except ValueError:
            return 0

    def _safe_get(self, name: str) -> bytes | None:
        try:
            return self._cache.get(name, retry=True)
        except CacheCorruptionError as error:
            self._refuse(name, error)
            return None

    # ------------------------------------------------------------------ upkeep ------

    def log_path(self, key: str) -> Path:
        return layout.log_path(self.directory, key)

    def lock_path(self, key: str) -> Path:
        return layout.lock_path(self.directory, key)

    def entries(self) -> list[dict[str, Any]]:
        """Every result: key, bytes on disk, stored and last-used unix times (newest first)."""
        return sqlview.result_rows(self._cache)

    def info(self) -> dict[str, Any]:
        """Results and other records held, bytes on disk against the limit, and how many
        entries have pickled keys (planted; never read, removed by ``clear``)."""
        counts = {"entries": 0, "records": 0, "unsafe": 0}
        for name in self._cache.iterkeys():
            if isinstance(name, UnsafeKey) or not isinstance(name, str):
                counts["unsafe"] += 1
            elif name.startswith("result:"):
                counts["entries"] += 1
            else:
                counts["records"] += 1
        return {
            "directory": str(self.directory),
            **counts,
            "bytes": int(self._cache.volume()),
            "limit": self.size_limit,
        }

    def clear(self) -> int:
        """Delete every entry and record, orphan files and old logs; returns rows removed."""
        removed = int(self._cache.clear(retry=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._cache.check(fix=True, retry=True)  # orphan value files of killed writers
        for path in self.logs_dir.glob("*.log"):
            path.unlink(missing_ok=True)
        return removed

    def remove_orphans(self, grace_seconds: float = ORPHAN_GRACE_SECONDS) -> int:
        """Delete value files that no entry points to and that are older than
        ``grace_seconds`` (left by a writer killed between writing the file and committing
        its row); returns how many. Younger ones may belong to a write in progress."""
        store_dir = Path(self._cache.directory)
        referenced = sqlview.referenced_files(self._cache)
        cutoff = time.time() - grace_seconds
        removed = 0
        for path in store_dir.glob("*/*/*.val"):
            if path.relative_to(store_dir).as_posix() in referenced:
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # deleted by another process
            removed += 1
            log.info("removed orphan cache file %s (a writer was killed mid-write)", path)
        return removed

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
