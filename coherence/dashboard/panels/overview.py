"""Panel 1: the dataset (animated snapshots per class, channel picker) and the models
(parameters, training and validation curves across seeds)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from coherence.analysis.exports import panel_npz, training_curves_csv
from coherence.analysis.figures import snapshot_animation, training_curves_figure
from coherence.analysis.summaries import training_curves
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    downloads,
    how_to_read,
    npz_file,
)
from coherence.errors import CoherenceError
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside

FAMILIES = {"euler": "Compressible Euler", "ns": "Incompressible Navier–Stokes"}


def overview(ctx: PanelContext) -> None:
    entry = ctx.dataset
    st.subheader(f"Dataset {literal(entry.name)}", anchor=False)
    h, w = entry.resolution
    family = FAMILIES.get(entry.family, entry.family)
    # one line, not four metrics: a metric cut "Compressible Euler" to "Compr…" at 1024 px
    st.markdown(
        f"**{literal(family)}** · grid {h} × {w} · {len(entry.times)} snapshots "
        f"(t ≤ {entry.times[-1]:.3g}) · {len(entry.classes)} classes"
    )
    st.dataframe(
        [
            {"class": c, **{split: entry.counts.get(split, {}).get(c, 0) for split in entry.counts}}
            for c in entry.classes
        ],
        hide_index=True,
    )
    _snapshots(ctx)
    st.subheader("Models", anchor=False)
    _models(ctx)


def _snapshots(ctx: PanelContext) -> None:
    entry = ctx.dataset
    st.caption(how_to_read(snapshot_animation))
    cols = st.columns(3)
    class_name = cols[0].selectbox("Class", entry.classes, key="ov_class")
    index = cols[1].selectbox(
        "Test trajectory",
        list(range(entry.counts.get("test", {}).get(class_name, 0))),
        key="ov_traj",
    )
    channel = cols[2].selectbox("Channel", entry.channels, key="ov_channel")
    path = resolve_inside(datasets_dir(ctx.root), entry.name)
    try:
        states = loaders.trajectory(str(path), "test", class_name, int(index or 0))
    except CoherenceError as error:
        st.warning(f"Cannot read this trajectory: {literal(error)}")
        return
    figure = snapshot_animation(
        states,
        np.asarray(entry.times),
        entry.channels,
        channel,
        title=f"{class_name}, test trajectory {index}, {channel}:",
    )
    chart(figure, key="chart_snapshots")
    # named by the dataset and the view alone: two channels had downloaded under one name,
    # with the analysis's window, estimator and λ, which this panel does not read
    view = ctx.with_choices(class_name=class_name, trajectory=f"test{index}", channel=channel)
    stem = view.stem("snapshots")
    # the states hold every channel: their file is named without one (two names, one content)
    states_stem = ctx.with_choices(class_name=class_name, trajectory=f"test{index}").stem(
        "snapshots"
    )
    downloads(
        "snapshots",
        stem,
        figure=figure,
        caption=how_to_read(snapshot_animation),
        meta=view.meta("snapshots"),
        files=[
            npz_file(
                "States (npz)",
                f"{states_stem}.npz",
                lambda: panel_npz(
                    {
                        "states": states,
                        "times": np.asarray(entry.times),
                        "channels": np.asarray(entry.channels),
                    }
                ),
            )
        ],
    )


def _models(ctx: PanelContext) -> None:
    rows, curves = [], {}
    for group in ctx.groups:
        histories = []
        for name in group.checkpoints:
            path = resolve_inside(checkpoints_dir(ctx.root), name)
            entry = ctx.catalog.checkpoint(name)
            try:
                parameters = loaders.parameters(path)
            except CoherenceError as error:
                st.warning(literal(f"{name}: {error}"))
                parameters = None
            try:  # one seed's damaged history.json: said for it, the others' rows stay
                history = loaders.history(path)
            except CoherenceError as error:
                st.warning(literal(f"{name}: no training history shown ({error})"))
                history = []
            if history:
                histories.append(history)
            last = history[-1] if history else {}
            rows.append(
                {
                    "group": group.label,
                    "checkpoint": name,
                    "architecture": entry.arch if entry else "?",
                    "seed": entry.seed if entry else None,
                    "parameters": parameters,
                    "trained on": entry.dataset_name if entry else "?",
                    "epochs": len(history),
                    "final train SMSE": last.get("train_smse"),
                    "final validation SMSE": last.get("valid_smse"),
                }
            )
        if histories:
            try:
                curves[group.label] = training_curves(histories)
            except CoherenceError as error:
                st.warning(literal(f"{group.label}: no training curves ({error})"))
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={  # 273,300 rather than 273300; errors to 3 significant digits
            "parameters": st.column_config.NumberColumn(format="localized"),
            "final train SMSE": st.column_config.NumberColumn(format="%.3g"),
            "final validation SMSE": st.column_config.NumberColumn(format="%.3g"),
        },
    )
    if not curves:
        st.info("These checkpoints carry no training history (history.json).")
        return
    st.caption(how_to_read(training_curves_figure))
    figure = training_curves_figure(curves)
    chart(figure, key="chart_training")
    downloads(
        "training",
        ctx.stem("training"),
        figure=figure,
        caption=how_to_read(training_curves_figure),
        meta=ctx.meta("training"),
        files=[ctx.panel_csv("training", lambda: training_curves_csv(curves))],
    )
