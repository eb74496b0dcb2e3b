"""The report's Training dynamics and Sensitivity sections: the charts of the dashboard's two
sweep panels for the report's selection, from cached points only (nothing is computed).

A sweep is in the report when one group holds more than the selection's own analysis: two
epochs (dynamics) or a second setting (sensitivity). Otherwise the page says it is left out
and why, and the command line says what to compute (or which other model group has it
cached). The figures come from ``dashboard.sweep_views``, as the panels', so the report shows
what the dashboard showed; every point's cache key joins the provenance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import numpy as np

from coherence.analysis.figures.dynamics import (
    agreement_figure,
    dynamics_figure,
    epoch_heatmaps,
    sensitivity_figure,
)
from coherence.analysis.results import AnalysisResult
from coherence.errors import CoherenceError
from coherence.report_panels import Section, how_to_read, link_value
from coherence.wording import plural, shell_command

if TYPE_CHECKING:  # import torch (via the request); the report only reads results
    from coherence.dashboard.selection import Selection
    from coherence.dashboard.sweeps import SweepPoint
    from coherence.dashboard.workspace_scan import Catalog

DYNAMICS = "Training dynamics"
SENSITIVITY = "Sensitivity"
AGREEMENT = "Agreement between estimators"


@dataclass(frozen=True)
class LeftOut:
    """A sweep section the report leaves out: ``reason`` is what its reader is told,
    ``advice`` what the one who builds it can do (the command line prints both)."""

    tab: str
    reason: str
    advice: str = ""

    @property
    def page_text(self) -> str:
        return f"{self.tab}: {self.reason}."

    @property
    def cli_text(self) -> str:
        return f"{self.tab}: not in this report: {self.reason}." + (
            f" {self.advice}" if self.advice else ""
        )


@dataclass
class SweepSections:
    """The sweep sections, those left out, the provenance of every point drawn, and the
    link's sweep choices that name nothing cached (``sens_pair``: refused by the CLI)."""

    sections: list[Section] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    link_problems: list[str] = field(default_factory=list)


class _Cache:
    """The report's view of the result cache: the points whose result reads (one evicted
    between its status and its read is not drawn), each result read once."""

    def __init__(self, root: str | Path) -> None:
        from coherence.cache.jobs import JobRunner

        self.runner = JobRunner(root)
        self._results: dict[str, AnalysisResult | None] = {}

    def statuses(self, points: Sequence[SweepPoint]) -> list:
        return [self.runner.status(p.key) for p in points]

    def done(self, points: Sequence[SweepPoint]) -> list[SweepPoint]:
        return [
            p
            for p, status in zip(points, self.statuses(points), strict=True)
            if status.state == "done" and self.load(p) is not None
        ]

    def load(self, point: SweepPoint) -> AnalysisResult | None:
        if point.key not in self._results:
            self._results[point.key] = self.runner.result(point.key, point.request)
        return self._results[point.key]

    def scores(self, response: str):
        from coherence.dashboard.sweep_views import request_scores

        def of(point: SweepPoint) -> dict[str, np.ndarray]:
            result = self.load(point)
            assert result is not None  # only done points are scored
            return request_scores(result, point.request, response)

        return of


def _overlay(params: Mapping[str, Any], selection: Selection) -> float | None:
    """The link's ``dyn_vs_damping`` as a λ other than the selection's (None: none, or an
    estimator whose Ĥ ignores λ, whose tab offers no overlay)."""
    from coherence.dashboard import sweeps

    value = link_value(params, "dyn_vs_damping")
    try:
        overlay = float(value) if value not in (None, "none") else None
    except ValueError:
        return None  # refused before (report.panel_value_problems); the dashboard ignores it
    if overlay is None or sweeps.ignores_damping(selection.estimator):
        return None
    return None if math.isclose(overlay, selection.damping) else overlay


def _spaced(sentence: str) -> str:
    """A sentence appended to a caption ('' stays '')."""
    return f" {sentence}" if sentence else ""


def _per_group(
    done: Sequence[SweepPoint], every: Sequence[SweepPoint], labels: Sequence[str], what: str
) -> str:
    """'UNet: 1 of 7 default settings; ViT: 1 of 7' (one group: without its label)."""
    counts = [
        (label, sum(p.group == g for p in done), sum(p.group == g for p in every))
        for g, label in enumerate(labels)
    ]
    if len(counts) == 1:
        return f"{counts[0][1]} of {counts[0][2]} {what}"
    return "; ".join(f"{label}: {n} of {total} {what}" for label, n, total in counts)


def _most_per_group(points: Sequence[SweepPoint]) -> int:
    """The most points any one group has."""
    return max(Counter(point.group for point in points).values(), default=0)


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
    _dynamics(root, catalog, selection, labels, params or {}, cache, out)
    _sensitivity(root, catalog, selection, labels, params or {}, cache, out)
    pair = link_value(params or {}, "sens_pair")
    drawn = any(section.title.startswith(AGREEMENT) for section in out.sections)
    if pair is not None and not drawn and not out.link_problems:
        out.link_problems.append(  # the sender's dashboard showed a pair the cache lacks here
            f"sens_pair={pair!r}: no two estimators are cached at λ = "
            f"{selection.damping:g} for this selection, so the report has no agreement to show"
        )
    return out


def _cached_elsewhere(catalog, selection, points_of, cache: _Cache, tab: str) -> str:
    """Advice naming another model group of the dataset whose default view has this sweep
    cached (the dashboard's tab shows that one when the selection's own is empty)."""
    from coherence.dashboard import sweep_views

    entry = catalog.dataset(selection.dataset)
    if entry is None:
        return ""
    found = sweep_views.filled_groups(catalog, entry, selection, points_of, cache.statuses)
    return "".join(  # with the workspace, as every suggested command (pasted elsewhere, it
        # looked in ./workspace)
        f" {label}'s default view has {done} of {total} cached, which the dashboard's {tab} "
        "tab shows instead: "
        + shell_command(
            "coherence",
            "report",
            "--workspace",
            str(catalog.root),
            "--link",
            f"?{urlencode(other.to_query())}",
        )
        + "."
        for label, other, done, total in found[:1]
    )


def _cli_route(catalog, points, done) -> str:
    """The CLI's way to the sweep: one `coherence analyze` per missing setting, the first
    in full (the advice named the dashboard's tab only, which a user on a cluster's login
    node does not have)."""
    from coherence.dashboard.selection import from_request
    from coherence.report import analyze_command

    cached = {p.key for p in done}
    missing = [p for p in points if p.key not in cached and not p.on_demand]
    for point in missing:
        chosen = from_request(catalog, point.request.to_dict())
        if chosen is not None:
            return (
                f" From the CLI: one `coherence analyze` per missing setting ({len(missing)}), "
                f"the first {analyze_command(chosen, chosen.checkpoints, catalog.root)}."
            )
    return ""


def _dynamics(root, catalog, selection, labels, params, cache: _Cache, out) -> None:
    from coherence.dashboard import sweep_views, sweeps
    from coherence.surrogates import checkpoint as ckpt
    from coherence.workspace import checkpoints_dir

    other = _overlay(params, selection)
    points, problems = sweep_views.dynamics_points(root, selection, cache.runner, other)
    done = cache.done(points)
    mine = [p for p in points if not p.series]
    own = [p for p in done if not p.series]
    if _most_per_group(own) < 2:
        if problems and not mine:  # its epochs could not even be listed
            reason = f"its epochs could not be listed ({'; '.join(problems)})"
            out.left_out.append(LeftOut(DYNAMICS, reason, "Fix the files named above."))
        elif _most_per_group(mine) < 2:
            found = sweep_views.one_epoch_reason(catalog, selection)
            advice = f"Train the seeds with one --keep-epochs list, e.g. {found.retrain}."
            out.left_out.append(LeftOut(DYNAMICS, found.reason, advice))
        else:
            reason = (
                f"no group has two of its epochs analysed at λ = {selection.damping:g} "
                f"({_per_group(own, mine, labels, 'epoch analyses')})"
            )
            advice = "Compute them in the dashboard's Training dynamics tab."
            advice += _cli_route(catalog, mine, own) + _cached_elsewhere(
                catalog,
                selection,
                lambda s: sweeps.dynamics_points(root, s, cache.runner)[0],
                cache,
                DYNAMICS,
            )
            out.left_out.append(LeftOut(DYNAMICS, reason, advice))
        return
    response = selection.responses[0]
    lines = sweep_views.dynamics_lines(
        done,
        labels,
        selection.groups,
        checkpoints_dir(root),
        cache.scores(response),
        ckpt.read_history,
        own_suffix=f" · λ = {selection.damping:g}" if other is not None else "",
    )
    caption = how_to_read(dynamics_figure)
    if other is not None:
        caption += f" {sweep_views.SAME_AT_ANY_DAMPING}"
    caption += _spaced(sweep_views.epochs_not_drawn(selection.damping, other, points, done, labels))
    caption += _spaced(
        sweep_views.unconverged_text(
            sweep_views.unconverged_points(done, cache.load),
            len(done),
            sweep_views.epoch_point_name,
            "epoch analyses",
        )
    )
    caption += "".join(f" {problem}." for problem in problems + lines.problems)
    drawn = {}  # each group's maps across epochs, where it has two epochs to show
    for g, label in enumerate(labels):
        found = sweep_views.epoch_maps(own, g, cache.load)
        if len(found.maps) >= 2:
            drawn[label] = found
        else:  # said: a compare report dropped a group's maps without a word
            analysed = sum(p.group == g for p in own)
            caption += (
                f" {label}'s two-time maps across epochs are left out: "
                f"{plural(analysed, 'epoch')} analysed at λ = {selection.damping:g}."
            )
    figure = dynamics_figure(
        lines.trends, lines.validation or None, colors=lines.group_of, dashed=lines.dashed
    )
    out.sections.append(Section(DYNAMICS, caption, figure))
    for label, found in drawn.items():
        title = f"{label}: two-time map across epochs"
        maps = epoch_heatmaps(
            found.maps, found.epochs, selection.n_examples, times=found.times, title=title
        )
        out.sections.append(Section(title, how_to_read(epoch_heatmaps), maps))
    out.provenance |= _provenance(DYNAMICS, done, labels, "epoch")


def _provenance(
    tab: str, done, labels, x_name: str, extra: Mapping[str, Any] | None = None
) -> dict:
    """The sweep's rows of the provenance table: its settings, weights and every point's
    full cache key (as the analysis rows give theirs)."""
    from coherence.dashboard import sweep_views

    meta = sweep_views.sweep_meta({}, done, labels, x_name, key_length=None)
    return {f"{tab}: {k}": v for k, v in (meta | dict(extra or {})).items()}


def _sensitivity(root, catalog, selection, labels, params, cache: _Cache, out) -> None:
    from coherence.dashboard import sweep_views, sweeps

    points, problems = sweeps.sensitivity_points(
        root, selection, cache.runner, include_on_demand=True
    )
    done = cache.done(points)
    if _most_per_group(done) < 2:  # no group has a second setting
        defaults = [p for p in points if not p.on_demand]
        reason = (
            "no group has a second setting computed "
            f"({_per_group(done, defaults, labels, 'default settings')})"
        )
        advice = "Compute the sweep in the dashboard's Sensitivity tab."
        advice += _cli_route(catalog, points, done) + _cached_elsewhere(
            catalog,
            selection,
            lambda s: sweeps.sensitivity_points(root, s, cache.runner)[0],
            cache,
            SENSITIVITY,
        )
        out.left_out.append(
            LeftOut(SENSITIVITY, reason + "".join(f"; {p}" for p in problems), advice)
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
    caption = how_to_read(sensitivity_figure) + _spaced(
        sweep_views.unconverged_text(
            bad, len(done), partial(sweep_views.setting_point_name, labels), "sweep settings"
        )
    )
    cg = sweep_views.cg_lines(done, cache.load)
    if cg:
        caption += " cg convergence: " + "; ".join(cg) + "."
    caption += "".join(f" {problem}." for problem in problems)
    out.sections.append(Section(SENSITIVITY, caption, figure))
    settings = sweep_views.sweep_settings_meta(lines, selection.estimator, selection.damping)
    out.provenance |= _provenance(SENSITIVITY, done, labels, "λ", settings)
    _agreement(selection, labels, params, done, cache, out, compare)


def _agreement(selection, labels, params, done, cache: _Cache, out, compare: bool) -> None:
    """The link's estimator pair (``sens_pair``), else the panel's first."""
    from coherence.dashboard import sweep_views

    damping = selection.damping
    candidates, pairs = sweep_views.agreement_pairs(done, damping)
    chosen = link_value(params, "sens_pair")
    if not pairs:
        out.left_out.append(
            LeftOut(
                AGREEMENT,
                f"no two estimators are cached at λ = {damping:g} for one group",
                "Compute a second one at this λ in the dashboard's Sensitivity tab (euclidean "
                "is the cheapest).",
            )
        )
        return
    names = [sweep_views.pair_name(pair, labels, compare) for pair in pairs]
    if chosen is not None and chosen not in names:
        # compare mode names a pair with its group: the pair itself read as not cached
        grouped = [name for name in names if name.endswith(f": {chosen}")]
        hint = f"; in compare mode name its group: {grouped[0]!r}" if grouped else ""
        out.link_problems.append(
            f"sens_pair={chosen!r}: not a pair of estimators cached at λ = {damping:g} "
            f"({', '.join(names)}){hint}; using {names[0]!r} instead"
        )
    pair = pairs[names.index(chosen) if chosen in names else 0]
    g, a, b = pair
    try:
        found, first = sweep_views.pair_agreement(candidates, pair, cache.load)  # both done
    except CoherenceError as error:
        out.left_out.append(LeftOut(AGREEMENT, f"{a} vs {b}: {error}"))
        return
    figure = agreement_figure(
        found,
        (a, b),
        times=first.times,
        damping=damping,
        group=labels[g] if compare else None,
        color_index=g if compare else 0,
    )
    title = AGREEMENT + (f" ({labels[g]})" if compare else "")
    caption = f"{how_to_read(agreement_figure)} {sweep_views.agreement_text(found, damping)}"
    out.sections.append(Section(title, caption, figure))
