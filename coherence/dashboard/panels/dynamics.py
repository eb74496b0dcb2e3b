"""Panel 'Training dynamics' (METHOD.md §7, influence across training): every score against
the epoch of the training snapshots, the validation SMSE on the same axis, and the two-time
map at each snapshot on one colour scale. Compare mode overlays the two groups."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import streamlit as st

from coherence.analysis.figures.dynamics import dynamics_figure, epoch_heatmaps
from coherence.analysis.scores import seed_means
from coherence.analysis.tables import epoch_maps_csv
from coherence.analysis.trends import Trend
from coherence.dashboard import compute, loaders, sweep_views, sweeps
from coherence.dashboard.markup import code, literal
from coherence.dashboard.panels import sweep_jobs
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    widget_value,
)
from coherence.errors import CoherenceError
from coherence.workspace import checkpoints_dir

EXPLAIN = (
    "Each point is the analysis of this selection on the weights of one training epoch "
    "(the snapshots `coherence train` keeps under `epochs/NNNN`, by default powers of two "
    "plus the last), every seed of the group at the same epoch, cached like any analysis."
)


NO_OTHER_DAMPING = "none"


def _other_damping(ctx: PanelContext) -> float | None:
    """The second λ the user asked to overlay (None: only the selection's): does the shape
    of the curves over training depend on λ? One value keeps the chart and the link plain.
    Not offered for an estimator whose Ĥ ignores λ (it drew one line twice). The options
    are the bare λ and their cached counts a caption: counts in the options' labels went
    stale in the closed picker when a computation ended (Streamlit redraws the list, not
    the chosen label)."""
    if sweeps.ignores_damping(ctx.selection.estimator):
        st.caption(
            f"λ does not enter {ctx.selection.estimator}'s Ĥ, so there is no other λ to "
            "overlay here."
        )
        return None
    grid = [d for d in sweeps.DAMPING_GRID if not math.isclose(d, ctx.selection.damping)]
    picker, counts = st.columns([1, 2], vertical_alignment="bottom")
    chosen = picker.selectbox(
        "Overlay the same epochs at another λ",
        [NO_OTHER_DAMPING] + [f"{d:g}" for d in grid],
        key="dyn_vs_damping",
        help="Each epoch's analysis repeated at this damping, drawn beside the selection's "
        f"λ = {ctx.selection.damping:g} (the maps below stay at the selection's λ). Missing "
        "epochs are computed by the button, each its own cached analysis. "
        + sweep_views.SAME_AT_ANY_DAMPING,
    )
    counts.caption(_cached_counts(ctx, grid))
    if chosen == NO_OTHER_DAMPING:
        return None
    st.caption(sweep_views.SAME_AT_ANY_DAMPING)
    return float(chosen)


def _cached_counts(ctx: PanelContext, grid: Sequence[float]) -> str:
    """'Epochs cached at each λ: 1e-06: 0 of 3 · 0.01: 3 of 3 · …': which λ draws a curve at
    once and which needs computing (a λ with one cached epoch drew a lone point,
    unannounced)."""
    runner = loaders.job_runner(str(ctx.root))
    said = []
    for damping in grid:
        try:
            points, _ = sweeps.dynamics_points(
                ctx.root, replace(ctx.selection, damping=damping), runner
            )
        except CoherenceError:
            continue
        if points:
            done = sum(s.state == "done" for s in sweep_jobs.statuses(str(ctx.root), points))
            said.append(f"{damping:g}: {done} of {len(points)}")
    return f"Epochs cached at each λ: {' · '.join(said)}" if said else ""


def dynamics(ctx: PanelContext) -> None:
    st.caption(how_to_read(dynamics_figure))
    root = str(ctx.root)
    runner = loaders.job_runner(root)
    ctx = sweep_jobs.filled_view(
        ctx,
        lambda s: sweeps.dynamics_points(ctx.root, s, runner)[0],
        key="dyn",
        what=("epoch analysis", "epoch analyses"),
    )
    other = _other_damping(ctx)
    points, problems = sweep_views.dynamics_points(ctx.root, ctx.selection, runner, other)
    for problem in problems:
        st.warning(literal(problem), icon=":material/warning:")
    labels = compute.group_labels(ctx.catalog, ctx.selection)
    per_group = {
        g: [p for p in points if p.group == g and not p.series] for g in range(len(labels))
    }
    if all(len(group) <= 1 for group in per_group.values()):
        st.info(_one_epoch_reason(ctx) + f" {EXPLAIN}", icon=":material/timeline:")
        if not points:
            return
    else:
        st.caption(EXPLAIN)
    states = sweep_jobs.statuses(root, points)
    sweep_jobs.status_bar(
        root, points, states, key="dyn", what=("epoch analysis", "epoch analyses"), stale=ctx.stale
    )
    done = [p for p, s in zip(points, states, strict=True) if s.state == "done"]
    if len(done) <= len(labels):
        sweep_jobs.elsewhere(
            ctx, lambda s: sweeps.dynamics_points(ctx.root, s, runner)[0], "Training dynamics"
        )
    if not done:
        st.info(
            "No epoch is analysed yet for this selection: compute them with the button above.",
            icon=":material/hourglass_empty:",
        )
        return
    sweep_jobs.warn_unconverged(
        sweep_jobs.unconverged_points(root, done),
        len(done),
        sweep_views.epoch_point_name,
        "epoch analyses",
    )
    response = ctx.selection.responses[0]
    own = f" · λ = {ctx.selection.damping:g}" if other is not None else ""
    lines = sweep_views.dynamics_lines(
        done,
        labels,
        ctx.selection.groups,
        checkpoints_dir(ctx.root),
        lambda p: sweep_jobs.scores(root, p, response),
        loaders.history,
        own_suffix=own,
    )
    for problem in lines.problems:
        st.warning(literal(problem))
    # the seed columns' order: the group's checkpoints (its snapshots follow them)
    members = {line: ctx.selection.groups[g] for line, g in lines.group_of.items()}
    figure = dynamics_figure(
        lines.trends,
        lines.validation or None,
        colors=lines.group_of,
        dashed=lines.dashed,
        title=f"{ctx.instead}: scores across training" if ctx.instead else "Scores across training",
    )
    drawn = {float(x) for series in lines.trends.values() for t in series.values() for x in t.x}
    if ctx.selection.epoch in drawn:  # the headline above is this epoch's: marked (not off
        # the axis, which spans the drawn epochs only)
        figure.add_vline(
            x=ctx.selection.epoch,
            line={"dash": "dot", "color": "grey", "width": 1},
            row="all",
            col="all",
        )
        st.caption(
            f"The dotted line marks epoch {ctx.selection.epoch}, the weights the other tabs "
            "and the headline show (the sidebar's Weights)."
        )
    chart(figure, key="chart_dynamics")
    missing = sweep_views.epochs_not_drawn(ctx.selection.damping, other, points, done, labels)
    if missing:
        st.caption(f"{missing} The button above computes the rest.")
    view = ctx.with_choices(overlay=f"lam{other:g}" if other is not None else None)
    meta = sweep_views.sweep_meta(view.meta(), done, labels, "epoch")
    downloads(
        "dynamics",
        view.stem("dynamics"),
        figure=figure,
        files=[
            view.panel_csv(
                "dynamics",
                lambda: trends_csv(
                    with_validation(lines.trends, lines.validation), "epoch", members
                ),
                meta,
            )
        ],
        caption=how_to_read(dynamics_figure),
        meta=meta,
    )
    _heatmaps(ctx, labels, [p for p in done if not p.series], points)


def _heatmaps(ctx: PanelContext, labels: list[str], done, points) -> None:
    st.caption(how_to_read(epoch_heatmaps))
    shown = list(sweep_views.epochs_per_group(done, labels))
    if not shown:  # only the overlaid λ is analysed: its maps are not drawn
        st.info(
            f"No epoch is analysed at the selection's λ = {ctx.selection.damping:g} yet, so "
            "there are no maps to show: compute them with the button above.",
            icon=":material/hourglass_empty:",
        )
        return
    slot = st.container()
    label = widget_value("dyn_group", shown) if len(shown) > 1 else shown[0]
    found = sweep_views.epoch_maps(
        done, labels.index(label), lambda p: sweep_jobs.result(str(ctx.root), p)
    )
    missing = sweep_views.epochs_missing(points, done, labels.index(label))
    if said := sweep_views.maps_not_drawn(label, missing):
        st.caption(f"{said} The button above computes them.")
    if not found.maps:
        return
    figure = epoch_heatmaps(
        found.maps,
        found.epochs,
        ctx.n_examples,
        times=found.times,
        title=f"{label}: two-time map across epochs",
    )
    chart(figure, key="chart_dynamics_maps")
    view = ctx.with_choices(group=label if len(shown) > 1 else None)
    meta = sweep_views.sweep_meta(view.meta(), found.drawn, labels, "epoch")
    # the responses row lists them all; the maps are the first's (the value column's)
    meta["map"] = f"intra-class two-time map of Ĥ_{ctx.selection.responses[0]}"
    downloads(
        "dynamics_maps",
        view.stem("epoch_maps"),
        figure=figure,
        files=[
            view.panel_csv(
                "epoch_maps",
                lambda: epoch_maps_csv(found.maps, found.epochs, found.times),
                meta,
            )
        ],
        caption=how_to_read(epoch_heatmaps),
        meta=meta,
    )
    if len(shown) > 1:
        slot.selectbox("Group", shown, key="dyn_group")


def with_validation(by_group: dict, valid: dict) -> dict:
    """The trends plus each group's validation SMSE per epoch as a ``valid_smse`` trend
    (per seed), so the CSV holds every panel of the figure."""
    out = {label: dict(series) for label, series in by_group.items()}
    for label, curves in valid.items():
        per_seed = np.asarray(curves["valid_smse"]["per_seed"], dtype=np.float64).T  # [E, S]
        epochs = np.asarray(curves["epochs"], dtype=np.float64)
        out.setdefault(label, {})["valid_smse"] = Trend("valid_smse", epochs, per_seed)
    return out


def trends_csv(
    by_series: dict, x_name: str, members: Mapping[str, Sequence[str]] | None = None
) -> bytes:
    """series, score, x, median, q1, q3, censored, then each seed's value; with ``members``
    ({series: its checkpoints, in the seed columns' order}) a last column names them, so
    seed_0… can be read as the seeds they are. ``censored``: the share of the (seed, batch)
    values that are bounds (a lag decay length at the window: "≥ T"), empty for scores that
    never are (a censored 15.0 had read as a measured 15)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    width = max(
        (t.per_seed.shape[1] for series in by_series.values() for t in series.values()),
        default=0,
    )
    seeds = [f"seed_{i}" for i in range(width)]
    writer.writerow(
        ["series", "score", x_name, "median", "q1", "q3", "censored", *seeds]
        + (["checkpoints (seed_0, seed_1, …)"] if members is not None else [])
    )
    for label, series in by_series.items():
        names = [" ".join(members.get(label, ()))] if members is not None else []
        for name, trend in series.items():
            bounds = seed_means(trend.censored) if trend.censored is not None else None
            for i, x in enumerate(trend.x):
                row = trend.per_seed[i]
                writer.writerow(
                    [
                        label,
                        name,
                        f"{x:g}",
                        *(_num(v) for v in (trend.median[i], trend.q1[i], trend.q3[i])),
                        _num(bounds[i]) if bounds is not None else "",
                        *(_num(v) for v in row),
                        *([""] * (width - len(row))),
                        *names,
                    ]
                )
    return buffer.getvalue().encode()


def _num(value: float) -> str:
    return "" if not np.isfinite(value) else repr(float(value))


def _one_epoch_reason(ctx: PanelContext) -> str:
    """``sweep_views.one_epoch_reason``, as the panel says it."""
    found = sweep_views.one_epoch_reason(ctx.catalog, ctx.selection)
    retrain = code(found.retrain)
    if found.listed:
        return (
            f"The seeds keep snapshots, but of no epoch they all share ({found.listed}), so "
            f"there is one epoch to show: train the seeds with one --keep-epochs list, e.g. "
            f"{retrain}."
        )
    return (
        "These checkpoints keep no snapshot of an earlier epoch, so there is one epoch to "
        "show. Checkpoints trained by this version keep them; to add them, retrain into a new "
        f"directory, e.g. {retrain}."
    )
