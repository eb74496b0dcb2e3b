"""Influence matrix of one analysis batch: the public entry point (METHOD.md §4).

H[r, p] = g_A(r)ᵀ M⁻¹ g_B(p) / D, rows = response example r, columns = perturbation example p,
D = F·H·W. g_A(n) = J_nᵀ r_A(n) with the residual r_A evaluated at the current parameters and
held fixed as the VJP cotangent (see observables.py); B is always SMSE; M = η + λI with
η = Σ_n J_nᵀ J_n (``subspace`` and ``cg``) or M = I (``euclidean``). Positive H[r, p]: a
proximal descent step on example p lowers the response at r.

Pipeline: validate → one batch forward (residuals, frozen) → per-example VJPs for SMSE and each
extra response (one forward + K backwards per example) → the estimator's solve, shared by all
responses → one small float64 product per response.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from coherence.analysis.autodiff import (
    BatchJacobian,
    FlatModel,
    GaussNewtonOperator,
    evaluation_mode,
    per_example_vjps,
)
from coherence.analysis.estimators import (
    Estimator,
    block_cg,
    euclidean_influence,
    gram64,
    lanczos_top,
    parse_estimator,
    subspace_basis,
    subspace_solve,
)
from coherence.analysis.observables import (
    Response,
    check_response_applies,
    parse_responses,
    residual,
)
from coherence.errors import ConvergenceWarning, RequestError

Progress = Callable[[float, str], None]
CG_MAX_ITER = 500  # default iteration cap per cg column


@dataclass(frozen=True)
class InfluenceDiagnostics:
    """How H was obtained; every field is reported next to the result (JSON via to_dict)."""

    estimator: str
    responses: tuple[str, ...]
    damping: float  # λ; for euclidean, recorded but unused
    n_examples: int
    output_size: int  # D = F·H·W
    n_params: int
    device: str
    dtype: str
    seconds: float
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    rtol: float | None = None  # cg only
    max_iter: int | None = None  # cg only
    energy_threshold: float | None = None  # subspace only
    rank: int | None = None  # subspace: s, the dimension of the Galerkin subspace
    subspace_eigenvalues: tuple[float, ...] | None = None  # subspace: eig(QᵀηQ), descending
    iterations: tuple[int, ...] | None = None  # cg: per perturbation column
    residuals: tuple[float, ...] | None = None  # cg: true final ‖b − (η+λI)y‖/‖b‖ per column
    converged: bool | None = None  # cg: every column reached rtol within max_iter
    worst_residual: float | None = None  # cg: max of residuals (> rtol when not converged)
    jvp_method: str | None = None  # "traced", or "jvp" after a failed check; None: unused

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["stage_seconds"] = dict(self.stage_seconds)
        return out


@dataclass(frozen=True)
class InfluenceResult:
    """H for the first requested response, H for every response, and the diagnostics."""

    H: Tensor
    H_by_response: Mapping[str, Tensor]
    diagnostics: InfluenceDiagnostics


def _check_options(
    estimator: Estimator,
    damping: float,
    rtol: float | None,
    energy_threshold: float,
    max_iter: int,
    chunk_size: int | None,
) -> None:
    if not (math.isfinite(damping) and damping > 0):
        raise RequestError(f"damping must be a finite number > 0 (e.g. 1e-4); got {damping}")
    if estimator is Estimator.CG and rtol is None:
        raise RequestError(
            "estimator 'cg' needs rtol, the relative residual at which CG stops "
            "(paper: 1.5e-2 UNet, 5e-2 ViT); pass rtol, or use estimator 'subspace'"
        )
    if rtol is not None and not 0 < rtol < 1:
        raise RequestError(f"rtol must lie in (0, 1), e.g. 1e-2; got {rtol}")
    if not 0 < energy_threshold <= 1:
        raise RequestError(
            f"energy_threshold must lie in (0, 1], e.g. 1 - 1e-4; got {energy_threshold}"
        )
    if max_iter < 1:
        raise RequestError(f"max_iter must be at least 1; got {max_iter}")
    if chunk_size is not None and chunk_size < 1:
        raise RequestError(f"chunk_size must be None or at least 1; got {chunk_size}")


def _model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    params = list(model.parameters())
    if not params:
        raise RequestError("the model has no parameters; influence needs θ (P ≥ 1)")
    return params[0].device, params[0].dtype


def _check_batch(
    inputs: Tensor, targets: Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Shapes [N, F, H, W] equal, N ≥ 2, finite; moved to the model's device and dtype."""
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise RequestError(f"{name} must be a tensor [N, F, H, W]; got {shape}")
    if inputs.shape != targets.shape:
        raise RequestError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have the "
            "same shape [N, F, H, W]; pair each input state with its next state"
        )
    if inputs.shape[0] < 2:
        raise RequestError(f"influence needs N ≥ 2 examples; this batch has N={inputs.shape[0]}")
    inputs, targets = inputs.to(device, dtype), targets.to(device, dtype)
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not torch.isfinite(t).all():
            raise RequestError(f"{name} contain NaN or inf values; clean the batch first")
    return inputs, targets


def _estimate(
    est: Estimator,
    fm: FlatModel,
    inputs: Tensor,
    grads: Mapping[Response, Tensor],
    responses: Sequence[Response],
    *,
    damping: float,
    rtol: float | None,
    energy_threshold: float,
    max_iter: int,
    progress: Callable[[float, str], None],
) -> tuple[dict[Response, Tensor], dict[str, Any]]:
    """H·D (float64) per response and the estimator's own diagnostics fields."""
    g = grads[Response.SMSE]
    if est is Estimator.EUCLIDEAN:
        return {r: euclidean_influence(grads[r], g) for r in responses}, {}
    jacobian = BatchJacobian(fm, inputs)
    if est is Estimator.SUBSPACE:
        progress(0.0, "subspace basis; tracing the tangent program (first batch of a model)")
        basis = subspace_basis(g, energy_threshold)
        solve = subspace_solve(
            basis, g, jacobian.jvp, damping, progress=lambda x: progress(x, "subspace JVPs")
        )
        return {r: solve.influence(grads[r]) for r in responses}, {
            "energy_threshold": energy_threshold,
            "rank": basis.rank,
            "subspace_eigenvalues": tuple(solve.metric_eigenvalues.tolist()),
            "jvp_method": jacobian.jvp_method,
        }
    assert rtol is not None  # checked by _check_options
    operator = GaussNewtonOperator(jacobian, damping)
    cg = block_cg(
        operator.apply_rows,
        g,
        rtol,
        max_iter,
        progress=lambda x: progress(x, "conjugate gradients"),
    )
    return {r: gram64(grads[r], cg.solution) for r in responses}, {
        "rtol": rtol,
        "max_iter": max_iter,
        "iterations": cg.iterations,
        "residuals": cg.residuals,
        "converged": cg.converged,
        "worst_residual": max(cg.residuals, default=0.0),
        "jvp_method": jacobian.jvp_method,
    }


def compute_influence(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    response: str | Sequence[str] = "smse",
    estimator: str = "subspace",
    damping: float = 1e-4,
    rtol: float | None = None,
    energy_threshold: float = 1 - 1e-4,
    max_iter: int = CG_MAX_ITER,
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> InfluenceResult:
    """Influence H [N, N] of one batch (inputs → targets, each [N, F, H, W]) for one or more
    responses, sharing the gradients g_B and the metric solve across responses.

    ``response``: "smse" | "mass" | "energy" or a sequence of them (mass/energy need F = 4).
    ``estimator``: "subspace" (Galerkin solve in span(G), ``energy_threshold`` of Σσ² kept),
    "cg" (full solve, ``rtol`` required, ``max_iter`` per column), "euclidean" (M = I).
    ``rtol`` is used by cg only (validated if given, recorded as None otherwise).
    ``chunk_size`` bounds the examples per vmapped VJP call. ``progress(fraction, stage)``.
    The model runs in eval mode (restored afterwards) at its own device and dtype; H is
    returned in that dtype and device (accumulated in float64).

    Cost: one forward + (1 + #extra responses) backwards per example, then subspace: one
    traced primal part + s ≤ N JVPs; cg: Σ_p iterations_p × (JVP + VJP); euclidean: nothing more.
    """
    est = parse_estimator(estimator)
    responses = parse_responses(response)
    _check_options(est, damping, rtol, energy_threshold, max_iter, chunk_size)
    device, dtype = _model_place(model)
    inputs, targets = _check_batch(inputs, targets, device, dtype)
    n, f = inputs.shape[:2]
    for resp in responses:
        check_response_applies(resp, f)
    d = math.prod(inputs.shape[1:])
    report = progress or (lambda fraction, stage: None)
    clock = time.perf_counter()
    stages: dict[str, float] = {}

    with evaluation_mode(model):
        fm = FlatModel(model)
        start = time.perf_counter()
        with torch.no_grad():
            prediction = fm(fm.theta, inputs)
        if prediction.shape != inputs.shape:
            raise RequestError(
                f"the model maps {tuple(inputs.shape)} to {tuple(prediction.shape)}; influence "
                "needs a next-state model with output shape equal to input shape"
            )
        needed = tuple(dict.fromkeys((Response.SMSE, *responses)))
        cotangents = [residual(r, prediction, inputs, targets) for r in needed]
        stages["forward"] = time.perf_counter() - start
        report(0.0, "per-example gradients")
        start = time.perf_counter()
        weight = 0.1 if est is Estimator.EUCLIDEAN else 0.3
        grads = dict(
            zip(
                needed,
                per_example_vjps(
                    fm,
                    inputs,
                    cotangents,
                    chunk_size=chunk_size,
                    progress=lambda x: report(weight * x, "per-example gradients"),
                ),
                strict=True,
            )
        )
        stages["gradients"] = time.perf_counter() - start
        start = time.perf_counter()
        raw, extra = _estimate(
            est,
            fm,
            inputs,
            grads,
            responses,
            damping=damping,
            rtol=rtol,
            energy_threshold=energy_threshold,
            max_iter=max_iter,
            progress=lambda x, stage: report(weight + (1 - weight) * x, stage),
        )
        stages["solve"] = time.perf_counter() - start
    report(1.0, "done")

    h_by = {r.value: (h / d).to(dtype) for r, h in raw.items()}
    diagnostics = InfluenceDiagnostics(
        estimator=est.value,
        responses=tuple(r.value for r in responses),
        damping=float(damping),
        n_examples=n,
        output_size=d,
        n_params=fm.n_params,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        seconds=time.perf_counter() - clock,
        stage_seconds=stages,
        **extra,
    )
    if diagnostics.converged is False:
        warnings.warn(ConvergenceWarning(unconverged_message(diagnostics)), stacklevel=2)
    return InfluenceResult(h_by[responses[0].value], h_by, diagnostics)


def unconverged_message(diagnostics: InfluenceDiagnostics) -> str:
    """One sentence for an unconverged cg solve: how far off it is and what to change."""
    assert diagnostics.residuals is not None and diagnostics.rtol is not None
    bad = sum(r > diagnostics.rtol for r in diagnostics.residuals)
    return (
        f"cg did not converge: {bad} of {len(diagnostics.residuals)} columns stopped at "
        f"max_iter={diagnostics.max_iter} with relative residual up to "
        f"{diagnostics.worst_residual:.3g} > rtol={diagnostics.rtol:g}, so H is inaccurate; "
        "raise max_iter, loosen rtol or use estimator 'subspace'"
    )


@dataclass(frozen=True)
class UnconvergedSolve:
    """One (checkpoint, batch) cell of an analysis whose cg solve missed its tolerance."""

    checkpoint: int  # index s
    batch: int  # index b
    worst_residual: float
    rtol: float


def unconverged_solves(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]],
) -> list[UnconvergedSolve]:
    """The cells of a result's diagnostics ([S][B] dicts, as cached) with ``converged``
    False, worst first; empty for converged cg and for the other estimators."""
    found = []
    for s, row in enumerate(diagnostics):
        for b, cell in enumerate(row):
            if cell.get("converged") is not False:
                continue
            worst = cell.get("worst_residual")
            if worst is None:  # results cached before the field existed
                worst = max(cell.get("residuals") or [float("nan")])
            found.append(UnconvergedSolve(s, b, float(worst), float(cell.get("rtol") or 0.0)))
    return sorted(found, key=lambda u: -u.worst_residual)


def convergence_summary(
    diagnostics: Sequence[Sequence[Mapping[str, Any]]], checkpoints: Sequence[str]
) -> str | None:
    """What the CLI and the dashboard show for a result whose cg solves did not all reach
    rtol (None when they did, or for another estimator)."""
    bad = unconverged_solves(diagnostics)
    if not bad:
        return None
    cells = sum(len(row) for row in diagnostics)
    worst = bad[0]
    name = checkpoints[worst.checkpoint] if worst.checkpoint < len(checkpoints) else "?"
    return (
        f"cg did not converge in {len(bad)} of {cells} (checkpoint, batch) solves; worst "
        f"relative residual {worst.worst_residual:.3g} > rtol={worst.rtol:g} ({name}, batch "
        f"{worst.batch + 1}): these influence values are inaccurate; loosen --rtol or use "
        "--estimator subspace"
    )


def influence_matrix(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    response: str = "smse",
    estimator: str = "subspace",
    damping: float = 1e-4,
    rtol: float | None = None,
) -> Tensor:
    """Raw H [N, N] (rows = response, columns = perturbation); see compute_influence."""
    return compute_influence(
        model,
        inputs,
        targets,
        response=response,
        estimator=estimator,
        damping=damping,
        rtol=rtol,
    ).H


def top_eigenvalue(
    model: nn.Module,
    inputs: Tensor,
    damping: float = 1e-4,
    iters: int = 50,
    *,
    tol: float = 1e-6,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of η + λI for the batch (METHOD.md §6.5), by Lanczos.

    Matrix-free: each step is one batch JVP + one VJP (≈ 4 forwards); at most ``iters`` steps,
    stopping when the Ritz residual bound is ≤ tol·θ. The returned Ritz value is a lower bound
    on λ_max that converges from below. The start vector is seeded, so the result is
    reproducible.
    """
    if not (math.isfinite(damping) and damping > 0):
        raise RequestError(f"damping must be a finite number > 0 (e.g. 1e-4); got {damping}")
    if iters < 1:
        raise RequestError(f"iters must be at least 1; got {iters}")
    device, dtype = _model_place(model)
    inputs, _ = _check_batch(inputs, inputs, device, dtype)
    with evaluation_mode(model):
        fm = FlatModel(model)
        operator = GaussNewtonOperator(BatchJacobian(fm, inputs), damping)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(fm.n_params, generator=generator, dtype=torch.float64)
        result = lanczos_top(operator, start.to(device, dtype), iters=iters, tol=tol)
    return result.value
