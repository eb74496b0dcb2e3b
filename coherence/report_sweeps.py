"""The report's Training dynamics and Sensitivity sections: the charts of the dashboard's two
sweep panels for the report's selection, from cached points only (nothing is computed).

A sweep is in the report when it holds more than the selection's own analysis: two epochs of
one group (dynamics) or a second setting (sensitivity); otherwise a note says what to compute.
The figures come from ``dashboard.sweep_views``, as the panels', so the report shows what the
dashboard showed; their cache keys and settings join the provenance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coherence.analysis.figures.dynamics import (
    agreement_figure,
    dynamics_figure,
    epoch_heatmaps,
    sensitivity_figure,
)
from coherence.analysis.results import AnalysisResult
from coherence.analysis.trends import agreement, point_scores
from coherence.errors import CoherenceError
from coherence.report_panels import Section, how_to_read

if TYPE_CHECKING:  # import torch (via the request); the report only reads results
    from coherence.dashboard.selection import Selection
    from coherence.dashboard.sweeps import SweepPoint
    from coherence.dashboard.workspace_scan import Catalog

DYNAMICS = "Training dynamics"
SENSITIVITY = "Sensitivity"


@dataclass
class SweepSections:
    """The sweep sections, why a sweep is left out (one sentence each), and the
    provenance of every point drawn."""

    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


class _Cache:
    """The report's view of the result cache: done points, each result read once."""

    def __init__(self, root: str | Path) -> None:
        from coherence.cache.jobs import JobRunner

        self.runner = JobRunner(root)
        self._results: dict[str, AnalysisResult | None] = {}

    def done(self, points: Sequence[SweepPoint]) -> list[SweepPoint]:
        return [p for p in points if self.runner.status(p.key).state == "done"]

    def load(self, point: SweepPoint) -> AnalysisResult | None:
        if point.key not in self._results:
            self._results[point.key] = self.runner.result(point.key, point.request)
        return self._results[point.key]

    def scores(self, response: str):
        def of(point: SweepPoint) -> dict[str, np.ndarray]:
            result = self.load(point)
            if result is None:  # evicted between the status and the read
                return {}
            return point_scores(result, response if response in point.request.responses else None)

        return of


def _first(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    return value[0] if isinstance(value, list | tuple) else value


def _overlay(params: Mapping[str, Any], damping: float) -> float | None:
    """The link's ``dyn_vs_damping`` as a λ other than the selection's (None: none)."""
    value = _first(params, "dyn_vs_damping")
    try:
        overlay = float(value) if value not in (None, "none") else None
    except ValueError:
        return None  # refused before (report.panel_value_problems); the dashboard ignores it
    return None if overlay is None or math.isclose(overlay, damping) else overlay


def _default_count(points: Sequence[SweepPoint]) -> int:
    """The settings the Sensitivity tab counts before its on-demand toggle is on."""
    return sum(not p.on_demand for p in points)


def _unconverged(bad: Sequence[tuple[SweepPoint, float]], name, what: str, total: int) -> str:
    """The panels' warning about cg points that stopped short, as a caption sentence."""
    if not bad:
        return ""
    listed = "; ".join(f"{name(p)} (worst residual {worst:.3g})" for p, worst in bad)
    return (
        f" cg did not reach its tolerance in {len(bad)} of the {total} cached {what}: "
        f"{listed}. Their points are drawn, but their influence values are inaccurate."
    )


def sweep_sections(
    root: str | Path,
    catalog: Catalog,
    selection: Selection,
    labels: Sequence[str],
    params: Mapping[str, Any] | None = None,
) -> SweepSections:
    """The Training dynamics and Sensitivity sections of ``selection`` (``params``: the
    link's panel choices: ``dyn_vs_damping`` overlays another λ, ``sens_pair`` picks the
    compared estimators)."""
    cache = _Cache(root)
    out = SweepSections()
    _dynamics(root, selection, labels, params or {}, cache, out)
    _sensitivity(root, catalog, selection, labels, params or {}, cache, out)
    return out


def _dynamics(root, selection, labels, params, cache: _Cache, out: SweepSections) -> None:
    from coherence.dashboard import sweep_views
    from coherence.surrogates import checkpoint as ckpt
    from coherence.workspace import checkpoints_dir, workspace_root

    other = _overlay(params, selection.damping)
    points, problems = sweep_views.dynamics_points(root, selection, cache.runner, other)
    done = cache.done(points)
    own = [p for p in done if not p.series]
    if not any(n >= 2 for n in sweep_views.epochs_per_group(own, labels).values()):
        mine = [p for p in points if not p.series]
        cached = f"{len(own)} of {len(mine)} epoch analyses at λ = {selection.damping:g} cached"
        out.notes.append(
            f"{DYNAMICS}: not in this report: it needs two epochs of one group analysed "
            f"({cached}"
            + ("; the checkpoints keep no earlier snapshot" if len(mine) <= len(labels) else "")
            + "). Compute them in the dashboard's Training dynamics tab, then build the report "
            "again." + (f" ({'; '.join(problems)})" if problems else "")
        )
        return
    response = selection.responses[0]
    lines = sweep_views.dynamics_lines(
        done,
        labels,
        selection.groups,
        checkpoints_dir(workspace_root(root)),
        cache.scores(response),
        ckpt.read_history,
        own_suffix=f" · λ = {selection.damping:g}" if other is not None else "",
    )
    bad = sweep_views.unconverged_points(done, cache.load)
    caption = how_to_read(dynamics_figure) + _unconverged(
        bad,
        lambda p: f"epoch {p.x:g}" + (f", {p.series}" if p.series else ""),
        "epoch analyses",
        len(done),
    )
    caption += "".join(f" {problem}." for problem in problems + lines.problems)
    figure = dynamics_figure(
        lines.trends, lines.validation or None, colors=lines.group_of, dashed=lines.dashed
    )
    out.sections.append(Section(DYNAMICS, caption, figure))
    for label, count in sweep_views.epochs_per_group(own, labels).items():
        if count < 2:
            continue
        found = sweep_views.epoch_maps(own, labels.index(label), cache.load)
        if len(found.maps) < 2:
            continue
        title = f"{label}: two-time map across epochs"
        maps = epoch_heatmaps(
            found.maps, found.epochs, selection.n_examples, times=found.times, title=title
        )
        out.sections.append(Section(title, how_to_read(epoch_heatmaps), maps))
    meta = sweep_views.sweep_meta({}, done, labels, "epoch")
    out.provenance |= {f"{DYNAMICS}: {k}": v for k, v in meta.items()}


def _sensitivity(root, catalog, selection, labels, params, cache: _Cache, out) -> None:
    from coherence.dashboard import sweep_views, sweeps

    points, problems = sweeps.sensitivity_points(
        root, selection, catalog, cache.runner, include_on_demand=True
    )
    done = cache.done(points)
    if len(done) <= len(selection.groups):  # the selection's own analysis at most
        out.notes.append(
            f"{SENSITIVITY}: not in this report: no setting besides the selection's own is "
            f"cached ({len(done)} of the tab's {_default_count(points)} default settings, "
            f"{len(points)} with the on-demand ones). Compute the sweep in the dashboard's "
            "Sensitivity tab, then build the report again."
            + (f" ({'; '.join(problems)})" if problems else "")
        )
        return
    compare = len(selection.groups) > 1
    response = selection.responses[0]
    lines = sweep_views.sensitivity_lines(
        done, labels, selection.groups, cache.scores(response), compare=compare
    )
    bad = sweep_views.unconverged_points(done, cache.load)
    figure = sweep_views.sensitivity_chart(
        lines, bad, labels, selected_damping=selection.damping, compare=compare
    )
    caption = how_to_read(sensitivity_figure) + _unconverged(
        bad,
        lambda p: f"{sweep_views.series_name(labels, p)}, λ = {p.x:g}",
        "sweep settings",
        len(done),
    )
    cg = sweep_views.cg_lines(done, cache.load)
    if cg:
        caption += " cg convergence: " + "; ".join(cg) + "."
    caption += "".join(f" {problem}." for problem in problems)
    out.sections.append(Section(SENSITIVITY, caption, figure))
    meta = sweep_views.sweep_meta({}, done, labels, "λ") | sweep_views.sweep_settings_meta(
        lines, selection.estimator, selection.damping
    )
    out.provenance |= {f"{SENSITIVITY}: {k}": v for k, v in meta.items()}
    _agreement(selection, labels, params, done, cache, out, compare)


def _agreement(selection, labels, params, done, cache: _Cache, out, compare: bool) -> None:
    """The link's estimator pair (``sens_pair``), else the panel's first."""
    from coherence.dashboard import sweep_views

    damping = selection.damping
    candidates, pairs = sweep_views.agreement_pairs(done, damping)
    if not pairs:
        out.notes.append(
            f"Agreement between estimators: not in this report: it needs two estimators "
            f"cached at λ = {damping:g} for one group."
        )
        return
    names = [sweep_views.pair_name(pair, labels, compare) for pair in pairs]
    chosen = _first(params, "sens_pair")
    g, a, b = pairs[names.index(chosen) if chosen in names else 0]
    first, second = cache.load(candidates[g][a]), cache.load(candidates[g][b])
    if first is None or second is None:
        return
    try:
        found = agreement(first.H_std[first.primary], second.H_std[first.primary])
    except CoherenceError as error:
        out.notes.append(f"Agreement between estimators ({a} vs {b}): {error}")
        return
    figure = agreement_figure(
        found, (a, b), times=first.times, damping=damping, group=labels[g] if compare else None
    )
    title = "Agreement between estimators" + (f" ({labels[g]})" if compare else "")
    caption = f"{how_to_read(agreement_figure)} {sweep_views.agreement_text(found, damping)}"
    out.sections.append(Section(title, caption, figure))
