"""The static report for collaborators: one self-contained HTML file with every influence
panel of a selection as an interactive plotly figure, its caption, the headline scores with
their uncertainty and a plain-language verdict, and the provenance of every number.

Built from cached results only (never computes an analysis): the dashboard's Report button
and ``coherence report --out report.html`` call ``build_report``. plotly.js is inlined once
in the page head (no CDN, no other file), so it opens offline in any browser, without
Python. Panels that need a model run (rollout, validation) are not part of it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from coherence.analysis import figures as F
from coherence.analysis.exports import HTML_CONFIG, PAGE_STYLE, meta_table
from coherence.analysis.names import selection_tag
from coherence.analysis.pipeline import AnalysisResult
from coherence.analysis.scores import Scores, compute_scores
from coherence.analysis.summaries import (
    DistanceCurve,
    class_transfer_matrix,
    lag_curves,
    two_time_map,
)
from coherence.analysis.verdict import REFERENCES, format_score, uncertainty, verdict
from coherence.dashboard.selection import Selection
from coherence.dashboard.workspace_scan import Catalog
from coherence.errors import CoherenceError

TITLE = "Coherence Explorer report"
RESPONSE_TITLES = {"smse": "SMSE", "mass": "mass", "energy": "energy"}
TOUR = (
    "Each heatmap shows how a gradient step on one training example (column: perturbation "
    "time t_p) moves the model's error on another (row: response time t_r). A bright diagonal "
    "ridge with a dark background is memorization: each time step learns only for itself. "
    "Broad brightness off the diagonal is generalization: learning transfers across time "
    "(and, in the class-transfer matrix, across initial-condition families); the headline "
    "scores below put a number on it (diagonal dominance: 0.5 flat, 1 perfectly local)."
)


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


def how_to_read(builder: Callable) -> str:
    """The first paragraph of a figure builder's docstring without its 'Read:' prefix."""
    doc = inspect.getdoc(builder) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split()).removeprefix("Read:").strip()
    if len(text) > 1 and text[1].islower():  # a word, not a symbol such as "x = …"
        text = text[:1].upper() + text[1:]
    return text


# ---------------------------------------------------------------------- selection ------


def group_labels(catalog: Catalog, selection: Selection) -> list[str]:
    """'UNet', 'ViT' (or 'UNet (A)', 'UNet (B)' for two groups of one architecture)."""
    labels = []
    for names in selection.groups:
        group = catalog.group_of(selection.dataset, names[0]) if names else None
        labels.append(group.label if group else "group")
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{labels[0]} (A)", f"{labels[1]} (B)"]
    return labels


def selection_from_link(
    link: str | Mapping[str, Any],
    catalog: Catalog,
    *,
    cached: Callable[[Selection], bool] | None = None,
) -> tuple[Selection, list[str]]:
    """The selection of a dashboard link ('http://…/?data=…') or of its query parameters,
    with one warning per value replaced by its default (as the dashboard does)."""
    from coherence.dashboard.selection import decode_query

    params = parse_qs(urlsplit(link).query) if isinstance(link, str) else dict(link)
    selection, warnings = decode_query(params, catalog, cached=cached)
    if selection is None:
        raise ReportError(
            "this workspace has no dataset with a compatible checkpoint; run `coherence demo` "
            "or train a model first"
        )
    return selection, warnings


def cached_in(root: str | Path) -> Callable[[Selection], bool]:
    """Whether a selection's analysis (group A) is cached: lets the default selection prefer
    a computed one, as the dashboard's first page does."""
    from coherence.cache.jobs import JobRunner
    from coherence.cache.states import JobState

    runner = JobRunner(root)

    def cached(selection: Selection) -> bool:
        try:
            return runner.status(runner.key(selection.to_request(root))).state == JobState.DONE
        except (CoherenceError, OSError):
            return False

    return cached


def load_groups(
    root: str | Path, catalog: Catalog, selection: Selection
) -> tuple[ReportGroup, ...]:
    """Every group's cached result; ReportError naming the groups not computed yet."""
    from coherence.cache.jobs import JobRunner

    runner = JobRunner(root)
    groups, missing = [], []
    for label, names in zip(group_labels(catalog, selection), selection.groups, strict=True):
        request = selection.to_request(root, names)
        key = runner.key(request)
        result = runner.result(key, request)
        if result is None:
            missing.append(label)
        else:
            groups.append(ReportGroup(label, key, result))
    if missing:
        raise ReportError(
            f"the selection is not computed yet for {', '.join(missing)}: press Compute in "
            "the dashboard for this link, or run `coherence analyze` with the same options, "
            "then build the report again"
        )
    return tuple(groups)


def distance_from_inputs(group: ReportGroup) -> DistanceCurve:
    """The distance curve from the request's batches (read from the dataset files)."""
    from coherence.analysis.pipeline import prepare
    from coherence.analysis.summaries import influence_vs_distance

    _, batches = prepare(group.result.request)
    inputs = np.stack([b.inputs.double().numpy() for b in batches])
    return influence_vs_distance(group.result.H_std[group.result.primary], inputs)


# ------------------------------------------------------------------------ figures ------


def _pair(figures: list[go.Figure], labels: list[str], title: str, zrange=None) -> go.Figure:
    if len(figures) == 1:
        return figures[0]
    return F.side_by_side(figures[0], figures[1], tuple(labels), zrange=zrange, title=title)


def _two_time(
    groups: Sequence[ReportGroup], selection: Selection, response: str, scale: str
) -> list[Section]:
    symbol = "Ĥ" if response == groups[0].result.primary else f"Ĥ_{response}"
    maps = [two_time_map(g.result.H_std[response]) for g in groups]
    lo, hi, _ = F.heatmap_scale(scale, np.stack(maps), selection.n_examples)
    name = RESPONSE_TITLES.get(response, response)
    title = f"Two-time influence ({name}), intra-class mean"
    figures = [
        F.two_time_heatmap(
            V,
            g.result.times,
            selection.n_examples,
            title=title if len(groups) == 1 else "",
            value_label=symbol,
            steps=g.result.steps,
            scale=scale,
            zrange=(lo, hi),
        )
        for g, V in zip(groups, maps, strict=True)
    ]
    labels = [g.label for g in groups]
    sections = [
        Section(title, how_to_read(F.two_time_heatmap), _pair(figures, labels, title, (lo, hi)))
    ]
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


def sections(
    groups: Sequence[ReportGroup],
    selection: Selection,
    *,
    distance: Callable[[ReportGroup], DistanceCurve] | None = distance_from_inputs,
    scale: str = "paper",
) -> list[Section]:
    """Every influence panel of the selection, in the dashboard's tab order."""
    if not groups:
        raise ReportError("no computed group to report on")
    labels = [g.label for g in groups]
    primary = groups[0].result.primary
    out = _two_time(groups, selection, primary, scale)

    matrices = [class_transfer_matrix(g.result.H_std[primary]) for g in groups]
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
    out.append(
        Section(
            "Class transfer", how_to_read(F.class_transfer_heatmap), _pair(figures, labels, title)
        )
    )

    lag = F.lag_curves_figure(
        [(g.label, lag_curves(g.result.H_std[primary])) for g in groups],
        title="Influence vs time lag",
    )
    out.append(Section("Time lag", how_to_read(F.lag_curves_figure), lag))

    if distance is not None:
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
        if len(curves) == len(groups):
            figure = _pair(curves, labels, "Influence vs input distance")
            out.append(Section("Input distance", how_to_read(F.distance_figure), figure))

    tops = {g.label: g.result.top_eigenvalues for g in groups}
    with contextlib.suppress(CoherenceError):  # no top eigenvalue computed
        box = F.top_eigenvalue_box(tops)
        out.append(Section("NTK top eigenvalue", how_to_read(F.top_eigenvalue_box), box))
    try:
        spectrum = F.subspace_spectrum_figure({g.label: g.result.subspace_spectra for g in groups})
        out.append(Section("NTK spectrum", how_to_read(F.subspace_spectrum_figure), spectrum))
    except CoherenceError:
        pass  # not the subspace estimator

    for response in ("mass", "energy"):
        if all(response in g.result.H_std for g in groups) and response != primary:
            out += _two_time(groups, selection, response, scale)[:1]

    table = F.scores_table(score_table(groups))
    out.append(Section("Scores", how_to_read(F.scores_table), table))
    return out


def _spectra(result: AnalysisResult) -> list[list[np.ndarray]] | None:
    rows = [[e[np.isfinite(e)] for e in per_batch] for per_batch in result.subspace_spectra]
    if any(e.size == 0 or not np.any(e > 0) for row in rows for e in row):
        return None
    return rows


def score_table(groups: Sequence[ReportGroup]) -> dict[str, Scores]:
    """{label: the §7 scores of the group's primary response}."""
    return {
        g.label: compute_scores(g.result.H_std[g.result.primary], _spectra(g.result))
        for g in groups
    }


# ---------------------------------------------------------------------- provenance -----


def provenance(selection: Selection, groups: Sequence[ReportGroup]) -> dict[str, Any]:
    """Where every number came from: the selection's parameters and each group's cache key,
    checkpoints, device and dataset fingerprint."""
    meta: dict[str, Any] = {
        "dataset": selection.dataset,
        "classes": list(selection.classes),
        "test trajectories (batches)": list(selection.trajectories),
        "window": f"transitions {selection.t_start}…{selection.t_start + selection.n_steps - 1}"
        f" (T = {selection.n_steps}, N = {selection.n_examples})",
        "responses": list(selection.responses),
        "estimator": selection.estimator,
        "damping λ": selection.damping,
    }
    if selection.rtol is not None:
        meta["cg rtol"] = selection.rtol
    for g in groups:
        meta[f"{g.label}: checkpoints"] = list(g.result.checkpoints)
        meta[f"{g.label}: cache key"] = g.key
        info = g.result.provenance
        meta[f"{g.label}: computed on"] = str(info.get("device", "?"))
        fingerprint = info.get("dataset_fingerprint")
        if fingerprint:
            meta[f"{g.label}: dataset fingerprint"] = str(fingerprint)[:16]
    return meta


# -------------------------------------------------------------------------- HTML -------


def _headline(groups: Sequence[ReportGroup], scores: Mapping[str, Scores]) -> str:
    rows = []
    for g in groups:
        table = {s.name: s for s in scores[g.label].as_list()}
        cells = "".join(
            f"<td><b>{html.escape(format_score(table.get(r.name)))}</b><br>"
            f"<small>{html.escape(uncertainty(table.get(r.name)))}<br>"
            f"{html.escape(r.marks)}</small></td>"
            for r in REFERENCES
        )
        rows.append(
            f"<tr><th>{html.escape(g.label)}<br><small>{len(g.result.checkpoints)} "
            f"seed{'s' if len(g.result.checkpoints) != 1 else ''}</small></th>{cells}"
            f"<td class='verdict'>{html.escape(verdict(scores[g.label]))}</td></tr>"
        )
    head = "".join(f"<th>{html.escape(r.title)}</th>" for r in REFERENCES)
    return (
        "<table class='meta headline'><tr><th>group</th>"
        f"{head}<th>reading</th></tr>{''.join(rows)}</table>"
    )


def render_html(
    selection: Selection,
    groups: Sequence[ReportGroup],
    parts: Sequence[Section],
    *,
    title: str = TITLE,
    link: str = "",
) -> bytes:
    """The report page: plotly.js once in <head>, then every section's figure div."""
    scores = score_table(groups)
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='caption'>{html.escape(selection.dataset)} · "
        f"{html.escape(' vs '.join(g.label for g in groups))} · generated {when}</p>",
        f"<p class='caption'>{html.escape(TOUR)}</p>",
        "<h2>Headline scores (median, Q1–Q3 over seeds × batches)</h2>",
        _headline(groups, scores),
    ]
    for i, part in enumerate(parts):
        div = pio.to_html(
            part.figure,
            include_plotlyjs=False,
            full_html=False,
            config=HTML_CONFIG,
            div_id=f"figure-{i}",
        )
        body += [
            f"<section class='figure'><h2>{html.escape(part.title)}</h2>",
            f"<p class='caption'>{html.escape(part.caption)}</p>{div}</section>",
        ]
    meta = provenance(selection, groups)
    if link:
        meta["dashboard link"] = link
    body.append("<h2>Provenance</h2>" + meta_table(meta, heading="Parameters and provenance"))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}"
        ".headline td{min-width:120px}.verdict{max-width:260px}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return page.encode()


def build_report(
    root: str | Path,
    catalog: Catalog,
    selection: Selection,
    *,
    groups: Sequence[ReportGroup] | None = None,
    distance: Callable[[ReportGroup], DistanceCurve] | None = distance_from_inputs,
    link: str = "",
) -> bytes:
    """The report of ``selection`` from the cache (``groups`` when the caller has them)."""
    groups = tuple(groups) if groups is not None else load_groups(root, catalog, selection)
    return render_html(selection, groups, sections(groups, selection, distance=distance), link=link)


def report_name(selection: Selection) -> str:
    """A file name that encodes the selection: <dataset>_<window>_<estimator>_…_report.html."""
    return f"{selection_tag(selection)}_report.html"
