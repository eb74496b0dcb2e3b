"""Influence panels (METHOD.md §6.1–6.4): two-time map, class transfer, time lag, distance."""

from __future__ import annotations

import numpy as np
import streamlit as st

from coherence.analysis.exports import (
    class_matrix_csv,
    distance_csv,
    lag_curves_csv,
    two_time_csv,
)
from coherence.analysis.figures import (
    class_transfer_heatmap,
    distance_figure,
    lag_curves_figure,
    two_time_heatmap,
)
from coherence.analysis.summaries import class_transfer_matrix, lag_curves, two_time_map
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    need_results,
    pair_figure,
    response_title,
    widget_value,
)
from coherence.errors import CoherenceError

INTRA = "intra"


def _pair_options(classes: tuple[str, ...]) -> list[str]:
    return [INTRA] + [f"{r} ← {p}" for r in classes for p in classes]


def _pair_label(option: str) -> str:
    if option == INTRA:
        return "intra-class mean (each class on itself)"
    response, perturbation = option.split(" ← ")
    return f"response {response} ← perturbation {perturbation}"


def two_time(ctx: PanelContext) -> None:
    """Panel 2: V[t_r, t_p], per class pair, on the fixed range [0, √N]."""
    st.caption(
        how_to_read(two_time_heatmap)
        + f" Colour range [0, √N] = [0, {ctx.zrange[1]:.2f}]: a perfectly local row reaches "
        "√N. Hover shows (t_p, t_r, value)."
    )
    if not need_results(ctx):
        return
    classes = ctx.selection.classes
    pair_options = _pair_options(classes)
    seed_options = ["mean"] + ([] if ctx.compare else list(ctx.ready[0].result.checkpoints))
    # The chart is sent before its selectors (which are drawn above it): the browser then
    # fetches plotly's 4.7 MB chunk first instead of queueing it behind the widgets' chunks
    # (six connections per host). The values come from the widgets' state of the last run.
    controls = st.container()
    try:
        _two_time_chart(
            ctx,
            widget_value("two_time_pair", pair_options),
            widget_value("two_time_seed", seed_options),
        )
    finally:  # the selectors stay usable when the chosen view fails to draw
        with controls:
            left, right = st.columns(2)
            left.selectbox(
                "Class pair (rows = response, columns = perturbation)",
                pair_options,
                format_func=_pair_label,
                key="two_time_pair",
            )
            right.selectbox(
                "Seeds",
                seed_options,
                format_func=lambda s: "mean over the selected seeds" if s == "mean" else s,
                key="two_time_seed",
            )


def _two_time_chart(ctx: PanelContext, option: str, seed: str) -> None:
    """The two-time map of the chosen class pair and seed (or seed mean), and its downloads."""
    classes = ctx.selection.classes
    pair = None
    if option != INTRA:
        response, perturbation = option.split(" ← ")
        pair = (classes.index(response), classes.index(perturbation))
    maps, figures = [], []
    for group in ctx.ready:
        result = group.result
        if seed == "mean":
            V = two_time_map(result.H_std[result.primary], class_pair=pair)
        else:
            per_seed = two_time_map(
                result.H_std[result.primary], class_pair=pair, per_checkpoint=True
            )
            V = per_seed[result.checkpoints.index(seed)]
        maps.append((group, V))
        title = f"Two-time influence ({response_title(result.primary)}), {_pair_label(option)}"
        figures.append(
            two_time_heatmap(
                V,
                result.times,
                ctx.n_examples,
                title=title if len(ctx.ready) == 1 else "",
                steps=result.steps,
            )
        )
    labels = [g.label for g in ctx.ready]
    figure = pair_figure(
        figures, labels, zrange=ctx.zrange, title=f"Two-time influence, {_pair_label(option)}"
    )
    chart(figure, key="chart_two_time")
    files = [
        ctx.group_csv(
            "two_time", g, lambda V=V, r=g.result: two_time_csv(V, r.times, steps=r.steps)
        )
        for g, V in maps
    ]
    downloads("two_time", ctx.stem("two_time"), figure=figure, files=files)


def class_transfer(ctx: PanelContext) -> None:
    """Panel 3: mean Ĥ per (response class, perturbation class)."""
    st.caption(
        how_to_read(class_transfer_heatmap)
        + " Same colour range [0, √N] as the two-time map; the numbers are the cell means."
    )
    if not need_results(ctx):
        return
    matrices, figures = [], []
    for group in ctx.ready:
        result = group.result
        M = class_transfer_matrix(result.H_std[result.primary])
        matrices.append((group, M))
        figures.append(
            class_transfer_heatmap(
                M,
                result.classes,
                ctx.n_examples,
                title="Class transfer matrix" if len(ctx.ready) == 1 else "",
            )
        )
    figure = pair_figure(
        figures,
        [g.label for g in ctx.ready],
        zrange=ctx.zrange,
        title="Class transfer matrix (rows = response, columns = perturbation)",
    )
    chart(figure, key="chart_transfer")
    files = [
        ctx.group_csv("class_transfer", g, lambda M=M, r=g.result: class_matrix_csv(M, r.classes))
        for g, M in matrices
    ]
    downloads("transfer", ctx.stem("class_transfer"), figure=figure, files=files)


def time_lag(ctx: PanelContext) -> None:
    """Panel 4: Ĥ against lag, intra vs inter class, median and Q1–Q3 across seeds."""
    st.caption(
        how_to_read(lag_curves_figure)
        + " Bands are Q1–Q3 across seeds (batches averaged within a seed first)."
    )
    if not need_results(ctx):
        return
    groups = [(g.label, lag_curves(g.result.H_std[g.result.primary])) for g in ctx.ready]
    figure = lag_curves_figure(groups, title="Influence vs time lag")
    chart(figure, key="chart_lag")
    files = [ctx.panel_csv("time_lag", lambda: lag_curves_csv(groups))]
    downloads("lag", ctx.stem("time_lag"), figure=figure, files=files)


def distance(ctx: PanelContext) -> None:
    """Panel 5: Ĥ against input distance with the GCV smoothing spline and its band."""
    st.caption(
        how_to_read(distance_figure)
        + " Pairs with d = 0 (an example with itself) are dropped; 25 log-spaced windows."
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
    figure = pair_figure(figures, labels, title="Influence vs input distance")
    if len(figures) == 2:
        _share_y(figure, [c for _, c in curves])
    chart(figure, key="chart_distance")
    files = [ctx.group_csv("distance", g, lambda c=c: distance_csv(c)) for g, c in curves]
    downloads("distance", ctx.stem("distance"), figure=figure, files=files)


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
