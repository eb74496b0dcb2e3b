"""Influence matrix of one analysis batch: the public entry point (METHOD.md §4).

H[r, p] = g_A(r)ᵀ M⁻¹ g_B(p) / D, rows = response example r, columns = perturbation example p,
D = F·H·W. g_A(n) = J_nᵀ r_A(n) with the residual r_A evaluated at the current parameters and
held fixed as the VJP cotangent (see observables.py); B is always SMSE; M = η + λI with
η = Σ_n J_nᵀ J_n (``subspace``, ``krylov``, ``ekfac-krylov`` and ``cg``), its EK-FAC
approximation (``ekfac``) or M = I (``euclidean``). Positive H[r, p]: a proximal descent step
on example p lowers the response at r.

Pipeline: options checked (``request.InfluenceOptions``) → one batch forward (residuals,
frozen) → per-example VJPs for SMSE and each extra response (one forward + K backwards per
example) → the estimator's solve (``metric_solve``), shared by all responses → one small
float64 product per response. The diagnostics types live in ``diagnostics.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
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

# re-exported: callers import these from here
from coherence.analysis.diagnostics import (  # noqa: F401
    InfluenceDiagnostics,
    InfluenceResult,
    UnconvergedSolve,
    convergence_summary,
    residual_help,
    residual_summary,
    unconverged_message,
    unconverged_solves,
)
from coherence.analysis.estimators import TopEigen, lanczos_top
from coherence.analysis.metric_solve import MetricSolve, solve_metric  # noqa: F401
from coherence.analysis.observables import check_response_applies, residual
from coherence.analysis.precision import ieee_float32
from coherence.analysis.request import InfluenceOptions, check_damping
from coherence.analysis.vocabulary import (
    CG_MAX_ITER,
    DEFAULT_DAMPING,
    DEFAULT_ESTIMATOR,
    Estimator,
    Response,
)
from coherence.errors import ConvergenceWarning, RequestError

Progress = Callable[[float, str], None]


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


EXTREME_DATA = 1e15  # no physical state here comes near it; squares of it overflow float32


class ExtremeDataError(RequestError):
    """A batch holds values so large that its float32 gradients overflow (a damaged file)."""


class NonFiniteModelError(RequestError):
    """The model's gradients on a batch are NaN or inf: no influence can be computed."""


def compute_influence(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    response: str | Sequence[str] = "smse",
    estimator: str = DEFAULT_ESTIMATOR,
    damping: float = DEFAULT_DAMPING,
    rtol: float | None = None,
    energy_threshold: float | None = None,
    max_iter: int = CG_MAX_ITER,
    depth: int | None = None,
    cg_start: str = "deflated",
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> InfluenceResult:
    """Influence H [N, N] of one batch (inputs → targets, each [N, F, H, W]) for one or more
    responses, sharing the gradients g_B and the metric solve across responses.

    ``response``: "smse" | "mass" | "energy" or a sequence of them (mass/energy need F = 4).
    ``estimator``: "subspace" (Galerkin solve in span(G), ``energy_threshold`` of Σσ² kept),
    "krylov" (Galerkin solve in span{G, ηG, …}, ``depth`` blocks), "cg" (full solve, ``rtol``
    required, ``max_iter`` per column; ``cg_start`` "deflated" continues from the krylov
    solution of ``depth`` blocks on the complement of that space, "cold" starts from zero),
    "ekfac" (η replaced by its EK-FAC approximation, ``kfac``), "ekfac-krylov" (the default:
    Galerkin solve in span(G) + the EK-FAC-preconditioned Krylov space span{M̃⁻¹G, …},
    ``depth`` blocks, default 1), "euclidean" (M = I). ``depth`` None: the estimator's default.
    Every estimator but ekfac and euclidean reports each column's full-system residual
    ‖g_B(p) − (η + λI)y_p‖/‖g_B(p)‖ in ``diagnostics.residuals``.
    ``rtol`` is used by cg only (validated if given, recorded as None otherwise).
    ``chunk_size`` bounds the examples per vmapped VJP call. ``progress(fraction, stage)``.
    The options are checked by ``InfluenceOptions`` (the rules the requests share).
    The model runs in eval mode (restored afterwards) at its own device and dtype; H is
    returned in that dtype and device (accumulated in float64).

    Cost: one forward + (1 + #extra responses) backwards per example, then subspace: one
    traced primal part + s ≤ N JVPs + N VJPs (residual); krylov: ≤ depth·N JVPs +
    depth·N VJPs; cg: Σ_p iterations_p × (JVP + VJP) (deflated: + the krylov solve, its
    residual and N VJPs for the last block's AQ); ekfac: a forward with hooks, one backward
    and one round of per-example VJPs, no batch product; ekfac-krylov: ekfac's fit, s₁ JVPs
    for span(G) and krylov's products; euclidean: nothing more. The counts are in the
    diagnostics.
    """
    options = InfluenceOptions(
        estimator=estimator,
        responses=response,
        damping=damping,
        rtol=rtol,
        energy_threshold=energy_threshold,
        depth=depth,
        cg_start=cg_start,
        max_iter=max_iter,
        chunk_size=chunk_size,
    )
    return influence_with(model, inputs, targets, options, progress=progress)


def influence_with(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    options: InfluenceOptions,
    *,
    progress: Progress | None = None,
    direction_columns: Sequence[int] = (),
) -> InfluenceResult:
    """``compute_influence`` for options already built (and so already checked).
    ``direction_columns``: also return the solved rows y_p of these columns (``directions``),
    from the same solve, so a caller that steps along them solves nothing twice."""
    device, dtype = _model_place(model)
    inputs, targets = _check_batch(inputs, targets, device, dtype)
    for resp in options.responses:
        check_response_applies(resp, inputs.shape[1])
    report = progress or (lambda fraction, stage: None)
    clock = time.perf_counter()
    stages: dict[str, float] = {}
    with evaluation_mode(model), ieee_float32():
        fm = FlatModel(model)
        weight = 0.1 if options.estimator is Estimator.EUCLIDEAN else 0.3
        grads = _gradients(
            fm, inputs, targets, options, stages, lambda x, stage: report(weight * x, stage)
        )
        if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            # a solve on them fails deep in an eigensolver (LinAlgError), or returns NaN
            extreme = max(float(inputs.abs().max()), float(targets.abs().max()))
            if extreme > EXTREME_DATA:  # 3e38 in one density cell was blamed on the weights
                raise ExtremeDataError(
                    f"the batch's values reach |x| = {extreme:.3g}, so the gradients overflow "
                    "float32: a damaged or mis-scaled data file (the checkpoint is not at "
                    "fault); check or re-import that file"
                )
            raise NonFiniteModelError(
                "the model's per-example gradients on this batch are not finite (NaN or "
                "inf): its outputs overflow or divide by zero, e.g. a normalization std of 0 "
                "saved with the weights, or weights that diverged; retrain the checkpoint"
            )
        start = time.perf_counter()
        solved = solve_metric(
            options,
            fm,
            inputs,
            grads[Response.SMSE],
            progress=lambda x, stage: report(weight + (1 - weight) * x, stage),
        )
        raw = {r: solved.response_influence(r, grads[r]) for r in options.responses}
        directions = None
        if direction_columns:
            index = torch.as_tensor(list(direction_columns), device=device)
            directions = solved.directions(index, options.responses[0]).detach()
        stages["solve"] = time.perf_counter() - start
    report(1.0, "done")
    h_by = {r.value: (h / math.prod(inputs.shape[1:])).to(dtype) for r, h in raw.items()}
    diagnostics = InfluenceDiagnostics(
        estimator=options.estimator.value,
        responses=tuple(r.value for r in options.responses),
        damping=float(options.damping),
        n_examples=inputs.shape[0],
        output_size=math.prod(inputs.shape[1:]),
        n_params=fm.n_params,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        seconds=time.perf_counter() - clock,
        stage_seconds=stages,
        **solved.fields,
    )
    if diagnostics.converged is False:
        warning = ConvergenceWarning(
            unconverged_message(diagnostics),
            worst_residual=diagnostics.worst_residual,
            rtol=diagnostics.rtol,
            residuals=tuple(diagnostics.residuals or ()),
        )
        warnings.warn(warning, stacklevel=3)
    return InfluenceResult(h_by[options.responses[0].value], h_by, diagnostics, directions)


def _gradients(
    fm: FlatModel,
    inputs: Tensor,
    targets: Tensor,
    options: InfluenceOptions,
    stages: dict[str, float],
    progress: Progress,
) -> dict[Response, Tensor]:
    """One batch forward (residuals frozen), then the per-example gradients g [N, P] of SMSE
    and of every other response (times recorded in ``stages``)."""
    start = time.perf_counter()
    with torch.no_grad():
        prediction = fm(fm.theta, inputs)
    if prediction.shape != inputs.shape:
        raise RequestError(
            f"the model maps {tuple(inputs.shape)} to {tuple(prediction.shape)}; influence "
            "needs a next-state model with output shape equal to input shape"
        )
    needed = tuple(dict.fromkeys((Response.SMSE, *options.responses)))
    cotangents = [residual(r, prediction, inputs, targets) for r in needed]
    stages["forward"] = time.perf_counter() - start
    progress(0.0, "per-example gradients")
    start = time.perf_counter()
    grads = per_example_vjps(
        fm,
        inputs,
        cotangents,
        chunk_size=options.chunk_size,
        progress=lambda x: progress(x, "per-example gradients"),
    )
    stages["gradients"] = time.perf_counter() - start
    return dict(zip(needed, grads, strict=True))


def influence_matrix(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    response: str = "smse",
    estimator: str = DEFAULT_ESTIMATOR,
    damping: float = DEFAULT_DAMPING,
    rtol: float | None = None,
    **options: Any,
) -> Tensor:
    """Raw H [N, N] (rows = response, columns = perturbation); see compute_influence, which
    takes the ``options`` (energy_threshold, depth, cg_start, max_iter, …)."""
    return compute_influence(
        model,
        inputs,
        targets,
        response=response,
        estimator=estimator,
        damping=damping,
        rtol=rtol,
        **options,
    ).H


def top_eigenvalue(
    model: nn.Module,
    inputs: Tensor,
    damping: float = DEFAULT_DAMPING,
    iters: int = 50,
    *,
    tol: float = 1e-6,
    seed: int = 0,
) -> TopEigen:
    """Largest eigenvalue of η + λI for the batch (METHOD.md §6.5), by Lanczos: ``.value``,
    with its residual bound and steps (``bound > tol·value``: it stopped at ``iters``
    unconverged, and ``.value`` is only a lower bound).

    Matrix-free: each step is one batch JVP + one VJP (≈ 4 forwards); at most ``iters`` steps,
    stopping when the Ritz residual bound is ≤ tol·θ. The returned Ritz value is a lower bound
    on λ_max that converges from below. The start vector is seeded, so the result is
    reproducible.
    """
    check_damping(damping)
    if iters < 1:
        raise RequestError(f"iters must be at least 1; got {iters}")
    device, dtype = _model_place(model)
    inputs, _ = _check_batch(inputs, inputs, device, dtype)
    with evaluation_mode(model), ieee_float32():
        fm = FlatModel(model)
        operator = GaussNewtonOperator(BatchJacobian(fm, inputs), damping)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(fm.n_params, generator=generator, dtype=torch.float64)
        result = lanczos_top(operator, start.to(device, dtype), iters=iters, tol=tol)
    return result
