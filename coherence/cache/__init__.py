"""Content-addressed result store and background jobs (stage 4: cache).

Names are imported on first use (PEP 562): a queued job worker (``coherence.cache.worker``)
waits for a compute slot without importing torch and the analysis stack.
"""

from __future__ import annotations

from coherence.lazy import lazy_exports

_EXPORTS = {
    "ANALYSIS_CODE_VERSION": "coherence.cache.keys",
    "CacheCorruptionError": "coherence.cache.safedisk",
    "JobCancelled": "coherence.cache.jobs",
    "JobRunner": "coherence.cache.jobs",
    "JobState": "coherence.cache.states",
    "JobStatus": "coherence.cache.jobs",
    "ProgressRecord": "coherence.cache.states",
    "ResultStore": "coherence.cache.store",
    "parse_size": "coherence.cache.store",
    "request_key": "coherence.cache.keys",
    "unit_keys": "coherence.cache.keys",
    "validate_key": "coherence.cache.layout",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
