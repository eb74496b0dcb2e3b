"""Panel 10 (METHOD.md §7): scalar coherence scores with their definitions, per group; and
above the tabs: the first-visit tour, each group's verdict and headline metrics (with units
and reference marks), and the one-click report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from coherence.analysis.exports import scores_csv
from coherence.analysis.figures import score_rows, scores_table
from coherence.analysis.scores import DEFINITIONS, Score, Scores
from coherence.analysis.verdict import (
    REFERENCES,
    caveat_line,
    format_score,
    quartile_band,
    response_note,
    result_caveats,
    score_peers,
    uncertainty,
    verdict,
)
from coherence.dashboard import loaders
from coherence.dashboard.controls import QUERY_KEYS
from coherence.dashboard.markup import literal
from coherence.dashboard.panel_links import kept_choice
from coherence.dashboard.panels.common import PanelContext, downloads, how_to_read, need_results
from coherence.dashboard.selection import Selection
from coherence.report import ReportGroup, build_report, report_name
from coherence.report_panels import HEATMAP_PANELS

TOUR_KEY = "tour_dismissed"
TOUR_SHOWN = "tour_shown_in_panel"  # this run's open panel showed the tour (two-time map)
# three sentences for a narrow column, beside the two-time map or in the sidebar (at a
# 1024 px window the column is about 150 px wide, and a longer text stood 700 px tall there)
TOUR = (
    "**What am I looking at?** Each cell: how a gradient step at one time (column) moves "
    "the error at another (row). A bright **diagonal ridge** is **memorization**; **broad "
    "brightness** is **generalization**. The scores over the tabs read it: diagonal dominance "
    "1 = local, 0.5 = flat."
)


def scores(ctx: PanelContext) -> None:
    """The score table (median [Q1, Q3] across seeds) and each definition."""
    st.caption(
        "One number per (seed, batch); each seed's batches are averaged, then summarized as "
        "median [Q1, Q3] across seeds (one checkpoint: across its batches); compare groups "
        "across a row. The paper reports only figures: these make runs comparable in a table."
    )
    if not need_results(ctx):
        return
    by_group = {g.label: loaders.scores(g.key, g.result) for g in ctx.ready}
    for group in ctx.ready:
        if note := response_note(group.result.primary):
            st.info(literal(f"{group.label}: {note}"))
    header, rows = score_rows(by_group)
    st.table([dict(zip(header, row, strict=True)) for row in rows])  # wraps the definitions
    figure = scores_table(by_group)  # the same table as a figure, for the HTML download
    downloads(
        "scores",
        ctx.stem("scores"),
        figure=figure,
        caption=how_to_read(scores_table),
        meta=ctx.meta(),
        files=[ctx.panel_csv("scores", lambda: scores_csv(by_group))],
        what="Table",  # the figure draws the table above, and nothing else
    )


TOUR_COOKIE = "coherence_tour"  # "off" once dismissed in this browser


def _dismiss_tour() -> None:
    st.session_state[TOUR_KEY] = True


def tour_dismissed() -> bool:
    """Dismissed in this session, or earlier in this browser (a cookie: the tour is for a
    first visit, not for every reload)."""
    return bool(st.session_state.get(TOUR_KEY)) or st.context.cookies.get(TOUR_COOKIE) == "off"


def remember_tour_dismissal() -> None:
    """Once dismissed in this session, set the browser's cookie (once): later visits from
    this browser open without the tour. A link shared with a collaborator still shows it."""
    dismissed_now = st.session_state.get(TOUR_KEY) and not st.session_state.get("tour_cookie")
    if dismissed_now and st.context.cookies.get(TOUR_COOKIE) != "off":
        st.session_state.tour_cookie = True
        st.html(
            f"<script>document.cookie = '{TOUR_COOKIE}=off; max-age=31536000; path=/; "
            "SameSite=Lax';</script>",
            unsafe_allow_javascript=True,
        )


def tour() -> None:
    """A short, dismissible introduction for first-time visitors (until dismissed in this
    browser), in a narrow column: beside the two-time map, or at the top of the sidebar on
    the other tabs and in compare mode, where a box above the scores spanned the page and
    pushed the maps below the fold (their top from 713 to 878 px at 1500×1000)."""
    with st.container(border=True, vertical_alignment="center"):
        st.markdown(TOUR, width="stretch")
        st.button("Got it", key="tour_dismiss", on_click=_dismiss_tour, icon=":material/check:")


ONE_STEP = (
    "One time step: no scores, lag curves or two-time structure (they compare times); the "
    "Class transfer tab shows how the classes influence each other at this step."
)


def headline(ctx: PanelContext, report_slot=None) -> None:
    """Per group: a plain-language verdict and four metrics with units and reference marks,
    above the tabs (drawn after the open tab's chart, so they never delay it); and the
    one-click report of the whole selection, in ``report_slot`` (beside the page title) or
    after the scores. The first-visit tour stands beside the two-time map when that panel
    showed it (one group), otherwise at the top of the sidebar: nothing above the maps."""
    in_panel = st.session_state.pop(TOUR_SHOWN, False)
    if not tour_dismissed() and not in_panel:
        with st.sidebar:  # drawn before the sidebar's controls: at its top
            tour()
    remember_tour_dismissal()
    if ctx.selection.n_steps >= 2:  # one time step: no lag, no diagonal to dominate
        scores = {g.key: loaders.scores(g.key, g.result) for g in ctx.ready}
        if len(ctx.ready) > 1:
            _compare_scores(ctx.ready, scores, stale=ctx.stale)
        else:
            for group in ctx.ready:
                peers = score_peers(scores, group.key)
                _group_scores(group, scores[group.key], peers, stale=ctx.stale)
    else:  # a dataset of one transition (the only one-step window the sidebar allows)
        st.info(ONE_STEP, icon=":material/info:")
    report_button(ctx, report_slot)


def _verdict_line(group, scores: Scores, *, stale: bool) -> str:
    n = len(group.result.checkpoints)
    mark = ":orange[**stale**, the last computed selection's] · " if stale else ""
    note = response_note(group.result.primary)
    other = f":orange[{literal(note)}] · " if note else ""
    care = " · :orange[**read with care**]" if result_caveats(group.result) else ""
    return (
        f"**{literal(group.label)}** · {mark}{other}{n} seed{'s' if n != 1 else ''} · "
        f"{literal(verdict(scores))}{care}"
    )


def verdict_help(groups) -> str | None:
    """What each verdict rests on (``caveats``), for the verdict line's help: the reasons in
    full stood a line or two above the maps, which every line pushes down (a 1024×768 page
    lost the map's top rows), so the line says "read with care" and its help says why."""
    lines = [
        literal(f"{group.label}: {line}" if len(groups) > 1 else line)
        for group in groups
        if (line := caveat_line(result_caveats(group.result)))
    ]
    return "\n\n".join(lines) or None


def _score_help(ref, score: Score | None = None, others: Sequence[Score | None] = ()) -> str:
    """A score's reference marks and definition, and with ``score`` its spread."""
    text = f"{literal(ref.marks)}. Definition: {literal(DEFINITIONS[ref.name])}. "
    if score is None:  # the compare table's column title: its cells are the groups' values
        return text + (
            "Each cell: the group's median and [Q1, Q3] across its seeds, each seed's "
            "batches averaged (one checkpoint: across its batches)."
        )
    return text + f"Median; {literal(uncertainty(score, others))}."


COMPARE_COLUMNS = [0.55, 1.0, 1.0, 1.0, 1.0]  # the group's name, then the four scores


def _compare_scores(groups, scores: Mapping[str, Scores], *, stale: bool) -> None:
    """Compare mode: the verdicts, then one table (a row per group, a column per score,
    median and [Q1, Q3]) in place of a row of metric cards per group. Why: two rows of
    cards stood 330 px tall and pushed the two maps below a 1000 px fold; the table is
    about half as tall and lines the groups' values up for reading across."""
    st.markdown(
        "  \n".join(_verdict_line(g, scores[g.key], stale=stale) for g in groups),
        help=verdict_help(groups),
    )
    grid = st.container(key="compare_scores")
    header = grid.columns(COMPARE_COLUMNS, gap="small", vertical_alignment="bottom")
    header[0].caption("median [Q1, Q3]")
    for cell, ref in zip(header[1:], REFERENCES, strict=True):
        cell.markdown(f"**{ref.title}**", help=_score_help(ref))
        cell.caption(literal(ref.short))
    for group in groups:
        peers = score_peers(scores, group.key)
        table = {s.name: s for s in scores[group.key].as_list()}
        row = grid.columns(COMPARE_COLUMNS, gap="small", vertical_alignment="center")
        row[0].markdown(f"**{literal(group.label)}**")
        for cell, ref in zip(row[1:], REFERENCES, strict=True):
            score, others = table.get(ref.name), peers[ref.name]
            cell.markdown(  # the header's help defines the score; the band is its spread
                f"**{literal(format_score(score, others))}** "
                f":gray[{literal(quartile_band(score, others))}]"
            )


def _group_scores(
    group, scores: Scores, peers: Mapping[str, list[Score | None]], *, stale: bool = False
) -> None:
    """The group's verdict line and metric row, each score as wide as the other groups'
    (``peers``: ``score_peers``), so the two rows of compare mode line up; ``stale``: the
    scores are the last computed selection's (the banner above says which), and the line
    says so too."""
    table = {s.name: s for s in scores.as_list()}
    st.markdown(_verdict_line(group, scores, stale=stale), help=verdict_help([group]))
    # fixed-width cells in a wrapping row: on a narrow screen they move to the next line
    # instead of truncating their labels (all four fit one row from a 1024 px window)
    row = st.container(horizontal=True, gap="small")
    for ref in REFERENCES:
        score, others = table.get(ref.name), peers[ref.name]
        cell = row.container(width=150, gap=None)  # "Diagonal dominance" and its help icon
        cell.metric(ref.title, format_score(score, others), help=_score_help(ref, score, others))
        cell.caption(literal(quartile_band(score, others)) + "  \n" + literal(ref.short))


def _page_link(shown: Selection) -> str:
    """The address of the view the report holds, for its provenance: the page's URL with
    its panel choices, and the selection of the figures shown (while they are stale that is
    the last computed one, not the sidebar's, which the URL already names)."""
    base = (st.context.url or "").split("?", 1)[0]  # None without a browser (AppTest)
    params = {k: v for k, v in st.query_params.to_dict().items() if k not in QUERY_KEYS}
    query = urlencode({**shown.to_query(), **params})
    return f"{base.rstrip('/')}/?{query}" if base and query else base


# the tabs' choices the report draws (each kept in the session while its tab is closed)
SWEEP_CHOICES = (
    "dyn_vs_damping",
    "sens_pair",
    "two_time_pair",
    "two_time_seed",
    "cons_pair",
    "lag_y",
)


def report_params(query: Mapping[str, str], state: Mapping[str, Any]) -> dict[str, str]:
    """The link's parameters plus the sweep tabs' choices kept in the session: the link
    holds the open tab's choices only (a report built from the Sensitivity tab had lost
    the Training dynamics overlay the user had picked)."""
    kept = {key: str(state[key]) for key in SWEEP_CHOICES if state.get(key) is not None}
    return dict(query) | kept


def report_button(ctx: PanelContext, slot=None) -> None:
    """The selection's self-contained HTML report (what one emails after a demo), in
    ``slot`` when given."""
    if not ctx.ready:
        return
    groups = [ReportGroup(g.label, g.key, g.result) for g in ctx.ready]
    scales = {panel: ctx.scale(panel) for panel in HEATMAP_PANELS}  # as each tab shows it
    link = _page_link(ctx.selection)
    choices = {key: kept_choice(key) for key in SWEEP_CHOICES}  # closed tabs' too
    params = report_params(st.query_params.to_dict(), choices)
    (slot if slot is not None else st).download_button(
        # stale: said on the button, not only in its tooltip (a walk-through took the file
        # for the sidebar's selection)
        "Report (HTML) · stale view" if ctx.stale else "Report (HTML)",
        data=lambda: (
            build_report(
                ctx.root,
                ctx.catalog,
                ctx.selection,
                groups=groups,
                link=link,
                scales=scales,
                params=params,
            ).page
        ),
        file_name=report_name(ctx.selection, [g.label for g in ctx.ready]),
        mime="text/html",
        key="dl_report",
        on_click="ignore",
        icon=":material/summarize:",
        help="One HTML file with every influence panel of this selection (interactive), its "
        "cached Training dynamics and Sensitivity sweeps, the scores with their uncertainty "
        "and the provenance; opens offline in any browser."
        + (
            " The figures are stale: it holds the ones shown (the last computed selection), "
            "not the sidebar's."
            if ctx.stale
            else ""
        ),
    )
