"""What the sweep panels draw from their done points (pure, no streamlit): the lines of the
'Training dynamics' and 'Sensitivity' charts, the epoch maps, the estimator pairs the
agreement can compare, the cg convergence lines and the sweep's provenance.

The dashboard's panels and the HTML report (``coherence.report_sweeps``) both build their
figures here, so a chart a collaborator opens in the report is the one the dashboard showed.
Results and scores come through the caller's ``load``/``scores_of`` (the dashboard's are
streamlit-cached, the report's read the cache directly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from coherence.analysis.diagnostics import unconverged_solves
from coherence.analysis.figures.dynamics import sensitivity_figure
from coherence.analysis.results import AnalysisResult
from coherence.analysis.summaries import training_curves, two_time_map
from coherence.analysis.trends import Agreement, Trend, agreement, point_scores, trends
from coherence.dashboard import sweeps
from coherence.dashboard.sweeps import SweepPoint
from coherence.errors import CoherenceError
from coherence.wording import plural, shell_command
from coherence.workspace import checkpoints_dir

if TYPE_CHECKING:  # the selection's module imports torch (via the request)
    from coherence.analysis.request import AnalysisRequest
    from coherence.dashboard.selection import Selection
    from coherence.dashboard.workspace_scan import Catalog, DatasetEntry

Load = Callable[[SweepPoint], AnalysisResult | None]  # a done point's cached result
ScoresOf = Callable[[SweepPoint], dict[str, np.ndarray]]  # trends.point_scores of a point
HistoryOf = Callable[[Path], list[dict[str, float]]]  # a checkpoint's history.json records


# ---------------------------------------------------------------------------- dynamics ---

# why two of the six panels show one line where the overlay draws two
SAME_AT_ANY_DAMPING = (
    "The top eigenvalue and the dominant-eigenvalue share barely depend on λ: they come "
    "from η's own spectrum (λ adds λ to each eigenvalue), so in those two panels the other "
    "λ's line lies on, and hides under, the selection's."
)


def dynamics_points(
    root: str | Path, selection: Selection, runner, overlay: float | None = None
) -> tuple[list[SweepPoint], list[str]]:
    """``sweeps.dynamics_points`` of the selection and, with ``overlay``, the same epochs at
    that λ (their ``series`` names it: "λ = 0.01")."""
    points, problems = sweeps.dynamics_points(root, selection, runner)
    if overlay is not None:
        more, more_problems = sweeps.dynamics_points(
            root, replace(selection, damping=overlay), runner
        )
        points += [replace(p, series=f"λ = {overlay:g}") for p in more]
        problems += more_problems
    return points, problems


def epochs_not_drawn(
    damping: float,
    other: float | None,
    points: Sequence[SweepPoint],
    done: Sequence[SweepPoint],
    labels: Sequence[str] = (),
) -> str:
    """'' when every epoch of the selection's λ (and of the overlay's) is drawn, else which
    are not, per λ and, with two groups (``labels``), per group: an overlay with one cached
    epoch drew a lone point that the page did not explain (the report did), and in compare
    mode the sentence did not say whose epochs were missing."""
    keys = {p.key for p in done}
    missing = []
    named = [(f"λ = {damping:g}", False)]
    if other is not None:
        named.append((f"λ = {other:g}", True))
    groups = list(enumerate(labels)) if len(labels) > 1 else [(None, "")]
    for group, label in groups:
        for name, series in named:
            every = [
                p
                for p in points
                if bool(p.series) == series and (group is None or p.group == group)
            ]
            drawn = sum(p.key in keys for p in every)
            if every and drawn < len(every):
                whose = f"{label} at " if label else ""
                missing.append(f"{whose}{name}: {drawn} of {len(every)} epoch analyses computed")
    return f"Not every epoch is drawn ({'; '.join(missing)})." if missing else ""


@dataclass(frozen=True)
class DynamicsLines:
    """The Training dynamics chart's lines: ``trends`` {line: {score: Trend}} (each group's
    line at the selection's λ, then the overlaid λ's), ``validation`` {line:
    training_curves} (the selection's lines only: it ignores λ), ``dashed`` (the overlaid
    lines), ``group_of`` {line: group index}, ``problems`` (a validation curve not read)."""

    trends: dict[str, dict[str, Trend]]
    validation: dict[str, dict[str, Any]]
    dashed: list[str]
    group_of: dict[str, int]
    problems: list[str]


def dynamics_lines(
    done: Sequence[SweepPoint],
    labels: Sequence[str],
    groups: Sequence[Sequence[str]],
    checkpoints: Path,
    scores_of: ScoresOf,
    history_of: HistoryOf,
    *,
    own_suffix: str = "",
) -> DynamicsLines:
    """The lines of every group: its epochs at the selection's λ (``own_suffix`` names that
    λ when another is overlaid) and, dashed in its colour, the overlaid λ's epochs (points
    whose ``series`` names it)."""
    lines, validation, group_of, problems = {}, {}, {}, []
    overlaid = {}  # the overlaid λ's lines, drawn dashed
    for g, label in enumerate(labels):
        mine = [p for p in done if p.group == g and not p.series]
        theirs = [p for p in done if p.group == g and p.series]
        if theirs:
            line = f"{label} · {theirs[0].series}"
            overlaid[line] = trends([(p.x, scores_of(p)) for p in theirs])
            group_of[line] = g
        if not mine:
            continue
        line = f"{label}{own_suffix}"
        lines[line] = trends([(p.x, scores_of(p)) for p in mine])
        group_of[line] = g
        try:
            histories = [history_of(checkpoints / name) for name in groups[g]]
        except (CoherenceError, OSError) as error:
            problems.append(f"{label}: no validation curve ({error})")
            continue
        without = [name for name, h in zip(groups[g], histories, strict=True) if not h]
        if without:  # the caption promises the curve: say why it is missing
            problems.append(
                f"{label}: no validation curve ({', '.join(without)} recorded no training "
                "history, history.json)"
            )
        else:
            validation[line] = training_curves(histories)
    return DynamicsLines(lines | overlaid, validation, list(overlaid), group_of, problems)


@dataclass(frozen=True)
class EpochMaps:
    """One group's intra-class two-time maps at its analysed epochs (ascending), the
    points drawn and the physical times of the window."""

    maps: list[np.ndarray]
    epochs: list[float]
    drawn: list[SweepPoint]
    times: Any


def epoch_maps(done: Sequence[SweepPoint], group: int, load: Load) -> EpochMaps:
    """The maps of ``group``'s done points at the selection's λ (an overlaid λ's are not
    drawn: the maps stay at the selection's)."""
    maps, epochs, drawn, times = [], [], [], None
    for point in sorted((p for p in done if p.group == group and not p.series), key=lambda p: p.x):
        result = load(point)
        if result is None:
            continue
        maps.append(two_time_map(result.H_std[result.primary]))
        epochs.append(point.x)
        drawn.append(point)
        times = result.times  # physical time, as the two-time map
    return EpochMaps(maps, epochs, drawn, times)


def epochs_missing(
    points: Sequence[SweepPoint], done: Sequence[SweepPoint], group: int
) -> list[int]:
    """The group's epochs at the selection's λ not analysed yet (their maps are not drawn:
    a group's map strip of one epoch read as if it had no others)."""
    keys = {p.key for p in done}
    return sorted(
        int(p.x) for p in points if p.group == group and not p.series and p.key not in keys
    )


def maps_not_drawn(label: str, missing: Sequence[int]) -> str:
    """The sentence under a group's epoch maps when some epochs are not analysed."""
    if not missing:
        return ""
    epochs = ", ".join(map(str, missing))
    return f"{label}: {plural(len(missing), 'epoch')} not analysed yet ({epochs}), so not drawn."


def epochs_per_group(done: Sequence[SweepPoint], labels: Sequence[str]) -> dict[str, int]:
    """{group label: its epochs analysed at the selection's λ}, the most first (the default
    view shows the evolution: the demo's UNet has only its last epoch analysed, its ViT
    three); groups with none are left out."""
    counts = {
        label: sum(p.group == g and not p.series for p in done) for g, label in enumerate(labels)
    }
    return dict(sorted(((k, n) for k, n in counts.items() if n), key=lambda item: -item[1]))


@dataclass(frozen=True)
class OneEpoch:
    """Why a selection's dynamics has one epoch to show: ``listed`` names each seed's kept
    epochs where the seeds keep snapshots but of no epoch they all share (said as "no
    snapshot" before, although each seed kept some), empty where they keep none; ``retrain``
    is the command that adds them."""

    listed: str
    retrain: str

    @property
    def reason(self) -> str:
        if self.listed:
            return f"the seeds keep snapshots, but of no epoch they all share ({self.listed})"
        return "these checkpoints keep no snapshot of an earlier epoch"


def one_epoch_reason(catalog: Catalog, selection: Selection) -> OneEpoch:
    """``OneEpoch`` of ``selection``'s seeds (a snapshot of the last epoch is the weights
    themselves: an earlier one is what counts)."""
    out = checkpoints_dir(catalog.root) / f"{selection.checkpoints[0]}_dyn"
    retrain = "coherence train … " + shell_command("--keep-epochs", "1,2,4,8,16", "--out", out)
    entries = [catalog.checkpoint(n) for n in selection.checkpoints]
    if any(e and any(k < e.trained_epochs for k in e.epochs) for e in entries):
        listed = "; ".join(
            f"{n}: {', '.join(map(str, e.epochs if e else ())) or 'none'}"
            for n, e in zip(selection.checkpoints, entries, strict=True)
        )
        return OneEpoch(listed, retrain)
    return OneEpoch("", retrain)


# ------------------------------------------------------------------------- sensitivity ---


def series_name(labels: Sequence[str], point: SweepPoint) -> str:
    """A sensitivity line's name in compare mode: the group's label and the setting."""
    return f"{labels[point.group]} · {point.series}"


@dataclass(frozen=True)
class SensitivityLines:
    """The Sensitivity chart's lines: ``trends`` {line: {score: Trend}}, ``points`` {line:
    its done points}, ``flat`` (lines of an estimator that ignores λ), ``members`` {line:
    its group's checkpoints}, and in compare mode each line's group colour and setting."""

    trends: dict[str, dict[str, Trend]]
    points: dict[str, list[SweepPoint]]
    flat: list[str]
    members: dict[str, tuple[str, ...]]
    colors: dict[str, int] | None
    estimators: dict[str, str] | None


def sensitivity_lines(
    done: Sequence[SweepPoint],
    labels: Sequence[str],
    groups: Sequence[Sequence[str]],
    scores_of: ScoresOf,
    *,
    compare: bool,
) -> SensitivityLines:
    """One line per estimator setting (per group and setting in compare mode)."""
    by_line: dict[str, list[SweepPoint]] = {}
    for point in done:
        name = series_name(labels, point) if compare else point.series
        by_line.setdefault(name, []).append(point)
    return SensitivityLines(
        trends={
            name: trends([(p.x, scores_of(p)) for p in members])
            for name, members in by_line.items()
        },
        points=by_line,
        flat=[name for name, members in by_line.items() if not members[0].uses_damping],
        members={name: tuple(groups[members[0].group]) for name, members in by_line.items()},
        colors={series_name(labels, p): p.group for p in done} if compare else None,
        estimators={series_name(labels, p): p.series for p in done} if compare else None,
    )


def unconverged_points(done: Sequence[SweepPoint], load: Load) -> list[tuple[SweepPoint, float]]:
    """The done cg points whose solves did not all reach their tolerance, each with its
    worst residual."""
    bad = []
    for point in done:
        found = load(point) if point.request.estimator == "cg" else None
        if found is not None and (worst := unconverged_solves(found.diagnostics)):
            bad.append((point, worst[0].worst_residual))
    return bad


def epoch_point_name(point: SweepPoint) -> str:
    """A dynamics point as the unconverged-solve warning names it: 'epoch 4, λ = 0.01'."""
    return f"epoch {point.x:g}" + (f", {point.series}" if point.series else "")


def setting_point_name(labels: Sequence[str], point: SweepPoint) -> str:
    """A sensitivity point as the unconverged-solve warning names it."""
    return f"{series_name(labels, point)}, λ = {point.x:g}"


def unconverged_text(
    bad: Sequence[tuple[SweepPoint, float]],
    total: int,
    name: Callable[[SweepPoint], str],
    what: str,
    escape: Callable[[str], str] = str,
) -> str:
    """The warning about ``bad`` (``unconverged_points``) among ``total`` cached points, ''
    where none (issue 14: an unconverged cg result is never silent); ``escape`` the listed
    names (the dashboard's markdown)."""
    if not bad:
        return ""
    listed = "; ".join(f"{name(point)} (worst residual {worst:.3g})" for point, worst in bad)
    return (
        f"cg did not reach its tolerance in {len(bad)} of the {total} cached {what}: "
        f"{escape(listed)}. Their points are drawn, but their influence values are "
        "inaccurate; read them against the converged settings."
    )


def sensitivity_chart(
    lines: SensitivityLines,
    bad: Sequence[tuple[SweepPoint, float]],
    labels: Sequence[str],
    *,
    selected_damping: float,
    compare: bool,
    title: str = "Scores against λ",
) -> go.Figure:
    """The scores against λ, the sweep's grid spanned, the paper's λ and the selection's
    marked, and ``bad`` (``unconverged_points``) ringed on their lines."""
    rings: dict[str, list[float]] = {}
    for point, _ in bad:
        rings.setdefault(series_name(labels, point) if compare else point.series, []).append(
            point.x
        )
    return sensitivity_figure(
        lines.trends,
        paper_damping=sweeps.PAPER_DAMPING,
        flat=lines.flat,
        x_span=(min(sweeps.DAMPING_GRID), max(sweeps.DAMPING_GRID)),
        selected_damping=selected_damping,
        colors=lines.colors,
        estimators=lines.estimators,
        order=sweeps.SETTING_ORDER,
        unconverged=rings,
        title=title,
    )


def sweep_settings_meta(
    lines: SensitivityLines, selection_estimator: str, damping: float
) -> dict[str, str]:
    """What the sensitivity files say in place of the sidebar's one estimator and λ."""
    dampings = sorted({p.x for ps in lines.points.values() for p in ps if p.uses_damping})
    flat = f" ({', '.join(lines.flat)}: independent of λ)" if lines.flat else ""
    return {
        "estimator": f"sweep: {', '.join(lines.trends)}",
        "damping λ": f"sweep: {', '.join(f'{d:g}' for d in dampings)}{flat}",
        "selection's own setting": f"{selection_estimator}, λ = {damping:g}",
    }


def request_scores(
    result: AnalysisResult, request: AnalysisRequest, response: str
) -> dict[str, np.ndarray]:
    """``trends.point_scores`` of a sweep point's result for the selection's first
    response, or the result's primary one where the point's request does not hold it."""
    return point_scores(result, response if response in request.responses else None)


def cg_lines(done: Sequence[SweepPoint], load: Load) -> list[str]:
    """Per cached cg setting: its iteration cap, the most iterations a column took, and
    how many (seed, batch) units did not reach the tolerance."""
    lines = []
    for point in done:
        result = load(point) if point.request.estimator == "cg" else None
        if result is None:
            continue
        diags = [d for row in result.diagnostics for d in row]
        cap = max((int(d.get("max_iter") or 0) for d in diags), default=0)
        iterations = [i for d in diags for i in (d.get("iterations") or ())]
        unconverged = sum(1 for d in diags if d.get("converged") is False)
        lines.append(
            f"{point.series}, λ = {point.x:g}: iteration cap {cap}, at most "
            f"{max(iterations, default=0)} iterations per column; {unconverged} of "
            f"{len(diags)} (seed, batch) units did not reach the tolerance"
        )
    return lines


AgreementPair = tuple[int, str, str]  # (group, setting a, setting b)


def agreement_pairs(
    done: Sequence[SweepPoint], damping: float
) -> tuple[dict[int, dict[str, SweepPoint]], list[AgreementPair]]:
    """The settings each group has cached at ``damping`` (euclidean at any λ: it ignores
    λ), and every pair of them the agreement can compare."""
    candidates: dict[int, dict[str, SweepPoint]] = {}
    for point in done:
        if math.isclose(point.x, damping) or point.series == "euclidean":
            candidates.setdefault(point.group, {})[point.series] = point
    pairs = [
        (g, a, b)
        for g, by_name in candidates.items()
        for i, a in enumerate(by_name)
        for b in list(by_name)[i + 1 :]
    ]
    return candidates, pairs


def pair_agreement(
    candidates: Mapping[int, Mapping[str, SweepPoint]], pair: AgreementPair, load: Load
) -> tuple[Agreement, AnalysisResult] | None:
    """The agreement of ``pair``'s two cached results (on the first one's primary
    response) and that first result (its times label the map); None where one is gone.
    CoherenceError where the two maps cannot be compared."""
    g, a, b = pair
    first, second = load(candidates[g][a]), load(candidates[g][b])
    if first is None or second is None:
        return None
    return agreement(first.H_std[first.primary], second.H_std[first.primary]), first


def pair_name(pair: AgreementPair, labels: Sequence[str], compare: bool) -> str:
    """The pair as the picker (and a link's ``sens_pair``) names it."""
    g, a, b = pair
    return f"{labels[g]}: {a} vs {b}" if compare else f"{a} vs {b}"


def agreement_text(found: Agreement, damping: float) -> str:
    """The agreement's numbers in one sentence, beside its figure."""
    share = found.max_difference / max(found.scale, 1e-12)
    return (
        f"At λ = {damping:g}: median per-row Spearman ρ = {found.median_correlation:.3f}, "
        f"Pearson over all entries {found.pearson:.3f}; largest |ΔĤ| of the maps = "
        f"{found.max_difference:.3g} ({share:.0%} of the maps' {found.scale:.3g})."
    )


# ------------------------------------------------------------------ other model groups ---

MAX_OTHER_GROUPS = 4  # other model groups asked about (each look-up may hash their files)


def filled_groups(
    catalog: Catalog,
    dataset: DatasetEntry,
    selection: Selection,
    points_of: Callable[[Selection], list[SweepPoint]],
    statuses_of: Callable[[list[SweepPoint]], list],
) -> list[tuple[str, Selection, int, int]]:
    """Other model groups of the dataset whose default view has ≥ 2 cached sweep points:
    (label, selection, cached, total) each. ``points_of(selection)`` builds a sweep,
    ``statuses_of(points)`` reads their job statuses."""
    from coherence.dashboard.selection import group_defaults

    shown = set(selection.groups)
    found = []
    for group in catalog.groups(dataset)[: MAX_OTHER_GROUPS + len(shown)]:
        if group.checkpoints in shown:
            continue
        other = group_defaults(dataset, group)
        if other is None:
            continue
        try:
            points = points_of(other)
        except CoherenceError:
            continue
        done = sum(s.state == "done" for s in statuses_of(points))
        if done >= 2:
            found.append((group.label, other, done, len(points)))
    return found


# -------------------------------------------------------------------------- provenance ---


def sweep_meta(
    meta: Mapping[str, Any],
    points: Sequence[SweepPoint],
    labels: Sequence[str],
    x_name: str,
    *,
    key_length: int | None = 16,
) -> dict[str, Any]:
    """A sweep's export provenance: the view's ``meta`` without its one analysis's cache
    keys and settings, plus every drawn point's key (its first ``key_length`` characters;
    None: whole) and, per series, the settings it ran at. The files had named the final
    weights' key alone beside a chart of three epochs, and the sidebar's Krylov depth beside
    a krylov line computed at depth 4."""
    out = {
        k: v
        for k, v in meta.items()
        if not k.endswith(": cache key") and k not in ("Krylov depth", "cg rtol")
    }
    settings: dict[str, str] = {}
    keys: dict[str, str] = {}
    for point in sorted(points, key=lambda p: (p.group, p.series, p.x)):
        line = " · ".join(part for part in (labels[point.group], point.series) if part)
        request, recorded = point.request, point.request.to_dict()
        ran = [request.estimator.value]
        if recorded["depth"] is not None:  # used by this estimator
            ran.append(f"depth {recorded['depth']}")
        if recorded["rtol"] is not None:
            ran.append(f"rtol {recorded['rtol']:g}, max-iter {request.max_iter}")
        if recorded["energy_threshold"] not in (None, 1, 1.0):  # 1: nothing truncated
            ran.append(f"energy threshold {request.resolved_energy_threshold:g}")
        settings[line] = ", ".join(ran)
        keys[f"{line} · {x_name} {point.x:g}"] = point.key[:key_length]
    if x_name == "epoch":
        epochs = sorted({p.x for p in points})
        out["weights"] = (
            f"epochs {', '.join(f'{e:g}' for e in epochs)} (the training snapshots "
            "epochs/NNNN; a group's last epoch is its checkpoints' own weights)"
        )
    out["settings per line"] = settings
    out["cache keys"] = keys
    return out
