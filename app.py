"""Coherence Explorer dashboard (Streamlit): a thin router from selections to figures.

Run with `coherence serve` (or `make run`). The panels arrive with the dashboard issue; this
page says what the workspace holds today.
"""

from __future__ import annotations

import streamlit as st

from coherence.workspace import checkpoints_dir, datasets_dir, workspace_root


def run() -> None:
    st.set_page_config(page_title="Coherence Explorer", page_icon="🌀", layout="wide")
    st.title("Coherence Explorer")
    st.caption(
        "Influence diagnostics for autoregressive PDE surrogates: did the model learn the "
        "physics or memorize its training data?"
    )
    root = workspace_root()
    datasets = sorted(p.name for p in datasets_dir().glob("*") if p.is_dir())
    checkpoints = sorted(p.name for p in checkpoints_dir().glob("*") if p.is_dir())
    st.write(f"Workspace: `{root}`")
    col_data, col_ckpt = st.columns(2)
    col_data.metric("Datasets", len(datasets))
    col_data.write("\n".join(f"- {name}" for name in datasets) or "none yet")
    col_ckpt.metric("Checkpoints", len(checkpoints))
    col_ckpt.write("\n".join(f"- {name}" for name in checkpoints) or "none yet")
    st.info(
        "Coming next: surrogate training, the influence engine, and interactive panels "
        "(two-time heatmaps, class transfer matrices, time-lag curves, NTK spectra)."
    )


run()
