"""Counterfactual check (METHOD.md §7): does H predict what an actual update does?

For a perturbation example p, take the step δθ = −ε M⁻¹ g_B(p) (the estimator's own M⁻¹) on a
float64 copy of the parameters and measure, for every response example r, the change of
⟨r_A(r), ŷ_r⟩ (r_A frozen at θ, as in H's definition). To first order it is

    Δ⟨r_A(r), ŷ_r⟩ ≈ ⟨r_A(r), J_r δθ⟩ = −ε g_A(r)ᵀ M⁻¹ g_B(p) = −ε · D · H[r, p],

so the relative error ‖measured − predicted‖ / ‖predicted‖ over r must fall roughly linearly
with ε (second-order terms), until float64 round-off. This validates the estimator, the
gradients and H's assembly on the user's own checkpoint.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from coherence.analysis.autodiff import FlatModel, evaluation_mode, per_example_vjps
from coherence.analysis.influence import influence_with
from coherence.analysis.metric_solve import solve_metric
from coherence.analysis.observables import residual
from coherence.analysis.precision import ieee_float32
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.vocabulary import (
    DEFAULT_ESTIMATOR,
    Response,
    parse_estimator,
    parse_response,
)
from coherence.errors import RequestError


@dataclass(frozen=True)
class CounterfactualResult:
    """Predicted and measured response changes for each step size."""

    perturbation: int
    estimator: str
    response: str
    relative_steps: np.ndarray  # [K] ‖δθ‖ / ‖θ‖
    epsilons: np.ndarray  # [K] ε in δθ = −ε M⁻¹ g_B(p)
    predicted: np.ndarray = field(repr=False)  # [K, N] −ε · D · H[r, p]
    measured: np.ndarray = field(repr=False)  # [K, N] Δ⟨r_A(r), ŷ_r⟩
    rel_errors: np.ndarray  # [K] ‖measured − predicted‖ / ‖predicted‖

    def to_dict(self) -> dict:
        return {
            "perturbation": self.perturbation,
            "estimator": self.estimator,
            "response": self.response,
            "relative_steps": self.relative_steps.tolist(),
            "epsilons": self.epsilons.tolist(),
            "rel_errors": self.rel_errors.tolist(),
        }


def preconditioned_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    columns: Sequence[int],
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    damping: float = 1e-4,
    rtol: float | None = None,
    energy_threshold: float | None = None,
    max_iter: int = 500,
    depth: int | None = None,
    cg_start: str = "deflated",
) -> Tensor:
    """M⁻¹ g_B(p) for the perturbation columns p, as rows [k, P] (the proximal directions).

    The same solve as ``compute_influence`` (``metric_solve.solve_metric``, all N columns: the
    same arithmetic gives the same y_p): subspace and krylov their Galerkin solutions, cg the
    CG solution at ``rtol``, euclidean g_B(p). The options are checked by InfluenceOptions;
    ``energy_threshold`` None is the estimator's default, as in ``compute_influence``
    (krylov, ekfac-krylov and cg keep every direction, subspace 1 − 1e-4), so that the
    counterfactual check steps along the very solve behind the H it checks.
    """
    options = InfluenceOptions(
        estimator=estimator,
        damping=damping,
        rtol=rtol,
        energy_threshold=energy_threshold,
        max_iter=max_iter,
        depth=depth,
        cg_start=cg_start,
    )
    with evaluation_mode(model), ieee_float32():
        fm = FlatModel(model)
        with torch.no_grad():
            prediction = fm(fm.theta, inputs)
        (g,) = per_example_vjps(fm, inputs, [residual(Response.SMSE, prediction, inputs, targets)])
        index = torch.as_tensor(list(columns), device=g.device)
        solved = solve_metric(options, fm, inputs, g)
        return solved.directions(index, Response.SMSE).detach()


def counterfactual_check(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    perturbation: int,
    estimator: str = DEFAULT_ESTIMATOR,
    response: str = "smse",
    damping: float = 1e-4,
    rtol: float | None = None,
    relative_steps: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4),
    progress: Callable[[float, str], None] | None = None,
) -> CounterfactualResult:
    """Compare −ε·D·H[:, p] with the measured change under δθ = −ε M⁻¹ g_B(p), in float64.

    ε is chosen so that ‖δθ‖ = step · ‖θ‖ for each relative step. The model is not modified
    (a float64 deep copy is evaluated through functional_call). ``progress(fraction,
    stage)``, as for ``compute_influence`` (a background job checks for cancel there).
    """
    report = progress or (lambda fraction, stage: None)
    n = inputs.shape[0]
    if not 0 <= perturbation < n:
        raise RequestError(f"perturbation={perturbation}: choose an example 0..{n - 1}")
    if not relative_steps or any(not (0 < s < 1) for s in relative_steps):
        raise RequestError(f"relative_steps {list(relative_steps)}: values in (0, 1)")
    resp = parse_response(response)
    device = next(model.parameters()).device
    model64 = copy.deepcopy(model).to(device=device, dtype=torch.float64)
    x = inputs.to(device, torch.float64)
    y = targets.to(device, torch.float64)
    options = InfluenceOptions(
        estimator=estimator, responses=resp.value, damping=damping, rtol=rtol
    )
    # H and the direction M⁻¹g_B(p) from one solve (as preconditioned_gradients would give)
    influence = influence_with(
        model64,
        x,
        y,
        options,
        progress=lambda f, stage: report(0.9 * f, f"influence H: {stage}"),
        direction_columns=[perturbation],
    )
    column = influence.H[:, perturbation].double()  # (N,)
    assert influence.directions is not None
    direction = influence.directions[0]
    report(0.9, f"perturbed forward passes ({len(relative_steps)} steps)")
    epsilons, predicted, measured = _measure_steps(
        model64, x, y, resp, direction, column, relative_steps
    )
    return CounterfactualResult(
        perturbation=perturbation,
        estimator=parse_estimator(estimator).value,
        response=resp.value,
        relative_steps=np.asarray(relative_steps, dtype=float),
        epsilons=epsilons,
        predicted=predicted,
        measured=measured,
        rel_errors=_relative_errors(measured, predicted),
    )


def _relative_errors(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """‖measured − predicted‖ / ‖predicted‖ over the responses r, per step [K]."""
    return np.linalg.norm(measured - predicted, axis=1) / np.maximum(
        np.linalg.norm(predicted, axis=1), 1e-300
    )


def _measure_steps(
    model64: nn.Module,
    x: Tensor,
    y: Tensor,
    resp: Response,
    direction: Tensor,
    column: Tensor,
    relative_steps: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each step, ε with ‖ε·direction‖ = step·‖θ‖, the predicted change −ε·D·H[:, p] and
    the measured Δ⟨r_A(r), ŷ_r⟩ after θ − ε·direction (r_A frozen at θ, as in H):
    (ε [K], predicted [K, N], measured [K, N])."""
    d = math.prod(x.shape[1:])
    with evaluation_mode(model64), torch.no_grad():
        fm = FlatModel(model64)
        base = fm(fm.theta, x)
        r_a = residual(resp, base, x, y)  # frozen at θ, as in H
        scale = fm.theta.norm() / direction.norm().clamp_min(1e-300)
        epsilons, predicted, measured = [], [], []
        for step in relative_steps:
            eps = float(step * scale)
            moved = fm(fm.theta - eps * direction, x)
            measured.append((r_a * (moved - base)).flatten(1).sum(1))
            predicted.append(-eps * d * column)
            epsilons.append(eps)
    predicted_np = torch.stack(predicted).cpu().numpy()
    measured_np = torch.stack(measured).cpu().numpy()
    return np.asarray(epsilons), predicted_np, measured_np
