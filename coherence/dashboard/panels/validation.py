"""Panel 9 (METHOD.md §7): the counterfactual check on the user's own checkpoint.

Apply δθ_p = −ε M⁻¹ g_B(p) for a few ε and compare the measured change of every example's
response with the prediction −ε·D·H[r, p]; the relative error must fall with ε. Runs here,
as a background job when asked (one influence solve plus a few forward passes per ε), on
the analysis jobs' machinery (``coherence.cache.tasks``): progress, cancel, re-attach, and
a cached result under the check's content key.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from coherence.analysis.exports import counterfactual_csv, panel_npz, with_header
from coherence.analysis.figures import counterfactual_figures
from coherence.cache.tasks import COUNTERFACTUAL, counterfactual_spec
from coherence.dashboard import compute, loaders
from coherence.dashboard.control_rows import RESPONSE_LABELS
from coherence.dashboard.markup import literal
from coherence.dashboard.panels.common import (
    STALE_ACTION,
    PanelContext,
    chart,
    csv_file,
    downloads,
    how_to_read,
    npz_file,
)
from coherence.errors import CoherenceError
from coherence.workspace import checkpoints_dir, datasets_dir, resolve_inside


def _spec(ctx: PanelContext, params: dict[str, Any]) -> dict[str, Any]:
    """The check as a background job's spec (paths resolved inside the workspace)."""
    selection = ctx.selection
    return counterfactual_spec(
        checkpoint=resolve_inside(
            checkpoints_dir(ctx.root), selection.weights(params["checkpoint"])
        ),
        data=resolve_inside(datasets_dir(ctx.root), selection.dataset),
        classes=selection.classes,
        trajectory=params["trajectory"],
        t_start=selection.t_start,
        n_steps=selection.n_steps,
        perturbation=params["perturbation"],
        response=params["response"],
        estimator=selection.estimator,
        damping=selection.damping,
        rtol=selection.rtol,
    )


def _submit(root: str, spec: dict[str, Any]) -> None:
    """Button callback: start (or join) the check's background job."""
    compute.submit_tasks(root, COUNTERFACTUAL.name, (spec,), "cf_error", "the check's worker")


def _example_label(ctx: PanelContext, n: int) -> str:
    t, c = divmod(n, len(ctx.selection.classes))
    step = ctx.selection.t_start + t
    return f"#{n}: {ctx.selection.classes[c]} at step {step} (t = {ctx.dataset.times[step]:.3g})"


def validation(ctx: PanelContext) -> None:
    """Controls; then the cached check for them, its running job's progress, or a Run
    button that starts it in the background."""
    st.caption(
        "Checks the influence numbers on a checkpoint of yours: the parameters take a step "
        "θ − ε·M⁻¹g_B(p) along the estimator's own direction for example p, at a few step "
        "sizes ε, and the measured change of every example's response is compared with the "
        "change Ĥ[:, p] predicts. An error that falls in proportion to ε shows that the "
        "numbers are what the estimator's own step does on this checkpoint, computed right. "
        "It does not say how close the estimator is to the paper's full solve (every "
        "estimator passes, `euclidean` too): the residual line and the Sensitivity tab do."
    )
    params = _controls(ctx)
    runner = loaders.job_runner(str(ctx.root))
    try:
        spec = _spec(ctx, params)
        key = runner.task_key(COUNTERFACTUAL.name, spec)
    except CoherenceError as error:
        st.error(literal(error))
        return
    status = runner.status(key)
    checkpoint = params["checkpoint"]
    if status.active:  # a background job: reload, other tabs and visitors re-attach to it
        compute.progress_panel(str(ctx.root), (f"Check on {checkpoint}",), (key,), "cf_")
        return
    st.session_state.pop("cf_cancel_requested", None)
    found = loaders.artifact(str(ctx.root), key) if status.state == "done" else None
    if found is None:
        _not_computed(ctx, status, checkpoint, spec)
    else:
        _show_result(ctx, *found, params)


def _controls(ctx: PanelContext) -> dict[str, Any]:
    """The check's choices: checkpoint, batch, perturbed example, response."""
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
    response = cols[3].selectbox(
        "Response",
        ctx.selection.responses,
        format_func=lambda r: RESPONSE_LABELS.get(r, r),  # as the sidebar names them
        key="cf_response",
    )
    return {
        "checkpoint": checkpoint,
        "trajectory": int(trajectory),
        "perturbation": int(perturbation),
        "response": response,
    }


def _not_computed(ctx: PanelContext, status: Any, checkpoint: str, spec: dict[str, Any]) -> None:
    """Why there is no result (failed, cancelled, not started) and the Run button."""
    if status.state == "failed":
        st.error(f"The check failed: {literal(status.error)}")
    elif status.state == "cancelled":
        st.warning("The check was cancelled; run it again.")
    if error := st.session_state.get("cf_error"):
        st.error(literal(error))
    st.info(
        f"Press **Run check** to validate the {ctx.selection.estimator} estimator on "
        f"{literal(checkpoint)} (λ = {ctx.selection.damping:g}). It runs as a background "
        "job (progress, cancel; the page stays usable) and its result is cached."
    )
    _estimate(ctx, checkpoint)
    if ctx.stale:
        st.caption(STALE_ACTION)
    st.button(
        "Run check",
        key="cf_run",
        disabled=ctx.stale,
        icon=":material/science:",
        type="primary",
        on_click=_submit,
        args=(str(ctx.root), spec),
    )


def _estimate(ctx: PanelContext, checkpoint: str) -> None:
    """The check's cost before the click: one analysis unit of this checkpoint's group (the
    solve for one batch) timed in float64, the check's precision; the ε sweep's forward
    passes barely add to it."""
    group = next((g for g in ctx.groups if checkpoint in g.checkpoints), None)
    if group is None or group.request is None:
        return
    unit_seconds, _, bound = compute.job_cost(group.request, float64=True)
    if unit_seconds > 0:
        limit = compute.UP_TO if bound else ""
        st.caption(
            f"Estimated time: ≈ {compute.format_duration(unit_seconds)}{limit}: the solve for "
            "this batch in float64, then a forward pass per ε."
        )


def _show_result(
    ctx: PanelContext, arrays: dict[str, Any], metadata: dict[str, Any], params: dict[str, Any]
) -> None:
    """The cached check: the error at the smallest ε, both figures, their downloads, named
    and headed by the check's own choices (every check downloaded under one name, and its
    files named all three seeds and every response but not the one checkpoint, example and
    response checked)."""
    found = {**arrays, "seconds": float(metadata.get("seconds", float("nan")))}
    eps, errors = found["epsilons"], found["rel_errors"]
    smallest = int(np.argmin(eps))
    st.caption(
        f"Relative error {errors[smallest]:.2g} at ε = {eps[smallest]:.1e} "
        f"(computed in {found['seconds']:.1f} s)."
    )
    st.caption(how_to_read(counterfactual_figures))  # the two charts below
    scatter, curve = counterfactual_figures(eps, found["predicted"], found["measured"], errors)
    left, right = st.columns(2)
    with left:
        chart(scatter, key="chart_cf_scatter")
    with right:
        chart(curve, key="chart_cf_curve")
    view = ctx.with_choices(
        checkpoint=params["checkpoint"],
        batch=f"traj{params['trajectory']}",
        example=f"p{params['perturbation']}",
        response=params["response"],
    )
    meta = view.meta() | {
        "perturbed example": _example_label(ctx, params["perturbation"]),
        "epsilons": [float(e) for e in eps],
    }
    caption = how_to_read(counterfactual_figures)
    downloads(
        "cf_scatter",
        view.stem("counterfactual_scatter"),
        figure=scatter,
        caption=caption,
        meta=meta,
        what="Scatter (a)",
    )
    stem = view.stem("counterfactual")
    downloads(
        "cf",
        stem,
        figure=curve,
        caption=caption,
        meta=meta,
        what="Error curve (b)",
        files=[
            csv_file(
                "Errors (CSV)",
                f"{stem}.csv",
                lambda: with_header(counterfactual_csv(eps, errors), meta),
            ),
            npz_file(
                "All arrays (npz)",
                f"{stem}.npz",
                lambda: panel_npz({k: v for k, v in found.items() if k != "seconds"}),
            ),
        ],
    )
