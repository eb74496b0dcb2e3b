"""Counterfactual check: the measured effect of an actual update matches −ε·D·H[:, p] with an
error that falls linearly in ε, for every estimator and response, on tiny models and on a
trained demo-preset UNet."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from coherence.analysis.influence import compute_influence
from coherence.analysis.verify import counterfactual_check, preconditioned_gradients
from coherence.errors import RequestError
from coherence.simulation.dataset import SimulationRequest, generate_dataset, open_dataset
from coherence.surrogates import checkpoint as ckpt
from coherence.surrogates.training import TrainingArgs, train
from tests.analysis.fixtures import dense_reference

STEPS = (1e-2, 1e-3, 1e-4)


def assert_first_order(result):
    errors = result.rel_errors
    assert np.all(np.isfinite(errors)), errors
    # second-order remainder: a tenfold smaller step cuts the error about tenfold
    for big, small in itertools.pairwise(errors):
        assert small < 0.3 * big, errors
    assert errors[-1] < 1e-2, errors


@pytest.mark.parametrize(
    ("estimator", "rtol"), [("subspace", None), ("cg", 1e-10), ("euclidean", None)]
)
@pytest.mark.parametrize("response", ["smse", "mass", "energy"])
def test_counterfactual_error_shrinks_linearly(
    single_thread, ce_model, ce_batch, estimator, rtol, response
):
    x, y = ce_batch
    result = counterfactual_check(
        ce_model,
        x,
        y,
        perturbation=2,
        estimator=estimator,
        response=response,
        rtol=rtol,
        relative_steps=STEPS,
    )
    assert result.predicted.shape == result.measured.shape == (3, 6)
    assert_first_order(result)
    # the model itself is untouched (the check works on a float64 copy)
    assert next(ce_model.parameters()).dtype == torch.float64


def test_directions_match_the_dense_solve(single_thread, ce_model, ce_batch):
    """M⁻¹ g_B(p) against dense float64 algebra: (η + λI)⁻¹ g for cg, the Galerkin
    Q(QᵀηQ + λI)⁻¹Qᵀg for subspace, g itself for euclidean. λ = 1 keeps κ(η + λI) ≈ 5e3,
    so CG at rtol 1e-12 pins the solution to ~1e-9."""
    x, y = ce_batch
    ref = dense_reference(ce_model, x, y)
    g = ref.grads("smse")[[1, 4]]  # (2, P)
    eye = torch.eye(g.shape[1], dtype=g.dtype)
    expected_cg = torch.linalg.solve(ref.eta + 1.0 * eye, g.T).T
    q = torch.from_numpy(ref.basis(1 - 1e-4))
    small = torch.linalg.solve(
        q.T @ ref.eta @ q + 1.0 * torch.eye(q.shape[1], dtype=q.dtype), q.T @ g.T
    )
    expected_subspace = (q @ small).T
    for estimator, rtol, expected in (
        ("cg", 1e-12, expected_cg),
        ("subspace", None, expected_subspace),
        ("euclidean", None, g),
    ):
        direction = preconditioned_gradients(
            ce_model, x, y, [1, 4], estimator=estimator, damping=1.0, rtol=rtol
        )
        torch.testing.assert_close(direction, expected, rtol=1e-6, atol=1e-8 * expected.abs().max())


def test_bad_arguments(ce_model, ce_batch):
    x, y = ce_batch
    with pytest.raises(RequestError, match=r"choose an example 0\.\.5"):
        counterfactual_check(ce_model, x, y, perturbation=9)
    with pytest.raises(RequestError, match="values in"):
        counterfactual_check(ce_model, x, y, perturbation=0, relative_steps=(2.0,))
    with pytest.raises(RequestError, match="rtol"):
        counterfactual_check(ce_model, x, y, perturbation=0, estimator="cg")


@pytest.mark.slow
def test_counterfactual_on_a_trained_demo_unet(tmp_path):
    """Real Euler data, the demo UNet preset trained for two epochs, float32 weights."""
    data = generate_dataset(
        SimulationRequest(
            family="euler",
            classes=("CE-RP", "CE-CRP"),
            trajectories=4,
            resolution=16,
            snapshots=5,
            t_end=0.2,
        ),
        tmp_path / "ce",
    )
    out = train(
        data,
        tmp_path / "unet",
        TrainingArgs(arch="unet", preset="demo", epochs=2, transitions=4, device="cpu"),
    )
    model, _ = ckpt.load(out)
    states = torch.from_numpy(open_dataset(data).load("test", "CE-RP"))
    x, y = states[0, :-1], states[0, 1:]
    result = counterfactual_check(model, x, y, perturbation=1, relative_steps=STEPS)
    assert_first_order(result)


@pytest.mark.parametrize("estimator", ["subspace", "krylov", "ekfac-krylov"])
def test_directions_are_the_solve_behind_h(single_thread, ce_model, ce_batch, generator, estimator):
    """The counterfactual check steps along preconditioned_gradients and compares with
    compute_influence's H: with every option left at its default, both must come from one
    solve, so H[r, p] = g_A(r)ᵀ y_p / D to rounding (krylov's default energy threshold is 1,
    subspace's 1 − 1e-4). Example 5 nearly repeats example 4, so G has a direction under the
    1e-4 energy cut and the threshold changes the directions by 17–56 %."""
    x, y = (t.clone() for t in ce_batch)
    x[5] = x[4] + 1e-4 * torch.randn(x[4].shape, generator=generator, dtype=x.dtype)
    y[5] = y[4]
    ref = dense_reference(ce_model, x, y)
    columns = [0, 3, 5]
    directions = preconditioned_gradients(ce_model, x, y, columns, estimator=estimator)
    H = compute_influence(ce_model, x, y, estimator=estimator).H
    from_directions = ref.grads("smse") @ directions.T / ref.jac.shape[1]
    torch.testing.assert_close(H[:, columns].double(), from_directions, rtol=1e-7, atol=1e-12)


def test_the_check_solves_once_and_reports_progress_to_the_end(ce_model, ce_batch, monkeypatch):
    """H and the step direction come from one solve (a second solve in float64 doubled the
    check's time and ran without progress, so a cancel waited minutes for it), and the
    direction is the one preconditioned_gradients gives."""
    from coherence.analysis import influence, metric_solve, verify

    solves = []
    real = metric_solve.solve_metric
    for module in (influence, verify):  # every module that calls it by its own name
        monkeypatch.setattr(
            module, "solve_metric", lambda *a, **k: solves.append(1) or real(*a, **k)
        )
    fractions = []
    result = counterfactual_check(
        ce_model, *ce_batch, perturbation=2, progress=lambda f, stage: fractions.append(f)
    )
    assert len(solves) == 1
    assert fractions == sorted(fractions) and fractions[-1] >= 0.9
    x, y = (t.double() for t in ce_batch)
    model64 = copy.deepcopy(ce_model).double()
    direction = preconditioned_gradients(model64, x, y, [2])[0]
    column = compute_influence(model64, x, y).H[:, 2].numpy()
    theta = torch.cat([p.detach().reshape(-1) for p in model64.parameters()])
    step = 1e-1  # the first default relative step: ‖ε·direction‖ = step·‖θ‖
    eps = step * float(theta.norm() / direction.norm())
    assert result.epsilons[0] == pytest.approx(eps, rel=1e-9)
    d = math.prod(x.shape[1:])
    np.testing.assert_allclose(result.predicted[0], -eps * d * column, rtol=1e-9)
