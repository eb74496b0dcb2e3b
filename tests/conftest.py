"""Shared test set-up: torch threads for the 2 CI cores (override: COHERENCE_TORCH_THREADS=1
when other jobs share the machine; spinning OpenMP threads slow down badly when oversubscribed).

Compute slots (coherence.cache.slots) of a test session live in a private directory, so tests
neither queue behind real work on the machine nor hold up anyone else's; so do the on-disk
memos of file digests (coherence.digests), which stay out of the user's cache directory.
"""

from __future__ import annotations

import os
import tempfile

import torch

os.environ.setdefault("COHERENCE_SLOTS_DIR", tempfile.mkdtemp(prefix="coherence-test-slots-"))
os.environ.setdefault("COHERENCE_DIGEST_CACHE", tempfile.mkdtemp(prefix="coherence-test-digests-"))
# jobs compute here unless a test points them at its own Ray cluster (tests/executors)
os.environ.pop("COHERENCE_RAY_ADDRESS", None)

torch.set_num_threads(int(os.environ.get("COHERENCE_TORCH_THREADS", "2")))
