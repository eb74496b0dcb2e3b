"""The whole job's estimate before it starts, the confirmation above the threshold, and the
cg convergence warning of `coherence analyze` (fresh and served from the cache)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from coherence.analysis.influence import CG_MAX_ITER, compute_influence
from coherence.analysis.pipeline import (
    JVP_PASSES,
    PRIMAL_PASSES,
    VJP_PASSES,
    estimate_cost,
    load_checked,
    prepare,
)
from coherence.cache import JobRunner, cost
from coherence.cache.cost import CONFIRM_ENV, estimate_job, estimate_time
from coherence.cli import app
from coherence.errors import ConvergenceWarning, RequestError
from tests.fixtures import quick_request


def first_batch(request):
    info, batches = prepare(request)
    model, _ = load_checked(request.checkpoints[0], info, torch.device("cpu"))
    return model, batches[0].inputs


def test_estimate_totals_every_unit(checkpoint, tiny_dataset, tmp_path, monkeypatch):
    second = shutil.copytree(checkpoint, tmp_path / "second")
    request = quick_request(
        checkpoint, tiny_dataset, checkpoints=(str(checkpoint), str(second)), trajectories=(0, 1)
    )
    model, inputs = first_batch(request)
    estimate = estimate_job(model, request, inputs)
    per_unit = estimate_cost(model, request, inputs)
    assert estimate.units == 4 and estimate.unit_passes == per_unit.forward_passes
    assert estimate.total_seconds == pytest.approx(4 * estimate.unit_seconds)
    assert 0 < estimate.unit_seconds < 60 and not estimate.upper_bound
    assert "whole job ≈" in estimate.describe() and "4 × (checkpoint, batch)" in estimate.describe()
    # seconds per unit = passes · (one batch forward / N): check the passes for cg
    cg = estimate_job(
        model, quick_request(checkpoint, tiny_dataset, estimator="cg", rtol=0.1), inputs
    )
    n = per_unit.n_examples
    assert n == 4 and per_unit.forward_passes == VJP_PASSES * n  # euclidean: N VJPs
    # + N columns × (JVP + VJP) through the batch per iteration, at the iteration cap
    matvec = n * (JVP_PASSES + VJP_PASSES)
    # deflated start (the default): plus the krylov solve (depth 4) and N VJPs for the last
    # block's AQ
    krylov = n * PRIMAL_PASSES + 4 * n * n * (JVP_PASSES + VJP_PASSES)
    start = krylov + n * n * VJP_PASSES
    assert cg.unit_passes == pytest.approx(VJP_PASSES * n + CG_MAX_ITER * n * matvec + start)
    assert cg.upper_bound and "whole job up to" in cg.describe()
    capped = estimate_job(  # --max-iter: counted at the request's own cap
        model,
        quick_request(checkpoint, tiny_dataset, estimator="cg", rtol=0.1, max_iter=2000),
        inputs,
    )
    assert capped.unit_passes == pytest.approx(VJP_PASSES * n + 2000 * n * matvec + start)
    assert cg.unit_seconds / cg.unit_passes > 0

    monkeypatch.setenv(CONFIRM_ENV, "0")
    assert estimate.needs_confirmation
    monkeypatch.setenv(CONFIRM_ENV, "1e6")
    assert not estimate.needs_confirmation
    monkeypatch.setenv(CONFIRM_ENV, "soon")
    with pytest.raises(RequestError, match=r"COHERENCE_CONFIRM_MINUTES.*minutes ≥ 0"):
        _ = estimate.needs_confirmation


def analyze_args(checkpoint, data, out, workspace, *extra: str) -> list[str]:
    return [
        "analyze",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--classes",
        "CE-RP,CE-CRP",
        "--window",
        "0:2",
        "--out",
        str(out),
        "--workspace",
        str(workspace),
        *extra,
    ]


def test_cli_asks_before_a_long_job(checkpoint, tiny_dataset, workspace, tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIRM_ENV, "0")  # every job is "long"
    args = analyze_args(checkpoint, tiny_dataset, tmp_path / "R.npz", workspace)
    refused = CliRunner().invoke(app, args)  # no terminal: refuse, say how
    assert refused.exit_code == 2, refused.output
    assert "whole job" in refused.output and "pass --yes" in refused.output
    assert not (tmp_path / "R.npz").exists()
    assert JobRunner(workspace).store.info()["entries"] == 0
    started = CliRunner().invoke(app, [*args, "--yes"])
    assert started.exit_code == 0, started.output
    assert (tmp_path / "R.npz").exists()
    cached = CliRunner().invoke(app, args)  # served from the cache: nothing to confirm
    assert cached.exit_code == 0 and "cached result" in cached.output, cached.output


def test_cli_warns_about_unconverged_cg_from_the_cached_diagnostics(
    checkpoint, tiny_dataset, workspace, tmp_path
):
    """The warning comes from the result's diagnostics, so a cached result warns as well; a
    real unconverged cg cell (max_iter=3) stands in for a 500-iteration run."""
    runner = JobRunner(workspace)
    euclidean = runner.run(quick_request(checkpoint, tiny_dataset, n_steps=2))
    cg_request = quick_request(  # what the command below asks for
        checkpoint, tiny_dataset, estimator="cg", rtol=1e-9, top_eigenvalue=True
    )
    model, inputs = first_batch(cg_request)
    with pytest.warns(ConvergenceWarning):
        cell = compute_influence(
            model, inputs, inputs, estimator="cg", rtol=1e-9, max_iter=3
        ).diagnostics.to_dict()
    planted = replace(euclidean, request=cg_request, diagnostics=[[cell]])
    runner.store.put(runner.key(cg_request), planted)
    assert runner.result(runner.key(cg_request)).diagnostics[0][0]["converged"] is False

    extra = ("--estimator", "cg", "--rtol", "1e-9")
    args = analyze_args(checkpoint, tiny_dataset, tmp_path / "R.npz", workspace, *extra)
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "cached result" in run.output and "warning:" in run.output
    assert "cg did not converge in 1 of 1" in run.output
    assert f"worst relative residual {cell['worst_residual']:.3g}" in run.output


def test_the_time_alone_is_the_jobs_time(checkpoint, tiny_dataset, monkeypatch):
    """The dashboard's estimate (seconds only, no memory count and so no trace) gives the
    figures the command line's full estimate gives, for every estimator kind."""
    monkeypatch.setattr(cost, "time_batch_forward", lambda model, inputs: 0.25)
    for changes in ({}, {"estimator": "cg", "rtol": 0.1}, {"estimator": "ekfac-krylov"}):
        request = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1), **changes)
        model, inputs = first_batch(request)
        full, alone = estimate_job(model, request, inputs), estimate_time(model, request, inputs)
        assert (
            (alone.units, alone.upper_bound)
            == (full.units, full.upper_bound)
            == (2, "rtol" in changes)
        )
        assert alone.unit_seconds == pytest.approx(full.unit_seconds) and alone.unit_seconds > 0
