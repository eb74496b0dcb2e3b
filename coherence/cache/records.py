"""The small JSON records background jobs share through the store, beside the results.

Keys: ``progress:<key>`` (a ``ProgressRecord``), ``request:<key>`` (the analysis a worker
computes), ``task:<key>`` (the spec of a job of another kind), ``cancel:<key>`` (a flag),
``computations:<key>`` (a counter), and one workspace-wide ``timing:job_setup`` (the seconds
a job spends outside its units: worker start, imports, loading, tracing). ``JobRecords`` is
the base of ``ResultStore``: it reads and writes these in the same diskcache, and refuses
(logs and deletes) any record that is not in its safe form, as the store refuses results.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import diskcache

from coherence.analysis.request import AnalysisRequest
from coherence.cache.layout import validate_key
from coherence.cache.safedisk import CacheCorruptionError, NewerEntryError
from coherence.cache.states import ProgressRecord

SETUP_RECORD = "timing:job_setup"
MAX_SETUP = 3600.0  # seconds; a larger figure is a broken record, not a start
log = logging.getLogger("coherence.cache.store")  # one log for everything the store refuses


class JobRecords:
    """Job records by key in ``self._cache`` (set by the subclass)."""

    _cache: diskcache.Cache
    newer: set[str]  # entries of a newer coherence met so far: kept, not read

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

    def record_job_setup(self, seconds: float) -> float:
        """Fold one job's measured setup seconds into the workspace's figure (the mean of
        this and the last figure, so one slow start does not stick); returns the new figure."""
        previous = self.job_setup()
        if not (math.isfinite(seconds) and seconds >= 0):
            return previous or 0.0
        figure = min(seconds if previous is None else (previous + seconds) / 2, MAX_SETUP)
        self._cache.set(SETUP_RECORD, json.dumps({"seconds": figure}).encode(), retry=True)
        return figure

    def job_setup(self) -> float | None:
        """Seconds a job here spends outside its units, as last measured; None before any
        job with two computed units finished."""
        data = self._safe_get(SETUP_RECORD)
        if data is None:
            return None
        try:
            seconds = float(json.loads(data.decode())["seconds"])
            if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SETUP):
                raise ValueError(f"seconds {seconds} out of range")
            return seconds
        except (ValueError, TypeError, KeyError) as error:
            self._refuse(SETUP_RECORD, CacheCorruptionError(f"bad setup record: {error}"))
            return None

    def _safe_get(self, name: str) -> bytes | None:
        try:
            return self._cache.get(name, retry=True)
        except CacheCorruptionError as error:
            self._refuse(name, error)
            return None

    def _refuse(self, name: str, error: CacheCorruptionError) -> None:
        if isinstance(error, NewerEntryError):  # not damaged: left for the newer install
            self.newer.add(name)  # cache info lists it as such
            log.info("cache entry %s not read: %s; it is kept", name, error)
            return
        # the CVE only where a pickle was met: a truncated file read as a security matter
        why = (
            " (see CVE-2025-69872 for why pickled entries are never read)"
            if "pickle" in str(error)
            else ""
        )
        log.warning(
            "cache entry %s refused: damaged or not in the safe form (raw npz bytes + JSON "
            "metadata): %s; it was not loaded and has been deleted, the analysis will be "
            "recomputed%s",
            name,
            error,
            why,
        )
        self._cache.delete(name, retry=True)
