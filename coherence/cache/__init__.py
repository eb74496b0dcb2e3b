"""Content-addressed result store and background jobs (stage 4: cache).

Names are imported on first use (PEP 562): a queued job worker (``coherence.cache.worker``)
waits for a compute slot without importing torch and the analysis stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ANALYSIS_CODE_VERSION": "coherence.cache.keys",
    "CacheCorruptionError": "coherence.cache.store",
    "JobCancelled": "coherence.cache.jobs",
    "JobRunner": "coherence.cache.jobs",
    "JobStatus": "coherence.cache.jobs",
    "ProgressRecord": "coherence.cache.store",
    "ResultStore": "coherence.cache.store",
    "parse_size": "coherence.cache.store",
    "request_key": "coherence.cache.keys",
    "unit_keys": "coherence.cache.keys",
    "validate_key": "coherence.cache.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
