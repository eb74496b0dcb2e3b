"""Content-addressed result store and background jobs (stage 4: cache)."""

from __future__ import annotations

from coherence.cache.jobs import JobCancelled, JobRunner, JobStatus
from coherence.cache.keys import ANALYSIS_CODE_VERSION, request_key, validate_key
from coherence.cache.store import (
    CacheCorruptionError,
    ProgressRecord,
    ResultStore,
    parse_size,
)

__all__ = [
    "ANALYSIS_CODE_VERSION",
    "CacheCorruptionError",
    "JobCancelled",
    "JobRunner",
    "JobStatus",
    "ProgressRecord",
    "ResultStore",
    "parse_size",
    "request_key",
    "validate_key",
]
