"""Model panels (METHOD.md §6.5, 6.7): the NTK spectrum, and rollout vs one-step error with a
field viewer comparing prediction and truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from coherence.analysis.exports import (
    panel_npz,
    rollout_csv,
    spectra_csv,
    top_eigenvalues_csv,
)
from coherence.analysis.figures import (
    field_viewer,
    rollout_figure,
    subspace_spectrum_figure,
    top_eigenvalue_figure,
)
from coherence.analysis.summaries import rollout_summary, spectrum_summary
from coherence.dashboard import loaders
from coherence.dashboard.compute import GroupState
from coherence.dashboard.markup import literal
from coherence.dashboard.panel_links import keep_in_range
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    need_results,
    npz_file,
)
from coherence.dashboard.panels.rollout_jobs import rollout_runs
from coherence.errors import CoherenceError
from coherence.report_panels import series_labels
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside


def spectrum(ctx: PanelContext) -> None:
    """Panel 6: λ_max(η + λI) per group (box) and the full subspace spectrum."""
    if not need_results(ctx):
        return
    series = {g.label: series_labels(g.result) for g in ctx.ready}  # hover and CSV names
    _top_eigenvalues(ctx, series)
    st.caption(how_to_read(subspace_spectrum_figure))
    spectra = {g.label: g.result.subspace_spectra for g in ctx.ready}
    try:
        figure = subspace_spectrum_figure(spectra, series_labels=series)
    except CoherenceError:
        st.info(
            "The full spectrum of QᵀηQ on span(G) comes with the **ekfac-krylov** (default) "
            f"and **subspace** estimators; this result used {ctx.selection.estimator}. Choose "
            "one of them in the sidebar to see it."
        )
        return
    chart(figure, key="chart_spectrum")
    rows = [row for group in ctx.ready if (row := _spectrum_row(group))]
    if rows:
        st.caption(
            "Medians over (seed, batch); rank: the higher median, a whole number, of span(G), "
            "the spectrum's basis (the default estimator's whole space, the rank in its "
            "diagnostics, also holds M̃⁻¹G: about twice as many); the median curve above "
            "ends at the smallest rank, the last index every (seed, batch) has. Participation "
            "ratio (Σλ)²/Σλ² and entropy rank are effective ranks (N for a flat spectrum, 1 "
            "for one direction); dominant share λ_max/Σλ (the Scores tab's fifth score); decay "
            "slope p in λ_k ∝ k^p over the top half."
        )
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            # fixed decimals: the share reads 0.30 as the scores above write it, not 0.3
            column_config={
                "participation ratio": st.column_config.NumberColumn(format="%.1f"),
                "entropy rank": st.column_config.NumberColumn(format="%.1f"),
                "dominant share": st.column_config.NumberColumn(format="%.2f"),
                "decay slope": st.column_config.NumberColumn(format="%.2f"),
            },
        )
    downloads(
        "spectrum",
        ctx.stem("spectrum"),
        figure=figure,
        caption=how_to_read(subspace_spectrum_figure),
        meta=ctx.meta(),
        files=[ctx.panel_csv("spectrum", lambda: spectra_csv(spectra, series))],
    )


def _top_eigenvalues(ctx: PanelContext, series: dict[str, list[str]]) -> None:
    """λ_max(η + λI) per group as a box, or why the result has none; ``series``: each
    group's (seed, batch) names for the CSV."""
    st.caption(how_to_read(top_eigenvalue_figure))
    tops = {g.label: g.result.top_eigenvalues for g in ctx.ready}
    try:
        box = top_eigenvalue_figure(tops)
    except CoherenceError as error:
        st.info(f"No top eigenvalue in this result: {literal(error)}")
        return
    chart(box, key="chart_top_eigenvalue")
    downloads(
        "top_eig",
        ctx.stem("top_eigenvalue"),
        figure=box,
        caption=how_to_read(top_eigenvalue_figure),
        meta=ctx.meta(),
        files=[ctx.panel_csv("top_eigenvalue", lambda: top_eigenvalues_csv(tops, series))],
    )


def _spectrum_row(group: GroupState) -> dict[str, Any] | None:
    """One group's spectrum statistics, medians over (seed, batch); None without any."""
    stats = [
        spectrum_summary(e[np.isfinite(e)])
        for per_batch in group.result.subspace_spectra
        for e in per_batch
        if np.any(np.isfinite(e) & (e > 0))
    ]
    if not stats:
        return None
    slopes = [s["decay_slope"] for s in stats if s["decay_slope"] is not None]
    return {
        "group": group.label,
        # a rank is a whole number: the higher median is one of the observed ranks, and no
        # less than the medians of the effective ranks (the lower one read 2 beside a
        # participation ratio of 2.5, from ranks 2 and 4: a walkthrough)
        "rank": int(np.quantile([s["n"] for s in stats], 0.5, method="higher")),
        "participation ratio": _sig(np.median([s["participation_ratio"] for s in stats])),
        "entropy rank": _sig(np.median([s["entropy_rank"] for s in stats])),
        "dominant share": _sig(np.median([s["dominant_share"] for s in stats])),
        "decay slope": _sig(np.median(slopes)) if slopes else float("nan"),
    }


def _sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (a table shows 12.3, not 12.345678)."""
    return float(f"{float(value):.{digits}g}")


def _trained_horizons(ctx: PanelContext, names: tuple[str, ...]) -> list[int]:
    data = resolve_inside(datasets_dir(ctx.root), ctx.selection.dataset)
    found = (
        loaders.trained_horizon(resolve_inside(checkpoints_dir(ctx.root), name), data)
        for name in names
    )
    return [h for h in found if h is not None]


HORIZON_MAX = "field_h_max"  # the horizon slider's range when last drawn


def rollout(ctx: PanelContext) -> None:
    """Panel 8: one-step vs rollout SMSE by horizon; prediction vs truth field viewer."""
    st.caption(
        how_to_read(rollout_figure)
        + " Whole test trajectories of the selected classes and trajectories, from the first "
        "snapshot; rolled out once, as a background job on this machine's CPU, and cached; "
        "`coherence study` and the demo roll out their models' default selections."
    )
    summaries, horizons = {}, {}
    try:
        per_group = rollout_runs(ctx)
        if per_group is None:
            return
        for group, runs in per_group.values():
            summaries[group.label] = rollout_summary(
                np.stack([r["one_step"] for r in runs]), np.stack([r["rollout"] for r in runs])
            )
            trained = _trained_horizons(ctx, group.checkpoints)
            if trained:
                horizons[group.label] = min(trained)  # seeds trained alike; else the shortest
    except CoherenceError as error:
        st.warning(f"Rollouts are not available for this selection: {literal(error)}")
        return
    figure = rollout_figure(summaries, trained_horizons=horizons)
    chart(figure, key="chart_rollout")
    meta = ctx.meta("rollout")
    pooled = meta | {  # the band pools seeds, as no other panel's does
        f"{label}: median and Q1–Q3 over": f"{s['n_samples']} rollouts, every (seed, class, "
        "test trajectory) pooled"
        for label, s in summaries.items()
    }
    downloads(
        "rollout",
        ctx.stem("rollout"),
        figure=figure,
        caption=how_to_read(rollout_figure),
        meta=meta,
        files=[ctx.panel_csv("rollout", lambda: rollout_csv(summaries), meta=pooled)],
    )
    _field_viewer(ctx, per_group)


def _horizon_state(horizon_max: int) -> None:
    """The horizon slider's value, set in its state and never passed as a default: a link's h
    is state already, and a default beside it made Streamlit log a warning with a stack
    trace. A new range (another trajectory length) starts at its last horizon, as the
    default did: Streamlit takes a slider with another range for a new widget, and without a
    value it would fall back to h = 1."""
    state = st.session_state
    if "field_h" not in state or state.get(HORIZON_MAX, horizon_max) != horizon_max:
        state["field_h"] = horizon_max
    state[HORIZON_MAX] = horizon_max


def _field_viewer(ctx: PanelContext, per_group: dict[str, tuple[GroupState, list]]) -> None:
    """Prediction vs truth of one rollout: checkpoint, class, trajectory, channel, horizon."""
    st.subheader("Prediction vs truth", anchor=False)
    st.caption(how_to_read(field_viewer))
    names = [n for g, _ in per_group.values() for n in g.checkpoints]
    cols = st.columns(5)
    name = cols[0].selectbox("Checkpoint", names, key="field_ckpt")
    class_name = cols[1].selectbox("Class", ctx.selection.classes, key="field_class")
    index = cols[2].selectbox("Trajectory", ctx.selection.trajectories, key="field_traj")
    channel = cols[3].selectbox("Channel", ctx.dataset.channels, key="field_channel")
    group, runs = next(v for v in per_group.values() if name in v[0].checkpoints)
    run = runs[group.checkpoints.index(name)]
    horizon_max = run["prediction"].shape[1] - 1
    keep_in_range("field_h", 1, max(horizon_max, 1), horizon_max)  # a link's h may not fit
    _horizon_state(horizon_max)
    horizon = cols[4].slider("Horizon h", 1, max(horizon_max, 1), key="field_h")
    row = ctx.selection.classes.index(class_name) * len(ctx.selection.trajectories) + list(
        ctx.selection.trajectories
    ).index(index)
    prediction, truth = run["prediction"][row, horizon], run["truth"][row, horizon]
    time = ctx.dataset.times[horizon]
    fields = field_viewer(
        prediction,
        truth,
        ctx.dataset.channels,
        channel,
        title=f"{name}: {class_name} test #{index}, rollout step {horizon} (t = {time:.3g})",
    )
    chart(fields, key="chart_fields")
    view = ctx.with_choices(
        checkpoint=name,
        class_name=class_name,
        trajectory=f"test{index}",
        channel=channel,
        horizon=f"h{horizon}",
    )
    # the npz holds every time and channel of the rollout: named without the shown ones (a
    # name that ended _density_h20 read as one channel at one horizon)
    whole = ctx.with_choices(checkpoint=name, class_name=class_name, trajectory=f"test{index}")
    downloads(  # named after the checkpoint's own group (compare mode: not "UNet-vs-ViT")
        "fields",
        view.stem("fields", group),
        figure=fields,
        caption=how_to_read(field_viewer),
        meta=view.meta("fields"),
        files=[
            npz_file(
                "Fields (npz)",
                f"{whole.stem('fields', group)}_all_times.npz",
                lambda: panel_npz(
                    {
                        "prediction": run["prediction"][row],
                        "truth": run["truth"][row],
                        "channels": np.asarray(ctx.dataset.channels),
                        "times": np.asarray(ctx.dataset.times),
                    }
                ),
            )
        ],
    )
