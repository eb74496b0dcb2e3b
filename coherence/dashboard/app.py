"""Coherence Explorer dashboard (Streamlit): the script `coherence serve` runs.

It ships inside the package, so an installed wheel serves the dashboard without a checkout;
the repository's root ``app.py`` is a shim with the same two lines. The workspace comes from
COHERENCE_WORKSPACE.
"""

from __future__ import annotations

from coherence.dashboard.page import run

run()
