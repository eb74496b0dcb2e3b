"""Panel 7 (METHOD.md §6.6): influence on conserved quantities (mass, energy), CE only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import streamlit as st

from coherence.analysis.exports import lag_curves_csv, two_time_csv
from coherence.analysis.figures import lag_curves_figure, two_time_heatmap
from coherence.analysis.summaries import lag_curves, two_time_map
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    need_results,
    note_clipped,
    pair_choice,
    pair_figure,
    scale_choice,
    scale_selector,
    widget_value,
)
from coherence.dashboard.selection import Selection
from coherence.errors import CoherenceError
from coherence.report_panels import INTRA, pair_indices, pair_label, pair_options

CONSERVED = ("mass", "energy")
RESPONSE_TAB = "cons_response"  # the open sub-tab: "Mass" or "Energy"
PAIR = "cons_pair"  # the maps' class pair, as the Two-time influence tab's two_time_pair


def conservation(ctx: PanelContext) -> None:
    """Two-time maps and lag curves with the mass / energy response (SMSE perturbation);
    for a family without those responses, only why (the Euler caption and its depth advice
    read as if they applied to incompressible NS data)."""
    if not ctx.dataset.conserved:
        why = (
            "incompressible Navier–Stokes data, whose kinetic energy decays by viscosity and "
            "which has no density channel"
            if ctx.dataset.family == "ns"
            else f"{literal(ctx.dataset.family)} data"
        )
        st.info(
            "Mass and energy responses exist for compressible Euler data only (total density "
            f"and total energy, which its equations conserve); {literal(ctx.dataset.name)} is "
            f"{why}, so this tab has nothing to show for it. The other tabs read the SMSE "
            "response.",
            icon=":material/info:",
        )
        return
    st.caption(
        "How a descent step on example p (SMSE) moves the relative error of total mass or "
        "energy at example r: the same two-time map and lag curves as for SMSE, with the "
        "response A = mass or energy (r_M = (M[ŷ] − M[x]) / M[x]). A model that learned the "
        "conservation law shows transfer here across times and, in a class pair R ← P, from "
        "class P to class R. Read these maps as "
        "the estimator's own: on small models where the full solve is computable, the "
        "default's mass and energy maps agreed with it far less than its SMSE map (Pearson "
        "−0.02–0.70 against 0.94–0.98; at Krylov depth 4: 0.38–0.81; README: estimators). "
        + _depth_advice(ctx.selection.estimator, ctx.selection.resolved_depth)
    )
    missing = [r for r in CONSERVED if r not in ctx.selection.responses]
    to_add = [r for r in missing if r not in ctx.chosen.responses]  # the sidebar may have them
    if to_add:
        then = (
            "its result is cached already, so it shows at once"
            if _cached_with(ctx.chosen, ctx.root, to_add)
            else "compute: all responses come from one pass over the batch"
        )
        st.info(
            f"Add **{' and '.join(to_add)}** to the response observables in the sidebar; {then}."
        )
    elif missing:
        st.info(
            f"**{' and '.join(missing)}** are chosen in the sidebar but not in the selection "
            "shown: compute it to see them."
        )
    responses = [r for r in CONSERVED if r in ctx.selection.responses]
    if not responses or not need_results(ctx):
        return
    # keyed, so the open one travels in the link (panel_links) and only it runs
    tabs = st.tabs([r.capitalize() for r in responses], key=RESPONSE_TAB, on_change="rerun")
    for tab, response in zip(tabs, responses, strict=True):
        if tab.open is False:
            continue
        with tab:
            _one_response(ctx, response)


def _cached_with(selection: Selection, root: Path, responses: list[str]) -> bool:
    """Whether ``selection`` (the sidebar's) with ``responses`` added is cached for every
    group (whole, or assembled from cached units): then adding them needs no computation."""
    wider = replace(selection, responses=(*selection.responses, *responses))
    runner = loaders.job_runner(str(root))
    try:
        counts = [runner.cached_unit_count(r) for r in wider.to_requests(root)]
    except (CoherenceError, OSError):
        return False
    return all(cached == total for cached, total in counts)


def _depth_advice(estimator: str, depth: int | None) -> str:
    """What to do about the caveat, given the view's estimator and Krylov depth."""
    if depth is None:
        return "Choose ekfac-krylov and raise **Krylov depth** in the sidebar to bring them closer."
    if depth < 4:
        return (
            f"Raise **Krylov depth** in the sidebar (this view: {estimator} depth {depth}) to "
            "bring them closer; each block costs about as much again."
        )
    return f"This view runs at {estimator} depth {depth}."


def _one_response(ctx: PanelContext, response: str) -> None:
    symbol = f"Ĥ_{response}"
    controls = st.container()  # above the chart, filled after it
    scale = ctx.scale(response)
    options = pair_options(ctx.selection.classes)
    option = widget_value(PAIR, options)  # one pair for both responses: the tabs compare
    pair = pair_indices(option, ctx.selection.classes)
    title = f"Two-time influence on {response}, {pair_label(option)}"
    maps, figures = [], []
    for group in ctx.ready:
        maps.append((group, two_time_map(group.result.H_std[response], class_pair=pair)))
    zrange = ctx.scale_range(scale, [V for _, V in maps])
    for group, V in maps:
        figures.append(
            two_time_heatmap(
                V,
                group.result.times,
                ctx.n_examples,
                title=title if len(ctx.ready) == 1 else "",
                value_label=symbol,
                steps=group.result.steps,
                scale=scale,
                zrange=zrange,
            )
        )
    labels = [g.label for g in ctx.ready]
    figure = pair_figure(figures, labels, zrange=zrange, title=title, lone=ctx.lone)
    chart(figure, key=f"chart_{response}_map")
    note_clipped([V for _, V in maps], zrange)
    with controls:
        left, right = st.columns([2, 1])
        left.selectbox(  # cross-class transfer of the conservation law: a pair R ← P
            "Class pair (rows = response, columns = perturbation)",
            options,
            format_func=pair_choice,
            key=PAIR,
        )
        scale_selector(response, right)
    view = ctx.with_choices(
        {"class_pair": pair_label(INTRA)},
        class_pair=None if option == INTRA else option,
        colour_scale=scale_choice(scale),
    )
    downloads(
        f"{response}_map",
        view.stem(f"{response}_two_time"),
        figure=figure,
        files=[
            view.group_csv(
                f"{response}_two_time",
                g,
                lambda V=V, r=g.result: two_time_csv(V, r.times, steps=r.steps),
            )
            for g, V in maps
        ],
        caption=how_to_read(two_time_heatmap),
        meta=view.meta(),
    )
    groups = [(g.label, lag_curves(g.result.H_std[response])) for g in ctx.ready]
    lags = lag_curves_figure(
        groups, title=f"Influence on {response} vs time lag", value_label=symbol
    )
    chart(lags, key=f"chart_{response}_lag")
    downloads(
        f"{response}_lag",
        ctx.stem(f"{response}_time_lag"),
        figure=lags,
        files=[ctx.panel_csv(f"{response}_time_lag", lambda: lag_curves_csv(groups))],
        caption=how_to_read(lag_curves_figure),
        meta=ctx.meta(),
    )
