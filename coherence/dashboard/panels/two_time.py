"""Panel 2 (METHOD.md §6.1): the two-time influence map V[t_r, t_p] per class pair, its
difference between two model groups, and the drill down into one clicked cell."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from coherence import report_panels
from coherence.analysis.exports import (
    two_time_csv,
)
from coherence.analysis.figures import (
    difference_heatmap,
    input_pair_figure,
    two_time_heatmap,
    with_cell_marked,
    with_click_targets,
)
from coherence.analysis.summaries import two_time_map
from coherence.dashboard import loaders, panel_links
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    DEFAULT_SCALE,
    PanelContext,
    chart,
    clicked_point,
    downloads,
    how_to_read,
    need_results,
    note_clipped,
    pair_choice,
    pair_figure,
    response_title,
    scale_choice,
    scale_selector,
    scale_text,
    shared_figure,
    widget_value,
)
from coherence.dashboard.panels.scores import TOUR_SHOWN, tour, tour_dismissed
from coherence.report_panels import INTRA, pair_label

TITLE_FITS = 56  # characters of a title over the square map (a longer one was cut off)


def two_time(ctx: PanelContext) -> None:
    """Panel 2: V[t_r, t_p], per class pair, on the fixed range [0, √N]. The caption goes
    under the chart (as in a paper), which keeps the headline heatmap above the fold."""

    def caption(scale: str, zrange: tuple[float, float]) -> str:
        return (
            f"{how_to_read(two_time_heatmap)} {scale_text(scale, zrange)} Hover shows (t_p, "
            "t_r, value); click a cell to drill down (the picked cell is outlined)."
        )

    if not need_results(ctx):
        st.caption(caption(DEFAULT_SCALE, ctx.zrange))
        return
    classes = ctx.selection.classes
    pair_options = report_panels.pair_options(classes)
    seed_options = ["mean"] + ([] if ctx.compare else list(ctx.ready[0].result.checkpoints))
    # The chart is sent before its selectors (which are drawn above it): the browser then
    # fetches plotly's 4.7 MB chunk first instead of queueing it behind the widgets' chunks
    # (six connections per host). The values come from the widgets' state of the last run.
    # One map: the selectors stand beside it, in the width a square map leaves empty, so the
    # headline map starts higher on the page; two maps need the width, so they go above.
    tour_at = None  # one map only: the first-visit tour, beside it above the selectors
    if ctx.compare:  # no seed choice: each group is its seeds' mean
        panel_links.forget("two_time_seed")  # nor one given back in single mode
        controls, plot = st.container(), st.container()
        left, third = controls.columns([3, 2])
        right = None
    else:
        plot, controls = st.columns([5, 2], gap="medium")
        left = right = third = controls
        tour_at = controls.container()
    drawn = DEFAULT_SCALE, ctx.zrange
    first = ctx.ready[0].result
    _apply_click(np.asarray(first.times), np.asarray(first.steps))  # before the map marks it
    try:
        with plot:
            drawn = _two_time_chart(
                ctx,
                widget_value("two_time_pair", pair_options),
                widget_value("two_time_seed", seed_options),
            )
    finally:  # the selectors stay usable when the chosen view fails to draw
        left.selectbox(
            "Class pair (rows = response, columns = perturbation)",
            pair_options,
            format_func=pair_choice,
            key="two_time_pair",
        )
        if right is not None:
            right.selectbox(
                "Seeds",
                seed_options,
                format_func=lambda s: "mean of seeds" if s == "mean" else s,
                key="two_time_seed",
            )
        scale_selector("two_time", third)
    if tour_at is not None and not tour_dismissed():  # beside the map it explains: the
        with tour_at:  # scores above keep their one row and the map stays above the fold
            tour()
        st.session_state[TOUR_SHOWN] = True
    st.caption(caption(*drawn))
    _drill_down(ctx, widget_value("two_time_pair", pair_options))


def _two_time_chart(ctx: PanelContext, option: str, seed: str) -> tuple[str, tuple[float, float]]:
    """The two-time map of the chosen class pair and seed (or seed mean), and its downloads;
    returns the colour scale and range it was drawn on."""
    pair = report_panels.pair_indices(option, ctx.selection.classes)
    maps = []
    scale = ctx.scale("two_time")
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
    zrange = ctx.scale_range(scale, [V for _, V in maps])
    view_label = pair_label(option) + ("" if seed == "mean" else f", {seed}")

    def build() -> go.Figure:
        figures = []
        for group, V in maps:
            result = group.result
            title = f"Two-time influence ({response_title(result.primary)}), {view_label}"
            if len(title) > TITLE_FITS:  # a pair and a seed: cut at the map's width
                title = title.replace("), ", ")<br>", 1)
            figures.append(
                two_time_heatmap(
                    V,
                    result.times,
                    ctx.n_examples,
                    title=title if len(ctx.ready) == 1 else "",
                    steps=result.steps,
                    scale=scale,
                    zrange=zrange,
                )
            )
        labels = [g.label for g in ctx.ready]
        figure = pair_figure(
            figures,
            labels,
            zrange=zrange,
            title=f"Two-time influence, {view_label}",
            lone=ctx.lone,
        )
        if "<br>" in (figure.layout.title.text or ""):
            figure.update_layout(margin_t=84)  # room for the second line
        return figure

    key = ("two_time", option, seed, scale, tuple(zrange))
    figure = shared_figure(ctx, key, build)
    # a click on a cell of either map drills down; the groups share the selection's times
    shown = shared_figure(ctx, (*key, "click targets"), lambda: with_click_targets(figure))
    cell = picked_cell(np.asarray(ctx.ready[0].result.steps))
    if cell is not None:  # outline the cell the drill-down below shows, on every map
        shown = with_cell_marked(shown, *cell)
    chart(shown, key="chart_two_time", clickable=True)
    note_clipped([V for _, V in maps], zrange)
    view = ctx.with_choices(
        {"class_pair": pair_label(INTRA), "seed": "mean over seeds"},
        class_pair=None if option == INTRA else option,
        seed=None if seed == "mean" else seed,
        colour_scale=scale_choice(scale),
    )
    files = [
        view.group_csv(
            "two_time", g, lambda V=V, r=g.result: two_time_csv(V, r.times, steps=r.steps)
        )
        for g, V in maps
    ]
    caption = how_to_read(two_time_heatmap)
    downloads(  # the exports: the figure without the invisible click targets
        "two_time",
        view.stem("two_time"),
        figure=figure,
        files=files,
        caption=caption,
        meta=view.meta(),
    )
    if len(maps) == 2 and maps[0][1].shape == maps[1][1].shape:
        difference = ctx.with_choices(  # always diverging: not the maps' colour scale
            {"class_pair": pair_label(INTRA), "colour_scale": "diverging"},
            class_pair=None if option == INTRA else option,
            colour_scale=None,
        )
        _difference(difference, maps, [g.label for g in ctx.ready], option)
    return scale, zrange


def _difference(ctx: PanelContext, maps, labels: list[str], option: str) -> None:
    """Compare mode: the first group's map minus the second's, on a diverging scale."""
    (_, V_a), (_, V_b) = maps
    box = st.expander(
        f"Difference map: {literal(labels[0])} − {literal(labels[1])}",
        icon=":material/compare:",
        key="two_time_diff_open",
        on_change="rerun",  # lazy: drawn only when opened
    )
    if box.open is False:
        return
    with box:
        _difference_chart(ctx, V_a, V_b, labels, option)


def _difference_chart(ctx: PanelContext, V_a, V_b, labels: list[str], option: str) -> None:
    st.caption(how_to_read(difference_heatmap))
    figure = difference_heatmap(
        V_a,
        V_b,
        ctx.ready[0].result.times,
        labels,
        title=f"{labels[0]} − {labels[1]}, {pair_label(option)}",
    )
    chart(figure, key="chart_two_time_diff")
    result = ctx.ready[0].result
    stem = ctx.stem("two_time_difference")
    label = f"Data {literal(labels[0])} − {literal(labels[1])} (CSV)"
    data = lambda: two_time_csv(V_a - V_b, result.times, steps=result.steps)  # noqa: E731
    downloads(
        "two_time_diff",
        stem,
        figure=figure,
        files=[ctx.view_csv(label, stem, data, f"{labels[0]} − {labels[1]}")],
        caption=how_to_read(difference_heatmap),
        meta=ctx.meta(),
    )


CELL_KEY = "two_time_cell"
_CLICK_KEY = "_two_time_click"
NO_CELL = "none"


def _apply_click(times: np.ndarray, steps: np.ndarray) -> None:
    """A new click on the two-time chart picks its cell in the drill-down selector (once per
    click, so a later pick in the selector is not overridden by the old click), by snapshot
    steps: a cell kept by window position had named other times once the window moved."""
    point = clicked_point("chart_two_time")
    if point is None or "x" not in point or "y" not in point:
        return
    token = (point["x"], point["y"])
    if st.session_state.get(_CLICK_KEY) == token:
        return
    st.session_state[_CLICK_KEY] = token
    try:
        j = int(np.argmin(np.abs(times - float(point["x"]))))
        i = int(np.argmin(np.abs(times - float(point["y"]))))
    except (TypeError, ValueError):
        return
    st.session_state[CELL_KEY] = f"{int(steps[i])},{int(steps[j])}"


def _parse_cell(cell: object) -> tuple[int, int] | None:
    """'s_r,s_p' as (snapshot step of t_r, of t_p); None for no cell picked (or none at
    all)."""
    if not isinstance(cell, str) or cell == NO_CELL:
        return None
    try:
        i, j = map(int, cell.split(","))
    except ValueError:
        return None
    return i, j


def picked_cell(steps: np.ndarray) -> tuple[int, int] | None:
    """The drill-down's cell as (row i = t_r, column j = t_p) of a map over the snapshot
    ``steps``, or None while none is picked or its steps lie outside them."""
    return cell_position(st.session_state.get(CELL_KEY), steps)


def cell_position(cell: object, steps: Sequence[int] | np.ndarray) -> tuple[int, int] | None:
    """Row and column of the cell 's_r,s_p' (snapshot steps) in a map over ``steps``; None
    for no cell, or one whose steps the map does not hold."""
    picked = _parse_cell(cell)
    position = {int(step): index for index, step in enumerate(steps)}
    if picked is None or not all(step in position for step in picked):
        return None
    return position[picked[0]], position[picked[1]]


def _drill_down(ctx: PanelContext, option: str) -> None:
    """One cell of the two-time map: the two input states, their distance, and the value of
    every seed and batch behind the mean."""
    if not ctx.ready:
        return
    result = ctx.ready[0].result
    st.subheader("Drill down: one cell", anchor=False)
    st.caption(
        "Click a cell of the map (or pick it here): the input states of its response example "
        "r and perturbation example p, their distance d(r, p), and Ĥ[r, p] of every seed and "
        "batch (the map of one class pair shows their mean; the intra-class mean map also "
        "averages over the classes: the line under the table gives each class's mean)."
    )
    cell = _cell_controls(ctx, option, result)
    if cell is not None:
        _cell_states(ctx, result, cell)
        _cell_values(ctx, cell)
        if option == INTRA:
            st.caption(_intra_cell_text(ctx, cell))


@dataclass(frozen=True)
class _Cell:
    """A picked cell: snapshot rows i (t_r) and j (t_p), classes c_r and c_p, batch b."""

    i: int
    j: int
    c_r: int
    c_p: int
    b: int
    channel: str


def distinct_times(times: np.ndarray) -> list[str]:
    """The times written with the fewest significant digits (3 or more) that keep them all
    apart (t = 12.30 and 12.35 both read 12.3 at 3 digits)."""
    for digits in range(3, 17):
        written = [f"{t:.{digits}g}" for t in times]
        if len(set(written)) == len(written):
            return written
    return [repr(float(t)) for t in times]


def _cell_controls(ctx: PanelContext, option: str, result) -> _Cell | None:
    """The cell, class, batch and channel pickers; None until a cell is picked."""
    times, steps = np.asarray(result.times), [int(step) for step in result.steps]
    classes = ctx.selection.classes
    options = [NO_CELL] + [f"{r},{p}" for r in steps for p in steps]
    if st.session_state.get(CELL_KEY, NO_CELL) not in options:  # the window moved off it
        st.session_state[CELL_KEY] = NO_CELL
    written = dict(zip(steps, distinct_times(times), strict=True))

    def label(cell: str) -> str:  # short: at 1024 px the column is ≈ 250 px wide
        if cell == NO_CELL:
            return "none: click the map"
        r, p = map(int, cell.split(","))
        return f"t_r = {written[r]} · t_p = {written[p]}"  # the steps: in the line below

    cols = st.columns([2, 1, 1, 1])
    cell = cols[0].selectbox("Cell", options, format_func=label, key=CELL_KEY)
    if option == INTRA:
        name = cols[1].selectbox("Class (r and p)", classes, key="two_time_cell_class")
        c_r = c_p = classes.index(name)
    else:
        response, perturbation = option.split(" ← ")
        c_r, c_p = classes.index(response), classes.index(perturbation)
    trajectories = list(ctx.selection.trajectories)
    batch = cols[2].selectbox("Test trajectory", trajectories, key="two_time_cell_batch")
    channel = cols[3].selectbox("Channel", ctx.dataset.channels, key="two_time_cell_channel")
    position = cell_position(cell, steps)
    if position is None:
        return None
    return _Cell(*position, c_r, c_p, trajectories.index(batch), channel)


def _cell_states(ctx: PanelContext, result, cell: _Cell) -> None:
    """The input states of r and p side by side, and their distance."""
    times, steps = np.asarray(result.times), np.asarray(result.steps)
    classes, i, j = ctx.selection.classes, cell.i, cell.j
    n_r, n_p = i * len(classes) + cell.c_r, j * len(classes) + cell.c_p
    distance = float(result.distances[cell.b, n_r, n_p])
    st.markdown(
        f"**r** = {literal(classes[cell.c_r])} at t = {times[i]:.3g} (step {steps[i]}) · "
        f"**p** = {literal(classes[cell.c_p])} at t = {times[j]:.3g} (step {steps[j]}) · "
        f"input distance d(r, p) = **{distance:.3g}**"
    )
    inputs = loaders.batch_inputs(result.request)  # [B, N, F, H, W]
    figure = input_pair_figure(
        inputs[cell.b, n_r],
        inputs[cell.b, n_p],
        ctx.dataset.channels,
        cell.channel,
        labels=(
            f"response r: {classes[cell.c_r]}, t = {times[i]:.3g}",
            f"perturbation p: {classes[cell.c_p]}, t = {times[j]:.3g}",
        ),
    )
    chart(figure, key="chart_two_time_cell")


def _intra_cell_text(ctx: PanelContext, cell: _Cell) -> str:
    """What the intra-class mean map holds at the cell, per group: the mean over seeds,
    batches and classes (two_time_map's own value) and each class's mean, so the table's one
    class and the map's number can be reconciled."""
    classes = ctx.selection.classes
    parts = []
    for group in ctx.ready:
        H = group.result.H_std[group.result.primary]  # [S, B, T, C, T, C]
        whole = float(two_time_map(H)[cell.i, cell.j])
        each = ", ".join(
            f"{literal(name)} {float(np.mean(H[:, :, cell.i, c, cell.j, c])):.3g}"
            for c, name in enumerate(classes)
        )
        who = f"**{literal(group.label)}**: " if len(ctx.ready) > 1 else ""
        parts.append(f"{who}the map's cell is {whole:.3g}, the mean of the classes' {each}")
    return "Intra-class mean at this cell: " + "; ".join(parts) + "."


def _cell_values(ctx: PanelContext, cell: _Cell) -> None:
    """Ĥ[r, p] of every seed (rows) and batch (columns), and their mean."""
    trajectories = list(ctx.selection.trajectories)
    rows = []
    for group in ctx.ready:
        H = group.result.H_std[group.result.primary]  # [S, B, T, C, T, C]
        for s, seed in enumerate(group.result.checkpoints):
            values = H[s, :, cell.i, cell.c_r, cell.j, cell.c_p]
            row = {"group": group.label, "seed": seed}
            pairs = zip(trajectories, values, strict=True)
            row |= {f"batch {t}": float(f"{v:.3g}") for t, v in pairs}
            row["mean"] = float(f"{float(np.mean(values)):.3g}")
            rows.append(row)
    st.dataframe(rows, hide_index=True)
