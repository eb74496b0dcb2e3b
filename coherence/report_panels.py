"""The report's panels: every influence figure of a selection with its heading and caption,
in the dashboard's tab order, built from cached results (``coherence.report`` renders them).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from coherence.analysis import figures as F
from coherence.analysis.distance import DistanceCurve
from coherence.analysis.results import AnalysisResult
from coherence.analysis.scores import Scores, compute_scores
from coherence.analysis.summaries import class_transfer_matrix, lag_curves, two_time_map
from coherence.errors import CoherenceError

if TYPE_CHECKING:  # imports torch (via the request); the report only reads results
    from coherence.dashboard.selection import Selection

RESPONSE_TITLES = {"smse": "SMSE", "mass": "mass", "energy": "energy"}


class ReportError(CoherenceError):
    """The report cannot be built for this selection (not computed yet, bad link)."""


@dataclass(frozen=True)
class ReportGroup:
    """One checkpoint group of the selection with its cached result."""

    label: str
    key: str
    result: AnalysisResult


@dataclass(frozen=True)
class Section:
    """One figure of the report: heading, how to read it, the figure."""

    title: str
    caption: str
    figure: go.Figure


def link_value(params: Mapping[str, Any], key: str) -> str | None:
    """A link parameter's value: parse_qs gives lists, a caller's dict plain strings; of a
    repeated key the last, as the dashboard reads it (the report drew the first)."""
    value = params.get(key)
    if isinstance(value, list | tuple):
        return value[-1] if value else None
    return value


def how_to_read(builder: Callable) -> str:
    """The first paragraph of a figure builder's docstring without its 'Read:' prefix."""
    doc = inspect.getdoc(builder) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split()).removeprefix("Read:").strip()
    if len(text) > 1 and text[1].islower():  # a word, not a symbol such as "x = …"
        text = text[:1].upper() + text[1:]
    return text


def distance_from_inputs(group: ReportGroup) -> DistanceCurve:
    """The distance curve from the request's batches (read from the dataset files)."""
    from coherence.analysis.distance import influence_vs_distance
    from coherence.analysis.pipeline import prepare

    _, batches = prepare(group.result.request)
    inputs = np.stack([b.inputs.double().numpy() for b in batches])
    return influence_vs_distance(group.result.H_std[group.result.primary], inputs)


def _pair(figures: list[go.Figure], labels: list[str], title: str, zrange=None) -> go.Figure:
    if len(figures) == 1:
        return figures[0]
    return F.side_by_side(figures[0], figures[1], tuple(labels), zrange=zrange, title=title)


def _two_time(
    groups: Sequence[ReportGroup], selection: Selection, response: str, scale: str
) -> list[Section]:
    symbol = "Ĥ" if response == groups[0].result.primary else f"Ĥ_{response}"
    maps = [two_time_map(g.result.H_std[response]) for g in groups]
    name = RESPONSE_TITLES.get(response, response)
    title = f"Two-time influence ({name}), intra-class mean"
    labels = [g.label for g in groups]
    sections = [_maps_section(groups, selection, maps, title, scale, response)]
    if len(groups) == 2 and maps[0].shape == maps[1].shape:
        sections.append(
            Section(
                f"Difference map ({name}): {labels[0]} − {labels[1]}",
                how_to_read(F.difference_heatmap),
                F.difference_heatmap(
                    maps[0], maps[1], groups[0].result.times, labels, value_label=symbol
                ),
            )
        )
    return sections


HEATMAP_PANELS = ("two_time", "transfer", "mass", "energy")  # each with its colour scale
INTRA, SEED_MEAN = "intra", "mean"  # the two-time tab's default view (its link values)


def pair_label(option: str) -> str:
    """The two-time tab's class pair in words, for titles: 'intra-class mean' or
    'response R ← perturbation P'."""
    if option == INTRA:
        return "intra-class mean"  # short: the title fits a 1024 px window
    response, perturbation = option.split(" ← ")
    return f"response {response} ← perturbation {perturbation}"


def pair_options(classes: Sequence[str]) -> list[str]:
    """A two-time map's class pairs as a tab offers them: the intra-class mean, then each
    'R ← P' (response class R, perturbation class P)."""
    return [INTRA] + [f"{r} ← {p}" for r in classes for p in classes]


def pair_indices(option: str, classes: Sequence[str]) -> tuple[int, int] | None:
    """``two_time_map``'s class_pair of an option: None for the intra-class mean."""
    if option == INTRA:
        return None
    response, perturbation = option.split(" ← ")
    return list(classes).index(response), list(classes).index(perturbation)


def pair_problem(key: str, pair: str | None, classes: Sequence[str]) -> list[str]:
    """A link's class pair (``key``: the panel's parameter) that the tab would not offer."""
    if pair in (None, INTRA):
        return []
    parts = pair.split(" ← ")
    if len(parts) == 2 and set(parts) <= set(classes):
        return []
    return [
        f"{key}={pair!r}: not a class pair of this selection (intra, or 'R ← P' with R and P "
        f"among {', '.join(classes)}); using intra"
    ]


def two_time_view_problems(
    pair: str | None, seed: str | None, classes: Sequence[str], checkpoints: Sequence[str]
) -> list[str]:
    """A link's two-time class pair or seed that the tab would not offer (it would show
    its default view instead)."""
    problems = pair_problem("two_time_pair", pair, classes)
    if seed not in (None, SEED_MEAN, *checkpoints):
        problems.append(
            f"two_time_seed={seed!r}: not a seed of this selection (mean, or one of "
            f"{', '.join(checkpoints)}); using mean"
        )
    return problems


def _two_time_view(
    groups: Sequence[ReportGroup],
    selection: Selection,
    response: str,
    scale: str,
    view: tuple[str, str],
) -> Section:
    """The two-time map of the tab's class pair and seed (the seed mean in compare mode,
    where the tab offers no seed), on the tab's colour scale."""
    option, seed = view
    seed = SEED_MEAN if len(groups) > 1 else seed
    pair = pair_indices(option, selection.classes)
    maps = []
    for group in groups:
        H = group.result.H_std[response]
        if seed == SEED_MEAN:
            maps.append(two_time_map(H, class_pair=pair))
        else:
            per_seed = two_time_map(H, class_pair=pair, per_checkpoint=True)
            maps.append(per_seed[group.result.checkpoints.index(seed)])
    label = pair_label(option) + ("" if seed == SEED_MEAN else f", {seed}")
    title = f"Two-time influence ({RESPONSE_TITLES.get(response, response)}), {label}"
    return _maps_section(groups, selection, maps, title, scale, response)


def _maps_section(
    groups: Sequence[ReportGroup],
    selection: Selection,
    maps: Sequence[np.ndarray],
    title: str,
    scale: str,
    response: str,
) -> Section:
    """Each group's two-time map on one colour range of ``scale``, side by side; the link
    key of that scale is the response's panel's (``zscale_two_time``, ``zscale_mass``, …)."""
    primary = response == groups[0].result.primary
    value_label = "Ĥ" if primary else f"Ĥ_{response}"
    scale_key = "zscale_two_time" if primary else f"zscale_{response}"
    lo, hi, _ = F.heatmap_scale(scale, np.stack(maps), selection.n_examples)
    figures = [
        F.two_time_heatmap(
            V,
            g.result.times,
            selection.n_examples,
            title=title if len(groups) == 1 else "",
            value_label=value_label,
            steps=g.result.steps,
            scale=scale,
            zrange=(lo, hi),
        )
        for g, V in zip(groups, maps, strict=True)
    ]
    labels = [g.label for g in groups]
    caption = how_to_read(F.two_time_heatmap) + clipped_caption(maps, (lo, hi), scale_key)
    return Section(title, caption, _pair(figures, labels, title, (lo, hi)))


def clipped_caption(maps: Sequence[np.ndarray], zrange: tuple[float, float], key: str) -> str:
    """' k of n cells lie beyond the colour range …', or '': the dashboard's tabs said it under
    their maps, the report drew the same maps clipped without a word."""
    text = F.clipped_text(maps, zrange)
    if not text:
        return ""
    return (
        f" {text} and are drawn at its ends: {key}=auto or diverging (in the link, or "
        "--param) shows them."
    )


def sections(
    groups: Sequence[ReportGroup],
    selection: Selection,
    *,
    distance: Callable[[ReportGroup], DistanceCurve] | None = distance_from_inputs,
    scales: Mapping[str, str] | None = None,
    view: tuple[str, str] = (INTRA, SEED_MEAN),
    conservation_pair: str = INTRA,
    lag_axis: str = "whole",
) -> list[Section]:
    """Every influence panel of the selection, in the dashboard's tab order; ``scales``:
    each heatmap panel's colour scale (``HEATMAP_PANELS``; 'paper' where not given), as
    its tab shows it (one scale for all had drawn the class transfer diverging because the
    two-time tab was); ``view``: the two-time tab's (class pair, seed), drawn after the
    intra-class mean where it is another view (the report had left the link's view out);
    ``conservation_pair``: the Conservation tab's class pair, drawn likewise; ``lag_axis``:
    the Time lag tab's y axis (``LAG_AXES``)."""
    if not groups:
        raise ReportError("no computed group to report on")
    scale = {panel: "paper" for panel in HEATMAP_PANELS} | dict(scales or {})
    primary = groups[0].result.primary
    out = _two_time(groups, selection, primary, scale["two_time"])
    if view != (INTRA, SEED_MEAN):  # after the mean's difference map (compare mode), not
        # between the two, where that map read as the view's
        out.append(_two_time_view(groups, selection, primary, scale["two_time"], view))
    out.append(_class_transfer(groups, selection, primary, scale["transfer"]))
    lag = F.lag_curves_figure(
        [(g.label, lag_curves(g.result.H_std[primary])) for g in groups],
        title="Influence vs time lag",
        axis=lag_axis,
    )
    out.append(Section("Time lag", how_to_read(F.lag_curves_figure), lag))
    if distance is not None:
        out += _distance(groups, distance)
    out += _ntk(groups)
    for response in ("mass", "energy"):
        if all(response in g.result.H_std for g in groups) and response != primary:
            out += _two_time(groups, selection, response, scale[response])[:1]
            if conservation_pair != INTRA:  # the Conservation tab's pair, after the mean
                pair_view = (conservation_pair, SEED_MEAN)
                out.append(_two_time_view(groups, selection, response, scale[response], pair_view))
            curves = [(g.label, lag_curves(g.result.H_std[response])) for g in groups]
            title = f"Influence on {response} vs time lag"
            figure = F.lag_curves_figure(curves, title=title, value_label=f"Ĥ_{response}")
            out.append(Section(title, how_to_read(F.lag_curves_figure), figure))
    table = F.scores_table(score_table(groups))
    out.append(Section("Scores", how_to_read(F.scores_table), table))
    return out


def _class_transfer(
    groups: Sequence[ReportGroup], selection: Selection, response: str, scale: str
) -> Section:
    matrices = [class_transfer_matrix(g.result.H_std[response]) for g in groups]
    lo, hi, _ = F.heatmap_scale(scale, np.stack(matrices), selection.n_examples)
    title = "Class transfer matrix (rows = response, columns = perturbation)"
    figures = [
        F.class_transfer_heatmap(
            M,
            g.result.classes,
            selection.n_examples,
            title=title if len(groups) == 1 else "",
            scale=scale,
            zrange=(lo, hi),
        )
        for g, M in zip(groups, matrices, strict=True)
    ]
    labels = [g.label for g in groups]
    caption = how_to_read(F.class_transfer_heatmap)
    caption += clipped_caption(matrices, (lo, hi), "zscale_transfer")
    return Section("Class transfer", caption, _pair(figures, labels, title))


def _distance(
    groups: Sequence[ReportGroup], distance: Callable[[ReportGroup], DistanceCurve]
) -> list[Section]:
    """The input-distance section, or none when a group has too few distinct pairs (skipped,
    as in the dashboard)."""
    curves = []
    for i, g in enumerate(groups):
        try:
            curve = distance(g)
        except CoherenceError:
            continue  # too few distinct pairs: the panel is skipped, as in the dashboard
        curves.append(
            F.distance_figure(
                curve,
                seed_labels=list(g.result.checkpoints),
                label=g.label if len(groups) > 1 else "",
                color_index=i,
                title="Influence vs input distance" if len(groups) == 1 else "",
            )
        )
    if len(curves) != len(groups):
        return []
    figure = _pair(curves, [g.label for g in groups], "Influence vs input distance")
    return [Section("Input distance", how_to_read(F.distance_figure), figure)]


def series_labels(result: AnalysisResult) -> list[str]:
    """Each (seed, batch) row of a result's [S, B, …] arrays by name: 'unet_s10,
    trajectory 3' (seeds 10 and 35 read as 'series 0' and 'series 1' before)."""
    trajectories = result.request.trajectories
    return [f"{seed}, trajectory {t}" for seed in result.checkpoints for t in trajectories]


def _ntk(groups: Sequence[ReportGroup]) -> list[Section]:
    """The NTK top-eigenvalue box and subspace spectrum, each where it was computed."""
    out = []
    tops = {g.label: g.result.top_eigenvalues for g in groups}
    with contextlib.suppress(CoherenceError):  # no top eigenvalue computed
        box = F.top_eigenvalue_figure(tops)
        out.append(Section("NTK top eigenvalue", how_to_read(F.top_eigenvalue_figure), box))
    try:
        spectrum = F.subspace_spectrum_figure(
            {g.label: g.result.subspace_spectra for g in groups},
            series_labels={g.label: series_labels(g.result) for g in groups},
        )
        out.append(Section("NTK spectrum", how_to_read(F.subspace_spectrum_figure), spectrum))
    except CoherenceError:
        pass  # an estimator without the span(G) spectrum
    return out


def _spectra(result: AnalysisResult) -> list[list[np.ndarray]] | None:
    rows = [[e[np.isfinite(e)] for e in per_batch] for per_batch in result.subspace_spectra]
    if any(e.size == 0 or not np.any(e > 0) for row in rows for e in row):
        return None
    return rows


def result_scores(result: AnalysisResult) -> Scores:
    """The §7 scores of a result's primary response (the dashboard's headline row)."""
    return compute_scores(result.H_std[result.primary], _spectra(result))


def score_table(groups: Sequence[ReportGroup]) -> dict[str, Scores]:
    """{label: the §7 scores of the group's primary response}."""
    return {g.label: result_scores(g.result) for g in groups}
