"""Influence panels (METHOD.md §6.2–6.4): class transfer, time lag, input distance (the
two-time map of §6.1 is ``two_time``)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from coherence.analysis.exports import (
    class_matrix_csv,
    distance_csv,
    lag_curves_csv,
)
from coherence.analysis.figures import (
    LAG_AXES,
    class_transfer_heatmap,
    distance_figure,
    lag_curves_figure,
)
from coherence.analysis.summaries import class_transfer_matrix, lag_curves
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    need_results,
    note_clipped,
    pair_figure,
    scale_choice,
    scale_selector,
    scale_text,
)
from coherence.errors import CoherenceError


def class_transfer(ctx: PanelContext) -> None:
    """Panel 3: mean Ĥ per (response class, perturbation class)."""
    st.caption(how_to_read(class_transfer_heatmap) + " The numbers are the cell means.")
    if not need_results(ctx):
        return
    controls = st.container()  # drawn above the chart, filled after it
    scale = ctx.scale("transfer")
    matrices, figures = [], []
    for group in ctx.ready:
        result = group.result
        matrices.append((group, class_transfer_matrix(result.H_std[result.primary])))
    zrange = ctx.scale_range(scale, [M for _, M in matrices])
    for group, M in matrices:
        figures.append(
            class_transfer_heatmap(
                M,
                group.result.classes,
                ctx.n_examples,
                title="Class transfer matrix" if len(ctx.ready) == 1 else "",
                scale=scale,
                zrange=zrange,
            )
        )
    figure = pair_figure(
        figures,
        [g.label for g in ctx.ready],
        zrange=zrange,
        title="Class transfer matrix (rows = response, columns = perturbation)",
        lone=ctx.lone,
    )
    chart(figure, key="chart_transfer")
    note_clipped([M for _, M in matrices], zrange)
    st.caption(scale_text(scale, zrange))  # the range drawn (it said [0, √N] for every scale)
    with controls:
        scale_selector("transfer", st.columns(3)[0])
    view = ctx.with_choices(colour_scale=scale_choice(scale))
    files = [
        view.group_csv("class_transfer", g, lambda M=M, r=g.result: class_matrix_csv(M, r.classes))
        for g, M in matrices
    ]
    downloads(
        "transfer",
        view.stem("class_transfer"),
        figure=figure,
        files=files,
        caption=how_to_read(class_transfer_heatmap),
        meta=view.meta(),
    )


LAG_AXIS_KEY = "lag_y"  # in the link (panel_links.PANEL_PARAMS) and the report's params


def time_lag(ctx: PanelContext) -> None:
    """Panel 4: Ĥ against lag, intra vs inter class, median and Q1–Q3 across seeds."""
    st.caption(
        how_to_read(lag_curves_figure)
        + " Bands are Q1–Q3 across seeds (batches averaged within a seed first)."
    )
    if not need_results(ctx):
        return
    axis = st.radio(
        "y axis",
        list(LAG_AXES),
        format_func=LAG_AXES.get,
        key=LAG_AXIS_KEY,
        horizontal=True,
        help="The self-influence peak at Δ = 0 is often several times the rest of the curve; "
        "zooming to Δ ≠ 0 shows how fast influence decays and how close the inter-class "
        "curve comes (the values at Δ = 0 are written above the plot).",
    )
    groups = [(g.label, lag_curves(g.result.H_std[g.result.primary])) for g in ctx.ready]
    figure = lag_curves_figure(groups, title="Influence vs time lag", axis=axis)
    chart(figure, key="chart_lag")
    # the zoomed figure downloads under its own name, its axis in the provenance; the CSV
    # holds every lag either way
    view = ctx.with_choices({"y_axis": LAG_AXES["whole"]}, y_axis=None if axis == "whole" else axis)
    files = [ctx.panel_csv("time_lag", lambda: lag_curves_csv(groups))]
    downloads(
        "lag",
        view.stem("time_lag"),
        figure=figure,
        files=files,
        caption=how_to_read(lag_curves_figure),
        meta=view.meta(),
    )


def distance(ctx: PanelContext) -> None:
    """Panel 5: Ĥ against input distance with the GCV smoothing spline and its band."""
    st.caption(
        how_to_read(distance_figure)
        + " Pairs with d = 0 (an example with itself) are dropped; 25 log-spaced bins, so 24 "
        "windows of two adjacent bins (each point is a window's mean; neighbours share a bin). "
        "The smoothing level is chosen by generalized cross-validation on the 25 bin means, "
        "whose errors are independent, and applied to the windows."
    )
    if not need_results(ctx):
        return
    curves, figures = [], []
    for i, group in enumerate(ctx.ready):
        try:
            curve = loaders.distance_curve(group.key, group.result)
        except CoherenceError as error:
            st.warning(
                f"**{literal(group.label)}**: no distance curve for this selection: "
                f"{literal(error)}"
            )
            continue
        curves.append((group, curve))
        figures.append(
            distance_figure(
                curve,
                seed_labels=list(group.result.checkpoints),
                label=group.label if ctx.compare else "",
                color_index=i,
                title="Influence vs input distance" if len(ctx.ready) == 1 else "",
            )
        )
    if not figures:
        return
    labels = [g.label for g, _ in curves]
    figure = pair_figure(figures, labels, title="Influence vs input distance", lone=ctx.lone)
    if len(figures) == 2:
        _share_y(figure, [c for _, c in curves])
    chart(figure, key="chart_distance")
    files = [
        ctx.group_csv("distance", g, lambda c=c, g=g: distance_csv(c, g.result.checkpoints))
        for g, c in curves
    ]
    downloads(
        "distance",
        ctx.stem("distance"),
        figure=figure,
        files=files,
        caption=how_to_read(distance_figure),
        meta=ctx.meta(),
    )


def _share_y(figure, curves) -> None:
    """Compare mode: one y range for both columns, so equal heights mean equal Ĥ."""
    values = np.concatenate(
        [np.ravel(c.window_means) for c in curves]
        + [np.ravel(c.band.q3) for c in curves]
        + [np.ravel(c.band.q1) for c in curves]
    )
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        pad = 0.05 * (hi - lo or 1.0)
        figure.update_yaxes(range=[min(lo, 0.0) - pad, hi + pad])
