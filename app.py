"""Shim for `streamlit run app.py` from a checkout: the dashboard script ships inside the
package (``coherence/dashboard/app.py``, what `coherence serve` runs)."""

from __future__ import annotations

from coherence.dashboard.page import run

run()
