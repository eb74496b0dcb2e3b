"""Coherence Explorer dashboard (Streamlit): a thin router into ``coherence.dashboard``.

Run with `coherence serve` (or `make run`); the workspace comes from COHERENCE_WORKSPACE.
"""

from __future__ import annotations

from coherence.dashboard.page import run

run()
