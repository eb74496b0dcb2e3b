"""Panel 9 (METHOD.md §7): the counterfactual check on the user's own checkpoint.

Apply δθ_p = −ε M⁻¹ g_B(p) for a few ε and compare the measured change of every example's
response with the prediction −ε·D·H[r, p]; the relative error must fall with ε. Runs here,
on the CPU, when asked (one influence solve plus a few forward passes per ε).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import streamlit as st

from coherence.analysis.batch import assemble_batch
from coherence.analysis.exports import counterfactual_csv, figure_html, panel_npz
from coherence.analysis.figures import counterfactual_figures
from coherence.dashboard import loaders
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    PanelContext,
    chart,
    csv_file,
    downloads,
    how_to_read,
    npz_file,
)
from coherence.errors import CoherenceError
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside

RESULTS_KEY = "counterfactual_results"


def _check_function():
    """The engine's counterfactual check, or None when this installation lacks it."""
    try:
        from coherence.analysis.verify import counterfactual_check
    except ImportError:
        return None
    return counterfactual_check


def _run(ctx: PanelContext, params: dict[str, Any]) -> dict[str, Any]:
    check = _check_function()
    if check is None:
        raise CoherenceError(
            "the counterfactual check (coherence.analysis.verify) is not part of this "
            "installation; update Coherence Explorer to use this panel"
        )
    info = loaders.dataset(resolve_inside(datasets_dir(ctx.root), ctx.selection.dataset))
    batch = assemble_batch(
        info,
        ctx.selection.classes,
        params["trajectory"],
        ctx.selection.t_start,
        ctx.selection.n_steps,
    )
    net, _ = loaders.model(resolve_inside(checkpoints_dir(ctx.root), params["checkpoint"]))
    net = copy.deepcopy(net)  # the check moves parameters; the cached model is shared
    started = time.perf_counter()
    out = check(
        net,
        batch.inputs,
        batch.targets,
        perturbation=params["perturbation"],
        estimator=ctx.selection.estimator,
        response=params["response"],
        damping=ctx.selection.damping,
        rtol=ctx.selection.rtol,
    )
    return {
        "epsilons": np.asarray(out.epsilons, dtype=np.float64),
        "predicted": np.asarray(out.predicted, dtype=np.float64),
        "measured": np.asarray(out.measured, dtype=np.float64),
        "rel_errors": np.asarray(out.rel_errors, dtype=np.float64),
        "seconds": time.perf_counter() - started,
    }


def _example_label(ctx: PanelContext, n: int) -> str:
    t, c = divmod(n, len(ctx.selection.classes))
    step = ctx.selection.t_start + t
    return f"#{n}: {ctx.selection.classes[c]} at step {step} (t = {ctx.dataset.times[step]:.3g})"


def validation(ctx: PanelContext) -> None:
    """Controls, a Run button, and the two figures of the last run for these controls."""
    st.caption(how_to_read(counterfactual_figures))
    if _check_function() is None:
        st.warning(
            "The counterfactual check (coherence.analysis.verify) is not part of this "
            "installation yet, so this panel cannot run it."
        )
        return
    cols = st.columns(4)
    names = [n for g in ctx.groups for n in g.checkpoints]
    checkpoint = cols[0].selectbox("Checkpoint", names, key="cf_ckpt")
    trajectory = cols[1].selectbox("Batch (trajectory)", ctx.selection.trajectories, key="cf_traj")
    perturbation = cols[2].selectbox(
        "Perturbed example p",
        list(range(ctx.n_examples)),
        format_func=lambda n: _example_label(ctx, n),
        key="cf_p",
    )
    response = cols[3].selectbox("Response", ctx.selection.responses, key="cf_response")
    params = {
        "checkpoint": checkpoint,
        "trajectory": int(trajectory),
        "perturbation": int(perturbation),
        "response": response,
        "estimator": ctx.selection.estimator,
        "damping": ctx.selection.damping,
        "rtol": ctx.selection.rtol,
        "window": (ctx.selection.t_start, ctx.selection.n_steps),
        "classes": ctx.selection.classes,
        "dataset": ctx.selection.dataset,
    }
    token = repr(sorted(params.items()))
    results = st.session_state.setdefault(RESULTS_KEY, {})
    if st.button("Run check", key="cf_run", icon=":material/science:", type="primary"):
        with st.spinner(f"Perturbing {literal(checkpoint)} along example {perturbation}…"):
            try:
                results[token] = _run(ctx, params)
            except CoherenceError as error:
                st.error(literal(error))
                return
    found = results.get(token)
    if found is None:
        st.info(
            f"Press **Run check** to validate the {ctx.selection.estimator} estimator on "
            f"{literal(checkpoint)} (λ = {ctx.selection.damping:g})."
        )
        return
    eps, errors = found["epsilons"], found["rel_errors"]
    smallest = int(np.argmin(eps))
    st.caption(
        f"Relative error {errors[smallest]:.2g} at ε = {eps[smallest]:.1e} "
        f"(computed in {found['seconds']:.1f} s)."
    )
    scatter, curve = counterfactual_figures(eps, found["predicted"], found["measured"], errors)
    left, right = st.columns(2)
    with left:
        chart(scatter, key="chart_cf_scatter")
    with right:
        chart(curve, key="chart_cf_curve")
    stem = ctx.stem("counterfactual")
    downloads(
        "cf",
        stem,
        figure=curve,
        caption=how_to_read(counterfactual_figures),
        meta=ctx.meta(),
        files=[
            ("Scatter (HTML)", f"{stem}_scatter.html", lambda: figure_html(scatter), "text/html"),
            csv_file("Errors (CSV)", f"{stem}.csv", lambda: counterfactual_csv(eps, errors)),
            npz_file(
                "All arrays (npz)",
                f"{stem}.npz",
                lambda: panel_npz({k: v for k, v in found.items() if k != "seconds"}),
            ),
        ],
    )
