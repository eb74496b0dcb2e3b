"""The static report for collaborators: one self-contained HTML file with every influence
panel of a selection as an interactive plotly figure, its caption, the headline scores with
their uncertainty and a plain-language verdict, and the provenance of every number.

Built from cached results only (never computes an analysis): the dashboard's Report button
and ``coherence report --out report.html`` call ``build_report``. plotly.js is inlined once
in the page head (no CDN, no other file), so it opens offline in any browser, without
Python. Panels that need a model run (rollout, validation) are not part of it; the Training
dynamics and Sensitivity sweeps are, where their points are cached. The panels themselves are
built in ``coherence.report_panels`` (re-exported here) and ``coherence.report_sweeps``.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from coherence.analysis.diagnostics import residual_summary, result_warnings
from coherence.analysis.distance import DistanceCurve
from coherence.analysis.exports import HTML_CONFIG, PAGE_STYLE, meta_table
from coherence.analysis.figures.theme import SCALES
from coherence.analysis.names import groups_tag, selection_tag
from coherence.analysis.scores import Scores
from coherence.analysis.verdict import (
    REFERENCES,
    caveat_line,
    format_score,
    response_note,
    result_caveats,
    score_peers,
    uncertainty,
    verdict,
)
from coherence.errors import CoherenceError
from coherence.report_panels import (
    RESPONSE_TITLES,
    ReportError,
    ReportGroup,
    Section,
    distance_from_inputs,
    how_to_read,
    link_value,
    score_table,
    sections,
)
from coherence.report_sweeps import LeftOut, sweep_sections
from coherence.wording import TEST_DATA_FINGERPRINT, demo_command, shell_command

if TYPE_CHECKING:  # both import torch (via the request); the report only reads results
    from coherence.cache.jobs import JobRunner
    from coherence.dashboard.selection import Selection
    from coherence.dashboard.workspace_scan import Catalog

__all__ = [  # what callers import from here, the panels' names included
    "RESPONSE_TITLES",
    "TITLE",
    "TOUR",
    "Report",
    "ReportError",
    "ReportGroup",
    "Section",
    "build_report",
    "cached_in",
    "data_sources",
    "distance_from_inputs",
    "group_labels",
    "how_to_read",
    "load_groups",
    "provenance",
    "render_html",
    "report_name",
    "score_table",
    "sections",
    "selection_from_link",
    "unknown_params",
]

TITLE = "Coherence Explorer report"
TOUR = (
    "Each heatmap shows how a gradient step on one training example (column: perturbation "
    "time t_p) moves the model's error on another (row: response time t_r). A bright diagonal "
    "ridge with a dark background is memorization: each time step learns only for itself. "
    "Broad brightness off the diagonal is generalization: learning transfers across time "
    "(and, in the class-transfer matrix, across initial-condition families); the headline "
    "scores below put a number on it (diagonal dominance: 0.5 flat, 1 perfectly local)."
)


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
    # cuda_available: a link from a GPU session names device=cuda; the report computes
    # nothing and the device is no part of a result's key, so it reads that link anywhere
    selection, warnings = decode_query(params, catalog, cuda_available=True, cached=cached)
    if selection is None:
        raise ReportError(
            "this workspace has no dataset with a compatible checkpoint; run "
            f"`{demo_command(catalog.root)}` or train a "
            "model first"
        )
    return replace(selection, device="auto"), warnings


SCALE_PREFIX = "zscale_"  # a heatmap panel's colour scale in a dashboard link: zscale_<panel>


def used_link(link: str, selection: Selection, params: Mapping[str, Any]) -> str:
    """The dashboard link of the view a report drew, for its provenance: the selection as
    used and the link's panel choices, on the link's own address. The given link had been
    written there as typed, so a --param override (or a key repeated in the link) left a row
    that opened another view than the report's."""
    from coherence.dashboard.controls import QUERY_KEYS

    query = dict(selection.to_query())
    for key in _link_keys():  # the open tab and the panels' choices, as the report read them
        if key not in (*QUERY_KEYS, "embed", "embed_options") and params.get(key):
            query[key] = str(link_value(params, key))
    base = link.split("?", 1)[0] if "://" in link else ""
    return f"{base}?{urlencode(query)}"


# keys some sites append to a shared link (utm_source, fbclid, …): not the user's spelling
TRACKING_PREFIXES = ("utm_", "fbclid", "gclid", "mc_")


# words a link's author may use for a key: named as that key
ALIASES = {"lambda": "damping", "lamda": "damping", "lam": "damping", "tab": "panel"}
ALIASES |= {"view": "panel", "page": "panel"}


def _link_keys() -> list[str]:
    from coherence.dashboard.controls import QUERY_KEYS
    from coherence.dashboard.panel_links import PANEL_PARAMS

    page_keys = ("panel", "embed", "embed_options")  # the open tab (page.py), Streamlit's
    return [*QUERY_KEYS, *page_keys, *(key for keys in PANEL_PARAMS.values() for key in keys)]


def ignored_keys(params: Mapping[str, Any]) -> list[str]:
    """The keys of a link that no page reads (a tracker's utm_… excepted): warned about by
    ``unknown_params``, and left out of the link the page then shows."""
    known = _link_keys()
    return [k for k in params if k not in known and not k.startswith(TRACKING_PREFIXES)]


def unknown_params(params: Mapping[str, Any]) -> list[str]:
    """A warning per key of a link that the dashboard does not know (a misspelled ``lamda``
    was ignored without a word, and the report showed the default damping), with its likely
    spelling; where some key has none, one more line lists every key a link may hold."""
    import difflib

    from coherence.dashboard.controls import QUERY_KEYS

    known = _link_keys()
    warnings, unmatched = [], False
    for key in ignored_keys(params):
        close = [ALIASES[key.lower()]] if key.lower() in ALIASES else []
        close = close or difflib.get_close_matches(key, known, n=1)
        unmatched |= not close
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.append(f"{key!r} is no parameter of a dashboard link{hint}; ignored")
    if unmatched:
        warnings.append(_known_keys(QUERY_KEYS))
    return warnings


def _known_keys(selection_keys: Sequence[str]) -> str:
    """Every key a link may hold: the selection's, the open tab's and each tab's own (``tab=``
    was answered with the selection's keys alone)."""
    from coherence.dashboard.panel_links import PANEL_PARAMS

    own = "; ".join(f"{tab}: {', '.join(keys)}" for tab, keys in PANEL_PARAMS.items())
    return (
        f"a link's keys: {', '.join(selection_keys)}; panel (the open tab, by its label); "
        f"each tab's own ({own})"
    )


# tabs whose figures the report does not hold (it holds the selection's influence panels and,
# where cached, the Training dynamics and Sensitivity sweeps: report_sweeps)
NOT_IN_REPORT = ("Overview", "Rollout", "Validation")
# said in every report: a reader looked for the rollouts there (a walkthrough)
ON_DEMAND_TABS = (
    f"{', '.join(NOT_IN_REPORT)}: the dashboard's tabs of the data and of model runs "
    "(rollouts, the counterfactual check), drawn there on demand"
)


def unknown_panel(params: Mapping[str, Any]) -> list[str]:
    """A warning when a link's ``panel`` names no tab (``panel=Sensitivty`` opened the
    default tab without a word)."""
    import difflib

    from coherence.dashboard.panel_links import DEFAULT_PANEL, PANEL_LABELS

    panel = link_value(params, "panel")
    if panel is None or panel in PANEL_LABELS:
        return []
    close = difflib.get_close_matches(panel, PANEL_LABELS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"tabs: {', '.join(PANEL_LABELS)}"
    return [f"panel={panel!r}: no such tab ({hint}); using {DEFAULT_PANEL!r} instead"]


def panel_value_problems(params: Mapping[str, Any], selection: Selection) -> list[str]:
    """``unknown_panel``, a two-time or Conservation class pair or a seed the tab does not
    offer, and an overlay λ that the Training dynamics panel does not offer (the dashboard
    says these when the panel opens)."""
    import math

    from coherence.dashboard.sweeps import DAMPING_GRID
    from coherence.report_panels import pair_problem, two_time_view_problems

    problems = unknown_panel(params)
    seed = link_value(params, "two_time_seed") if len(selection.groups) == 1 else None
    problems += two_time_view_problems(
        link_value(params, "two_time_pair"), seed, selection.classes, selection.checkpoints
    )
    problems += pair_problem("cons_pair", link_value(params, "cons_pair"), selection.classes)
    axis = link_value(params, "lag_y")
    if axis is not None and axis != lag_axis(params):
        from coherence.analysis.figures import LAG_AXES

        problems.append(
            f"lag_y={axis!r}: not a y axis of the Time lag tab ({', '.join(LAG_AXES)}); "
            "using whole instead"
        )
    damping = selection.damping
    offered = [f"{d:g}" for d in DAMPING_GRID if not math.isclose(d, damping)]
    overlay = link_value(params, "dyn_vs_damping")
    if overlay not in (None, "none", *offered):
        problems.append(
            f"dyn_vs_damping={overlay!r}: not an overlay λ the Training dynamics panel offers "
            f"({', '.join(offered)}); using none instead"
        )
    return problems


def two_time_view(params: Mapping[str, Any], selection: Selection) -> tuple[str, str]:
    """The two-time tab's (class pair, seed) a link names, its default view where it names
    none or one the tab would not offer (``panel_value_problems`` says which)."""
    from coherence.report_panels import INTRA, SEED_MEAN, two_time_view_problems

    pair, seed = link_value(params, "two_time_pair"), link_value(params, "two_time_seed")
    if two_time_view_problems(pair, None, selection.classes, selection.checkpoints):
        pair = None
    compare = len(selection.groups) > 1  # the tab offers no seed there: the seed mean
    if compare or two_time_view_problems(None, seed, selection.classes, selection.checkpoints):
        seed = None
    return pair or INTRA, seed or SEED_MEAN


def conservation_pair(params: Mapping[str, Any], selection: Selection) -> str:
    """The Conservation tab's class pair a link names; intra where it names none or one the
    tab would not offer (``panel_value_problems`` says which)."""
    from coherence.report_panels import INTRA, pair_problem

    pair = link_value(params, "cons_pair")
    return INTRA if pair is None or pair_problem("cons_pair", pair, selection.classes) else pair


def lag_axis(params: Mapping[str, Any]) -> str:
    """The Time lag tab's y axis a link names (``lag_y``); the whole curve where it names
    none or one the tab does not offer (``panel_value_problems`` says which)."""
    from coherence.analysis.figures import LAG_AXES

    axis = link_value(params, "lag_y")
    return axis if axis in LAG_AXES else "whole"


def scales_from_params(params: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Each heatmap panel's colour scale that a link names (``zscale_two_time``,
    ``zscale_transfer``, ``zscale_mass``, ``zscale_energy``; 'paper' where it names none),
    with a warning per one that does not exist."""
    from coherence.report_panels import HEATMAP_PANELS

    scales, warnings = {}, []
    for panel in HEATMAP_PANELS:
        key = f"{SCALE_PREFIX}{panel}"
        value = link_value(params, key) or "paper"
        if value not in SCALES:
            warnings.append(f"{key}={value!r}: not a colour scale ({', '.join(SCALES)})")
            value = "paper"
        scales[panel] = value
    return scales, warnings


def cached_in(root: str | Path, runner: JobRunner | None = None) -> Callable[[Selection], bool]:
    """Whether a selection's analysis (group A) shows without computing (cached, or its
    units all cached): lets the default selection prefer a computed one, here and on the
    dashboard's first page. ``runner``: the caller's own (the dashboard keeps one per
    workspace); a selection whose request cannot even be keyed (a file vanished, a bad
    checkpoint) is not cached."""
    from coherence.cache.jobs import JobRunner

    runner = runner or JobRunner(root)

    def cached(selection: Selection) -> bool:
        try:
            return runner.available(selection.to_request(root))
        except (CoherenceError, OSError):
            return False

    return cached


def load_groups(
    root: str | Path, catalog: Catalog, selection: Selection
) -> tuple[ReportGroup, ...]:
    """Every group's cached result, or one assembled from the cached units of a larger
    selection (fewer seeds, batches or responses), as the dashboard shows it; ReportError
    naming the groups not computed yet."""
    from coherence.cache.jobs import JobRunner
    from coherence.dashboard.selection import describe

    runner = JobRunner(root)
    groups, missing, commands = [], [], []
    for label, names in zip(group_labels(catalog, selection), selection.groups, strict=True):
        request = selection.to_request(root, names)
        key = runner.key(request)
        result = runner.materialize(request)
        if result is None:
            missing.append(label)
            commands.append(analyze_command(selection, names, root))
        else:
            groups.append(ReportGroup(label, key, result))
    if missing:
        # the selection in full, and the command that computes it: the options' names alone
        # left out --data and --checkpoint (a walkthrough with imported data)
        raise ReportError(
            f"the selection is not computed yet for {', '.join(missing)} "
            f"({selection.dataset}: {describe(selection)}; classes "
            f"{','.join(selection.classes)}, window {selection.t_start}:{selection.n_steps}, "
            f"responses {','.join(str(r) for r in selection.responses)}): press Compute in "
            f"the dashboard on this selection, or run {' and '.join(commands)} (the result lands "
            "in the workspace's cache), then build the report again"
        )
    return tuple(groups)


def analyze_command(selection: Selection, names: Sequence[str], root: str | Path) -> str:
    """The `coherence analyze` command that computes one group of ``selection`` (names as
    the workspace holds them; a snapshot as name/epochs/NNNN) into the cache of the
    workspace ``root``, in backquotes (without --workspace, pasted elsewhere it looked in
    ./workspace and refused the names)."""
    epoch = f"/epochs/{selection.epoch:04d}" if selection.epoch else ""
    words = ["coherence", "analyze", "--workspace", str(root), "--data", selection.dataset]
    for name in names:
        words += ["--checkpoint", f"{name}{epoch}"]
    words += ["--classes", ",".join(selection.classes)]
    words += ["--window", f"{selection.t_start}:{selection.n_steps}"]
    words += ["--trajectories", ",".join(map(str, selection.trajectories))]
    for response in selection.responses:
        words += ["--response", str(response)]
    words += ["--estimator", selection.estimator]
    if selection.estimator != "euclidean":
        words += ["--damping", f"{selection.damping:g}"]
    if selection.depth is not None:
        words += ["--depth", str(selection.depth)]
    if selection.rtol is not None:
        words += ["--rtol", f"{selection.rtol:g}"]
    words += ["--out", "result.npz"]
    return f"`{shell_command(*words)}`"


# ---------------------------------------------------------------------- provenance -----


def provenance(selection: Selection, groups: Sequence[ReportGroup]) -> dict[str, Any]:
    """Where every number came from: the selection's parameters and each group's cache key,
    checkpoints, device and the test-data fingerprint."""
    meta: dict[str, Any] = {
        "dataset": selection.dataset,
        "classes": list(selection.classes),
        "test trajectories (batches)": list(selection.trajectories),
        # as the sidebar's slider and the export names give it (snapshots), then what it means
        "window": f"snapshots {selection.t_start}–{selection.t_start + selection.n_steps}: "
        f"transitions {selection.t_start}…{selection.t_start + selection.n_steps - 1} "
        f"(T = {selection.n_steps}, N = {selection.n_examples})",
        "responses": list(selection.responses),
        "estimator": selection.estimator,
        "damping λ": selection.damping,
    }
    if selection.estimator == "euclidean":  # M = I: a λ here read as if it mattered
        meta["damping λ"] = "not used (euclidean: M = I)"
    if selection.rtol is not None:
        meta["cg rtol"] = selection.rtol
    if selection.resolved_depth is not None:
        meta["Krylov depth"] = selection.resolved_depth
    meta["weights"] = (  # an export before any result is ready names them too
        "final (the checkpoints' own)"
        if selection.epoch is None
        else f"epoch {selection.epoch} (training snapshots epochs/{selection.epoch:04d})"
    )
    for g in groups:
        meta[f"{g.label}: checkpoints"] = list(g.result.checkpoints)
        meta[f"{g.label}: cache key"] = g.key
        info = g.result.provenance
        meta[f"{g.label}: computed on"] = str(info.get("device", "?"))
        fingerprint = info.get("dataset_fingerprint")
        if fingerprint:
            # of the analysed files (the classes' test split): two class sets, two prints
            meta[f"{g.label}: {TEST_DATA_FINGERPRINT}"] = str(fingerprint)[:16]
    return meta


SOURCE_ATTRIBUTES = (("source", ""), ("licence", "licence "), ("split_rule", "split: "))


def data_sources(root: str | Path, selection: Selection) -> dict[str, str]:
    """Where the selection's data came from, as imported files record it (source, licence,
    split rule; read from the first split a class has), one row per class: a report is sent
    on, and a CC-BY-NC licence or a split that is not the published test set must travel
    with its figures. Simulated data records none: it gets no row, or, beside imported
    classes, one that says so."""
    import h5py

    from coherence.simulation.dataset import open_dataset
    from coherence.workspace import datasets_dir, resolve_inside, workspace_root

    try:
        info = open_dataset(resolve_inside(datasets_dir(workspace_root(root)), selection.dataset))
    except (CoherenceError, OSError):
        return {}
    out = {}
    for name in selection.classes:
        split = next((x for x in ("test", "valid", "train") if name in info.files.get(x, {})), "")
        try:
            with h5py.File(info.file(split, name).path, "r") as f:
                found = [(label, f.attrs.get(key)) for key, label in SOURCE_ATTRIBUTES]
        except (CoherenceError, OSError):
            continue
        parts = [
            label + (value.decode() if isinstance(value, bytes) else str(value))
            for label, value in found
            if value is not None
        ]
        out[f"data source ({name})"] = " · ".join(parts) or "none recorded (simulated here)"
    if all(value.startswith("none recorded") for value in out.values()):
        return {}  # simulated data throughout: nothing to say beside the dataset's name
    return out


# -------------------------------------------------------------------------- HTML -------


def _headline(groups: Sequence[ReportGroup], scores: Mapping[str, Scores]) -> str:
    rows = []
    for g in groups:
        table = {s.name: s for s in scores[g.label].as_list()}
        peers = score_peers(scores, g.label)
        other = response_note(g.result.primary)
        note = f"<br><small><b>{html.escape(other)}</b></small>" if other else ""
        if care := caveat_line(result_caveats(g.result)):
            note += f"<br><small class='care'>{html.escape(care)}</small>"
        cells = "".join(
            f"<td><b>{html.escape(format_score(table.get(r.name), peers[r.name]))}</b><br>"
            f"<small>{html.escape(uncertainty(table.get(r.name), peers[r.name]))}<br>"
            f"{html.escape(r.marks)}</small></td>"
            for r in REFERENCES
        )
        rows.append(
            f"<tr><th>{html.escape(g.label)}<br><small>{len(g.result.checkpoints)} "
            f"seed{'s' if len(g.result.checkpoints) != 1 else ''}</small></th>{cells}"
            f"<td class='verdict'>{html.escape(verdict(scores[g.label]))}{note}</td></tr>"
        )
    head = "".join(f"<th>{html.escape(r.title)}</th>" for r in REFERENCES)
    return (
        "<table class='meta headline'><tr><th>group</th>"
        f"{head}<th>reading</th></tr>{''.join(rows)}</table>"
    )


def _table_html(figure: go.Figure) -> str | None:
    """A figure that is one plotly table (the score table), as an HTML table; None for any
    other figure. Text copied from plotly's table lost the spaces at its line breaks (each
    line is an SVG text of its own), and the browser's search did not find its words."""
    if len(figure.data) != 1 or figure.data[0].type != "table":
        return None
    trace = figure.data[0]
    head = "".join(
        f"<th>{html.escape(re.sub(r'</?b>', '', str(h)))}</th>" for h in trace.header.values
    )
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in zip(*trace.cells.values, strict=True)
    )
    return f"<table class='meta scores'><tr>{head}</tr>{rows}</table>"


def render_html(
    selection: Selection,
    groups: Sequence[ReportGroup],
    parts: Sequence[Section],
    *,
    title: str = TITLE,
    link: str = "",
    scales: Mapping[str, str] | None = None,
    left_out: Sequence[str] = (),
    more_provenance: Mapping[str, Any] | None = None,
    arches: Mapping[str, str] | None = None,
) -> bytes:
    """The report page: plotly.js once in <head>, then every section's figure div;
    ``left_out``: the sections it does not hold and why (said under the headline, so the
    reader knows before scrolling), ``more_provenance``: rows for the sweeps' points,
    ``arches``: {group label: architecture}, whose paper tolerance the residual line quotes."""
    from coherence.dashboard.selection import describe

    scores = score_table(groups)
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # what was analysed, under the title and in the browser's tab, as the dashboard says it
    # under its own: reports at two λ or epochs differed only in the provenance at the foot
    first, last = selection.t_start, selection.t_start + selection.n_steps
    covers = f"{describe(selection)}, window snapshots {first}–{last}"
    named = f"{selection.dataset} · {' vs '.join(g.label for g in groups)}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='caption'><b>{html.escape(named)}</b> · {html.escape(covers)} · "
        f"generated {when}</p>",
        f"<p class='caption'>{html.escape(TOUR)}</p>",
        "<h2>Headline scores (median, Q1–Q3 across seeds, each seed's batches averaged)</h2>",
        _headline(groups, scores),
    ]
    body += [  # unconverged solves: said here as on the dashboard, never silent
        f"<p class='caption'><b>{html.escape(g.label)}: {html.escape(warning)}</b></p>"
        for g in groups
        for warning in result_warnings(
            g.result.diagnostics, g.result.checkpoints, g.result.request.trajectories
        )
    ]
    body += [  # how far each solve is from the full one: the dashboard says it above its
        # tabs, and a reader of the file alone had no word of it (a walkthrough)
        f"<p class='caption'>{html.escape(g.label)}: {html.escape(line)}</p>"
        for g in groups
        if (line := residual_summary(g.result.diagnostics, arch=(arches or {}).get(g.label)))
    ]
    if left_out:
        items = "".join(f"<li>{html.escape(text)}</li>" for text in left_out)
        body.append(f"<p class='caption'><b>Not in this report:</b></p><ul>{items}</ul>")
    for i, part in enumerate(parts):
        figure = part.figure
        if (figure.layout.title.text or "").strip() == part.title.strip():
            # the section's heading says it: the same words inside the plot only repeat it
            figure = go.Figure(figure).update_layout(title_text="", margin_t=30)
        div = _table_html(figure) or pio.to_html(
            figure,
            include_plotlyjs=False,
            full_html=False,
            config=HTML_CONFIG,
            div_id=f"figure-{i}",
        )
        body += [
            f"<section class='figure'><h2>{html.escape(part.title)}</h2>",
            f"<p class='caption'>{html.escape(part.caption)}</p>{div}</section>",
        ]
    meta = provenance(selection, groups) | dict(more_provenance or {})
    shown = ["two_time", "transfer"] + [  # the conservation maps where the report has them
        r for r in ("mass", "energy") if all(r in g.result.H_std for g in groups)
    ]
    meta["colour scales of the heatmaps"] = _scales_text(scales or {}, shown)
    if link:
        meta["dashboard link"] = link
    body.append("<h2>Provenance</h2>" + meta_table(meta, heading="Parameters and provenance"))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(f'{title}: {named}, {covers}')}</title><style>{PAGE_STYLE}"
        ".headline td{min-width:120px}.verdict{max-width:260px}.care{color:#b45309}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return page.encode()


@dataclass(frozen=True)
class Report:
    """A built report: the page, the sweep sections it leaves out (why, and what to
    compute), and the link's sweep choices that name nothing cached (the CLI refuses them,
    as it refuses any value the dashboard would replace)."""

    page: bytes
    left_out: tuple[LeftOut, ...]
    link_problems: tuple[str, ...]


def build_report(
    root: str | Path,
    catalog: Catalog,
    selection: Selection,
    *,
    groups: Sequence[ReportGroup] | None = None,
    distance: Callable[[ReportGroup], DistanceCurve] | None = distance_from_inputs,
    link: str = "",
    scales: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Report:
    """The report of ``selection`` from the cache (``groups`` when the caller has them):
    its influence panels, then the Training dynamics and Sensitivity sweeps where cached,
    in the dashboard's tab order (the scores table last). ``scales``: each heatmap panel's
    colour scale (``report_panels.HEATMAP_PANELS`` → figures.SCALES), ``link``: the
    dashboard view it comes from (both in the provenance), ``params``: the link's panel
    choices (``dyn_vs_damping``, ``sens_pair``, ``two_time_pair``, ``two_time_seed``,
    ``cons_pair``)."""
    groups = tuple(groups) if groups is not None else load_groups(root, catalog, selection)
    view = two_time_view(params or {}, selection)
    parts = sections(
        groups,
        selection,
        distance=distance,
        scales=scales,
        view=view,
        conservation_pair=conservation_pair(params or {}, selection),
        lag_axis=lag_axis(params or {}),
    )
    swept = sweep_sections(root, catalog, selection, group_labels(catalog, selection), params)
    scores = [i for i, part in enumerate(parts) if part.title == "Scores"]
    at = scores[0] if scores else len(parts)  # the dashboard's last tab, after the sweeps
    parts = parts[:at] + swept.sections + parts[at:]
    page = render_html(
        selection,
        groups,
        parts,
        link=link,
        scales=scales,
        left_out=[item.page_text for item in swept.left_out] + [ON_DEMAND_TABS],
        more_provenance=data_sources(root, selection) | swept.provenance,
        arches={  # whose paper tolerance each residual line quotes
            label: arch
            for label, names in zip(group_labels(catalog, selection), selection.groups, strict=True)
            if (arch := catalog.arch_of(names))
        },
    )
    return Report(page, tuple(swept.left_out), tuple(swept.link_problems))


def _scales_text(scales: Mapping[str, str], panels: Sequence[str]) -> str:
    """'two-time: paper [0, √N]; class transfer: auto; …' for the provenance, for the
    heatmap ``panels`` the report holds."""
    names = {"two_time": "two-time", "transfer": "class transfer"}
    return "; ".join(
        f"{names.get(p, p)}: {SCALES.get(scales.get(p, 'paper'), scales.get(p))}" for p in panels
    )


def report_name(selection: Selection, groups: Sequence[str] = ()) -> str:
    """A file name that encodes the selection and its model groups (``groups``, their
    labels): <dataset>_<window>_<estimator>_…_UNet_report.html (compare: UNet-vs-ViT), as
    the dashboard's downloads are named (two groups' reports differed by a hash alone)."""
    return "_".join([selection_tag(selection), *([groups_tag(groups)] if groups else [])]) + (
        "_report.html"
    )
