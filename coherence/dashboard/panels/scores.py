"""Panel 10 (METHOD.md §7): scalar coherence scores with their definitions, per group; and
the headline metrics shown above the tabs."""

from __future__ import annotations

import math

import streamlit as st

from coherence.analysis.exports import scores_csv
from coherence.analysis.figures import score_rows, scores_table
from coherence.analysis.scores import DEFINITIONS
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import PanelContext, downloads, need_results

HEADLINE = (
    ("diagonal_dominance", "Diagonal dominance", "1 = each time step learns for itself"),
    ("decay_length", "Lag decay length", "steps until intra-class influence falls to 1/e"),
    ("inter_intra_ratio", "Inter / intra class", "1 = learning transfers fully across classes"),
    ("toeplitz_defect", "Toeplitz defect", "0 = influence depends on the lag only"),
)


def scores(ctx: PanelContext) -> None:
    """The score table (median [Q1, Q3] over checkpoint × batch) and each definition."""
    st.caption(
        "One number per (seed, batch), summarized as median [Q1, Q3]; compare groups across "
        "a row. The paper reports only figures: these make runs comparable in a table."
    )
    if not need_results(ctx):
        return
    by_group = {g.label: loaders.scores(g.key, g.result) for g in ctx.ready}
    header, rows = score_rows(by_group)
    st.table([dict(zip(header, row, strict=True)) for row in rows])  # wraps the definitions
    figure = scores_table(by_group)  # the same table as a figure, for the HTML download
    downloads(
        "scores",
        ctx.stem("scores"),
        figure=figure,
        files=[ctx.panel_csv("scores", lambda: scores_csv(by_group))],
    )


def headline(ctx: PanelContext) -> None:
    """Four metrics per group above the tabs: the gist of the analysis at a glance."""
    if ctx.selection.n_steps < 2:  # one time step: no lag, no diagonal to dominate
        return
    for group in ctx.ready:
        table = {s.name: s for s in loaders.scores(group.key, group.result).as_list()}
        columns = st.columns(len(HEADLINE) + 1)
        columns[0].markdown(
            f"**{literal(group.label)}**  \n{len(group.result.checkpoints)} seed(s)"
        )
        for column, (name, title, meaning) in zip(columns[1:], HEADLINE, strict=True):
            score = table.get(name)
            if score is None:
                continue
            value = score.median
            text = "—" if not math.isfinite(value) else f"{value:.2f}"
            if name == "decay_length" and int(score.censored.sum()):
                text = f"≥ {text}"
            column.metric(
                title,
                text,
                help=f"{meaning}. Definition: {DEFINITIONS[name]}. Median over "
                f"{score.values.size} (seed, batch) values; Q1–Q3 "
                f"[{score.q1:.2f}, {score.q3:.2f}].",
            )
