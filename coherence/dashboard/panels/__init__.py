"""The dashboard's tabs: one render function per panel, each ``render(ctx: PanelContext)``.

Panels read the selection and the cached results from the context and draw with the pure
figure builders of ``coherence.analysis.figures``; they never compute influence themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from coherence.dashboard.panel_links import DEFAULT_PANEL, PANEL_LABELS
from coherence.dashboard.panels.common import PanelContext, settle_imports
from coherence.dashboard.panels.conservation import conservation
from coherence.dashboard.panels.dynamics import dynamics
from coherence.dashboard.panels.influence import class_transfer, distance, time_lag
from coherence.dashboard.panels.models import rollout, spectrum
from coherence.dashboard.panels.overview import overview
from coherence.dashboard.panels.scores import headline as _headline
from coherence.dashboard.panels.scores import scores
from coherence.dashboard.panels.sensitivity import sensitivity
from coherence.dashboard.panels.two_time import two_time
from coherence.dashboard.panels.validation import validation

Render = Callable[[PanelContext], None]


def _settled(render: Render) -> Render:
    """``render`` after any pandas import of another script thread is complete."""

    @functools.wraps(render)
    def run(ctx: PanelContext, *args: object) -> None:
        settle_imports()
        render(ctx, *args)

    return run


headline = _settled(_headline)
_RENDERS: dict[str, Render] = {
    "Overview": overview,
    "Two-time influence": two_time,
    "Class transfer": class_transfer,
    "Time lag": time_lag,
    "Input distance": distance,
    "NTK spectrum": spectrum,
    "Conservation": conservation,
    "Rollout": rollout,
    "Validation": validation,
    "Training dynamics": dynamics,
    "Sensitivity": sensitivity,
    "Scores": scores,
}
if set(_RENDERS) != set(PANEL_LABELS):  # a tab left out of one of them would vanish
    raise RuntimeError(f"tabs without a label or a render: {set(_RENDERS) ^ set(PANEL_LABELS)}")
# in the order of panel_links.PANEL_LABELS, where a link's panel= is checked (torch-free)
PANELS: tuple[tuple[str, Render], ...] = tuple(
    (label, _settled(_RENDERS[label])) for label in PANEL_LABELS
)

__all__ = ["DEFAULT_PANEL", "PANELS", "PanelContext", "headline"]
