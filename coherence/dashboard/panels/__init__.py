"""The dashboard's tabs: one render function per panel, each ``render(ctx: PanelContext)``.

Panels read the selection and the cached results from the context and draw with the pure
figure builders of ``coherence.analysis.figures``; they never compute influence themselves.
"""

from __future__ import annotations

from collections.abc import Callable

from coherence.dashboard.panels.common import PanelContext
from coherence.dashboard.panels.conservation import conservation
from coherence.dashboard.panels.dynamics import dynamics
from coherence.dashboard.panels.influence import class_transfer, distance, time_lag, two_time
from coherence.dashboard.panels.models import rollout, spectrum
from coherence.dashboard.panels.overview import overview
from coherence.dashboard.panels.scores import headline, scores
from coherence.dashboard.panels.sensitivity import sensitivity
from coherence.dashboard.panels.validation import validation

PANELS: tuple[tuple[str, Callable[[PanelContext], None]], ...] = (
    ("Overview", overview),
    ("Two-time influence", two_time),
    ("Class transfer", class_transfer),
    ("Time lag", time_lag),
    ("Input distance", distance),
    ("NTK spectrum", spectrum),
    ("Conservation", conservation),
    ("Rollout", rollout),
    ("Validation", validation),
    ("Training dynamics", dynamics),
    ("Sensitivity", sensitivity),
    ("Scores", scores),
)
DEFAULT_PANEL = "Two-time influence"  # the headline figure greets a first visit

__all__ = ["DEFAULT_PANEL", "PANELS", "PanelContext", "headline"]
