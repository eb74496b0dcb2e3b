"""Influence matrix of one analysis batch: the public entry point (METHOD.md §4).

H[r, p] = g_A(r)ᵀ M⁻¹ g_B(p) / D, rows = response example r, columns = perturbation example p,
D = F·H·W. g_A(n) = J_nᵀ r_A(n) with the residual r_A evaluated at the current parameters and
held fixed as the VJP cotangent (see observables.py); B is always SMSE; M = η + λI with
η = Σ_n J_nᵀ J_n (``subspace``, ``krylov`` and ``cg``) or M = I (``euclidean``). Positive H[r, p]: a
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
    DEFAULT_DEPTH,
    DEFAULT_ENERGY_THRESHOLD,
    CGStart,
    Estimator,
    block_cg,
    default_energy_threshold,
    euclidean_influence,
    gram64,
    lanczos_top,
    parse_cg_start,
    parse_estimator,
    subspace_basis,
    subspace_solve,
)
from coherence.analysis.krylov import (
    block_krylov_basis,
    deflation,
    full_residual,
    galerkin_solve,
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
    energy_threshold: float | None = None  # subspace, krylov, deflated cg: share of Σσ² of G
    rank: int | None = None  # subspace, krylov: s, the dimension of the Galerkin subspace
    subspace_eigenvalues: tuple[float, ...] | None = None  # eig(QᵀηQ), Q of span(G), descending
    iterations: tuple[int, ...] | None = None  # cg: per perturbation column
    # every estimator but euclidean: the true final ‖g_B(p) − (η+λI)y_p‖/‖g_B(p)‖ per column
    residuals: tuple[float, ...] | None = None
    converged: bool | None = None  # cg: every column reached rtol within max_iter
    worst_residual: float | None = None  # cg: max of residuals (> rtol when not converged)
    jvp_method: str | None = None  # "traced", or "jvp" after a failed check; None: unused
    depth: int | None = None  # krylov: number of blocks of span{G, ηG, …}
    block_ranks: tuple[int, ...] | None = None  # krylov: rank of each block
    cg_start: str | None = None  # cg: "deflated" (from the subspace solution) or "cold"
    start_residuals: tuple[float, ...] | None = None  # deflated cg: residuals at the start
    batch_jvps: int | None = None  # products with the batch Jacobian J (≈ 2.2 forwards each)
    batch_vjps: int | None = None  # products with Jᵀ (≈ 2 forwards each)

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
    depth: int = DEFAULT_DEPTH,
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
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 16:
        raise RequestError(
            f"depth must be an integer from 1 to 16 (blocks of span{{G, ηG, …}}; e.g. "
            f"{DEFAULT_DEPTH}); got {depth!r}"
        )
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


class _Counted:
    """The batch Jacobian's products, counted for the cost report (diagnostics)."""

    def __init__(self, jacobian: BatchJacobian) -> None:
        self.jacobian = jacobian
        self.jvps = 0
        self.vjps = 0

    def jvp(self, v: Tensor) -> Tensor:
        self.jvps += 1
        return self.jacobian.jvp(v)

    def vjp(self, u: Tensor) -> Tensor:
        self.vjps += 1
        return self.jacobian.vjp(u)

    def metric_rows(self, damping: float) -> Callable[[Tensor], Tensor]:
        """Rows v_k [k, P] → rows (η + λI) v_k (one JVP + one VJP each)."""

        def apply(vs: Tensor) -> Tensor:
            rows = [self.vjp(self.jvp(v)) + damping * v for v in vs.unbind(0)]
            return torch.stack(rows) if rows else vs.clone()

        return apply

    def report(self) -> dict[str, Any]:
        return {
            "jvp_method": self.jacobian.jvp_method,
            "batch_jvps": self.jvps,
            "batch_vjps": self.vjps,
        }


@dataclass(frozen=True)
class MetricSolve:
    """M⁻¹ applied to the perturbation gradients: ``influence(ga)`` gives H·D = G_A Yᵀ
    (float64 [N, N]), ``solution()`` the rows y_p = M⁻¹ g_B(p) [N, P] (model dtype; the
    counterfactual check steps along them), ``fields`` the estimator's diagnostics."""

    influence: Callable[[Tensor], Tensor]
    solution: Callable[[], Tensor]
    fields: dict[str, Any]


def solve_metric(
    est: Estimator,
    fm: FlatModel,
    inputs: Tensor,
    g: Tensor,
    *,
    damping: float,
    rtol: float | None,
    energy_threshold: float = DEFAULT_ENERGY_THRESHOLD,
    max_iter: int = 500,
    depth: int = DEFAULT_DEPTH,
    cg_start: CGStart = CGStart.DEFLATED,
    progress: Callable[[float, str], None] = lambda fraction, stage: None,
) -> MetricSolve:
    """Solve M y_p = g_B(p) for the rows of g [N, P] with estimator ``est`` (options checked
    by the caller); shared by ``compute_influence`` and ``verify``."""
    if est is Estimator.EUCLIDEAN:
        return MetricSolve(lambda ga: euclidean_influence(ga, g), lambda: g, {})
    products = _Counted(BatchJacobian(fm, inputs))
    shape = inputs.shape
    if est is Estimator.KRYLOV:
        kbasis = block_krylov_basis(
            g,
            products.jvp,
            products.vjp,
            shape,
            depth=depth,
            energy_threshold=energy_threshold,
            progress=lambda x: progress(0.8 * x, "block Krylov basis"),
        )
        ksolve = galerkin_solve(kbasis, g, damping)
        kres = full_residual(
            g,
            ksolve.solution(),
            ksolve.pushed_solution(),
            products.vjp,
            shape,
            damping,
            progress=lambda x: progress(0.8 + 0.2 * x, "full-system residual"),
        )
        return MetricSolve(
            ksolve.influence,
            ksolve.solution,
            {
                "energy_threshold": energy_threshold,
                "depth": depth,
                "rank": kbasis.rank,
                "block_ranks": kbasis.block_ranks,
                "subspace_eigenvalues": tuple(kbasis.first_block_eigenvalues.tolist()),
                "residuals": tuple(kres.relative.tolist()),
                **products.report(),
            },
        )
    deflated = est is Estimator.CG and cg_start is CGStart.DEFLATED
    if est is Estimator.SUBSPACE or deflated:
        share = 0.3 if deflated else 1.0  # of the progress bar; the rest is cg's
        basis = subspace_basis(g, energy_threshold)
        solve = subspace_solve(
            basis,
            g,
            products.jvp,
            damping,
            progress=lambda x: progress(share * 0.5 * x, "subspace JVPs"),
        )
        y0 = solve.solution()
        res = full_residual(
            g,
            y0,
            solve.pushed_solution(),
            products.vjp,
            shape,
            damping,
            progress=lambda x: progress(share * (0.5 + 0.5 * x), "full-system residual"),
        )
        subspace_fields = {
            "energy_threshold": energy_threshold,
            "subspace_eigenvalues": tuple(solve.metric_eigenvalues.tolist()),
        }
        if est is Estimator.SUBSPACE:
            return MetricSolve(
                solve.influence,
                lambda: y0,
                {
                    **subspace_fields,
                    "rank": basis.rank,
                    "residuals": tuple(res.relative.tolist()),
                    **products.report(),
                },
            )
    assert rtol is not None  # checked by _check_options
    start, project, start_fields, head = None, None, {}, 0.3 if deflated else 0.0
    if deflated:
        # the Galerkin residual is orthogonal to span(Q): CG continues on the complement
        if basis.rank and solve.pushed is not None:
            whiten = basis.whiten.T.to(g.dtype)  # rows of whitenᵀq: orthonormal basis of span(Q)
            project = deflation(
                whiten @ basis.q, whiten @ solve.pushed, products.vjp, shape, damping
            )
        start = (y0, res.rows)
        start_fields = {**subspace_fields, "start_residuals": tuple(res.relative.tolist())}
    cg = block_cg(
        products.metric_rows(damping),
        g,
        rtol,
        max_iter,
        progress=lambda x: progress(head + (1 - head) * x, "conjugate gradients"),
        start=start,
        project=project,
    )
    return MetricSolve(
        lambda ga: gram64(ga, cg.solution),
        lambda: cg.solution,
        {
            "rtol": rtol,
            "max_iter": max_iter,
            "iterations": cg.iterations,
            "residuals": cg.residuals,
            "converged": cg.converged,
            "worst_residual": max(cg.residuals, default=0.0),
            "cg_start": cg_start.value,
            **start_fields,
            **products.report(),
        },
    )


def compute_influence(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    response: str | Sequence[str] = "smse",
    estimator: str = "subspace",
    damping: float = 1e-4,
    rtol: float | None = None,
    energy_threshold: float | None = None,
    max_iter: int = CG_MAX_ITER,
    depth: int = DEFAULT_DEPTH,
    cg_start: str = "deflated",
    chunk_size: int | None = None,
    progress: Progress | None = None,
) -> InfluenceResult:
    """Influence H [N, N] of one batch (inputs → targets, each [N, F, H, W]) for one or more
    responses, sharing the gradients g_B and the metric solve across responses.

    ``response``: "smse" | "mass" | "energy" or a sequence of them (mass/energy need F = 4).
    ``estimator``: "subspace" (Galerkin solve in span(G), ``energy_threshold`` of Σσ² kept),
    "krylov" (Galerkin solve in span{G, ηG, …}, ``depth`` blocks), "cg" (full solve, ``rtol``
    required, ``max_iter`` per column; ``cg_start`` "deflated" continues from the subspace
    solution on the complement of span(Q), "cold" starts from zero), "euclidean" (M = I).
    Every estimator but euclidean reports each column's full-system residual
    ‖g_B(p) − (η + λI)y_p‖/‖g_B(p)‖ in ``diagnostics.residuals``.
    ``rtol`` is used by cg only (validated if given, recorded as None otherwise).
    ``chunk_size`` bounds the examples per vmapped VJP call. ``progress(fraction, stage)``.
    The model runs in eval mode (restored afterwards) at its own device and dtype; H is
    returned in that dtype and device (accumulated in float64).

    Cost: one forward + (1 + #extra responses) backwards per example, then subspace: one
    traced primal part + s ≤ N JVPs + N VJPs (residual); krylov: ≤ depth·N JVPs +
    depth·N VJPs; cg: Σ_p iterations_p × (JVP + VJP) (deflated: + the subspace solve, its
    residual and s VJPs for AQ); euclidean: nothing more. The counts are in the diagnostics.
    """
    est = parse_estimator(estimator)
    cg_mode = parse_cg_start(cg_start)
    if energy_threshold is None:  # 1 − 1e-4; krylov: 1 (every non-zero direction of G)
        energy_threshold = default_energy_threshold(est)
    responses = parse_responses(response)
    _check_options(est, damping, rtol, energy_threshold, max_iter, chunk_size, depth)
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
        solved = solve_metric(
            est,
            fm,
            inputs,
            grads[Response.SMSE],
            damping=damping,
            rtol=rtol,
            energy_threshold=energy_threshold,
            max_iter=max_iter,
            depth=depth,
            cg_start=cg_mode,
            progress=lambda x, stage: report(weight + (1 - weight) * x, stage),
        )
        raw = {r: solved.influence(grads[r]) for r in responses}
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
        **solved.fields,
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
