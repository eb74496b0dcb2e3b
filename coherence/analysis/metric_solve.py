"""M⁻¹ applied to the perturbation gradients g_B(p), one solve per estimator (METHOD.md §4).

M = η + λI (``subspace``, ``krylov``, ``cg``, ``ekfac-krylov``: the default), its EK-FAC
approximation (``ekfac``) or I (``euclidean``). The batch Jacobian's products are counted
for the cost report. Shared by ``compute_influence`` (H = G_A Yᵀ / D)
and the counterfactual check (it steps along the rows y_p), so both see the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from coherence.analysis.autodiff import BatchJacobian, FlatModel
from coherence.analysis.estimators import (
    block_cg,
    euclidean_influence,
    gram64,
    subspace_basis,
    subspace_solve,
)
from coherence.analysis.kfac import EigenbasisMetric, fit_eigenbasis
from coherence.analysis.krylov import (
    Deflation,
    FullResidual,
    GalerkinBasis,
    GalerkinSolve,
    ResidualCorrection,
    block_krylov_basis,
    deflation,
    full_residual,
    galerkin_solve,
    residual_correction,
)
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.vocabulary import (
    DEFAULT_ENERGY_THRESHOLD,
    CGStart,
    Estimator,
    Response,
)

StageProgress = Callable[[float, str], None]  # (fraction, stage)


class CountedJacobian:
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
            out = torch.empty_like(vs)  # filled row by row: no list beside a stacked copy
            for j, v in enumerate(vs.unbind(0)):
                out[j] = self.vjp(self.jvp(v)) + damping * v
            return out

        return apply

    def report(self) -> dict[str, Any]:
        return {
            "jvp_method": self.jacobian.jvp_method,
            "batch_jvps": self.jvps,
            "batch_vjps": self.vjps,
        }


@dataclass(frozen=True)
class MetricSolve:
    """M⁻¹ applied to the perturbation gradients: ``influence(ga)`` gives G_A Yᵀ (float64
    [N, N]), ``solution()`` the rows y_p = M⁻¹ g_B(p) [N, P] (model dtype), ``fields`` the
    estimator's diagnostics; ``correction`` (``ekfac-krylov``): the SMSE pairing's residual
    correction. ``response_influence`` and ``directions`` apply it: H·D of a response and
    the steps whose first-order effect it is (the counterfactual check steps along them)."""

    influence: Callable[[Tensor], Tensor]
    solution: Callable[[], Tensor]
    fields: dict[str, Any]
    correction: ResidualCorrection | None = None

    def response_influence(self, response: Response, ga: Tensor) -> Tensor:
        """H·D [N, N] of ``response`` (gradients ga [N, P]) against every perturbation."""
        h = self.influence(ga)
        if response is Response.SMSE and self.correction is not None:
            h = h + self.correction.matrix
        return h

    def directions(self, index: Tensor, response: Response) -> Tensor:
        """The steps [k, P] of the columns ``index`` whose first-order effect on ``response``
        is ``response_influence``'s (y_p, plus the corrected step for SMSE)."""
        y = self.solution()[index]
        if response is Response.SMSE and self.correction is not None:
            y = y + self.correction.steps(index).to(y.dtype)
        return y


def solve_metric(
    options: InfluenceOptions,
    fm: FlatModel,
    inputs: Tensor,
    g: Tensor,
    *,
    progress: StageProgress = lambda fraction, stage: None,
) -> MetricSolve:
    """Solve M y_p = g_B(p) for the rows of g [N, P] with ``options.estimator`` (the options
    were checked when ``options`` was built); shared by ``compute_influence`` and ``verify``."""
    est = options.estimator
    if est is Estimator.EUCLIDEAN:
        return MetricSolve(lambda ga: euclidean_influence(ga, g), lambda: g, {})
    products = CountedJacobian(BatchJacobian(fm, inputs))
    if est is Estimator.KRYLOV:
        return _krylov(options, products, g, inputs.shape, progress)
    if est is Estimator.SUBSPACE:
        return _subspace(options, products, g, inputs.shape, progress)
    if est is Estimator.EKFAC:
        return _ekfac(options, fit_eigenbasis(fm, inputs, chunk_size=options.chunk_size), g)
    if est is Estimator.EKFAC_KRYLOV:
        return _krylov(options, products, g, inputs.shape, progress, preconditioned=True)
    return _cg(options, products, g, inputs.shape, progress)


def ekfac_preconditioner(
    options: InfluenceOptions, products: CountedJacobian, progress: StageProgress
) -> Callable[[Tensor], Tensor]:
    """Rows → (η̃ + λI)⁻¹ rows, η̃ the EK-FAC approximation fitted on the products' batch."""
    progress(0.0, "EK-FAC factors")
    jacobian = products.jacobian
    metric = fit_eigenbasis(jacobian.fm, jacobian.inputs, chunk_size=options.chunk_size)
    return partial(metric.solve, damping=options.damping)


def _ekfac(options: InfluenceOptions, metric: EigenbasisMetric, g: Tensor) -> MetricSolve:
    """y_p = (η̃ + λI)⁻¹ g_B(p) with η̃ the EK-FAC approximation: no product with the batch
    Jacobian, so no full-system residual either (it would cost N JVPs + N VJPs, more than
    the estimate: ``ekfac-krylov`` reports it)."""
    y = metric.solve(g, options.damping)
    return MetricSolve(lambda ga: gram64(ga, y), lambda: y, {"batch_jvps": 0, "batch_vjps": 0})


@dataclass(frozen=True)
class _KrylovGalerkin:
    """The Galerkin solve in K_d = span{G, ηG, …}: basis, solve, solution y₀, full residual."""

    basis: GalerkinBasis
    solve: GalerkinSolve
    y0: Tensor
    residual: FullResidual

    def fields(self, options: InfluenceOptions) -> dict[str, Any]:
        fields = {
            "energy_threshold": options.resolved_energy_threshold,
            "depth": options.depth,
            "rank": self.basis.rank,
            "block_ranks": self.basis.block_ranks,
        }
        spectrum = self.basis.first_block_eigenvalues  # None when block 1 holds no span(G)
        if spectrum is not None:
            fields["subspace_eigenvalues"] = tuple(spectrum.tolist())
        return fields


def _krylov_galerkin(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    share: float,
    progress: StageProgress,
    precondition: Callable[[Tensor], Tensor] | None = None,
    keep_eta: bool = False,
    span_g_threshold: float | None = None,
) -> _KrylovGalerkin:
    """Block Lanczos basis of ``options.depth`` blocks, the Galerkin solve in it and its
    full-system residual (``share`` of the progress bar); ``precondition``, ``keep_eta``
    and ``span_g_threshold``: see ``block_krylov_basis``."""
    kbasis = block_krylov_basis(
        g,
        products.jvp,
        products.vjp,
        shape,
        depth=options.depth,
        energy_threshold=options.resolved_energy_threshold,
        progress=lambda x: progress(share * 0.8 * x, "block Krylov basis"),
        keep_eta=keep_eta,
        precondition=precondition,
        damping=options.damping,
        span_g_threshold=span_g_threshold,
        spectrum_threshold=min(options.resolved_energy_threshold, DEFAULT_ENERGY_THRESHOLD),
    )
    ksolve = galerkin_solve(kbasis, g, options.damping)
    y0 = ksolve.solution()
    kres = full_residual(
        g,
        y0,
        ksolve.pushed_solution(),
        products.vjp,
        shape,
        options.damping,
        progress=lambda x: progress(share * (0.8 + 0.2 * x), "full-system residual"),
    )
    return _KrylovGalerkin(kbasis, ksolve, y0, kres)


def _krylov(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
    preconditioned: bool = False,
) -> MetricSolve:
    """Galerkin solve in the block Krylov space span{G, ηG, …} (``options.depth`` blocks),
    or (``preconditioned``) in span(G) + span{M̃⁻¹G, M̃⁻¹AM̃⁻¹G, …} with M̃ the damped
    EK-FAC approximation of the metric fitted on this batch: span(G) at the subspace
    default threshold, so the spectrum and the dominant-eigenvalue share are reported as
    ``subspace`` reports them."""
    precondition, span_g, correction = None, None, None
    if preconditioned:
        precondition = ekfac_preconditioner(options, products, progress)
        span_g = DEFAULT_ENERGY_THRESHOLD
    galerkin = _krylov_galerkin(
        options, products, g, shape, 1.0, progress, precondition, span_g_threshold=span_g
    )
    fields = {
        **galerkin.fields(options),
        "residuals": tuple(galerkin.residual.relative.tolist()),
        **products.report(),
    }
    if precondition is not None:
        correction = residual_correction(
            galerkin.basis,
            galerkin.residual.rows,
            precondition,
            products.metric_rows(options.damping),
            options.damping,
        )
        uncorrected = torch.linalg.matrix_norm(galerkin.solve.own_influence())
        share = torch.linalg.matrix_norm(correction.matrix) / uncorrected.clamp_min(1e-300)
        fields["residual_correction"] = float(share)
    return MetricSolve(galerkin.solve.influence, lambda: galerkin.y0, fields, correction)


def _subspace(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
) -> MetricSolve:
    """Galerkin solve in span(G), ``options.energy_threshold`` of Σσ² kept, and its
    full-system residual."""
    energy_threshold = options.resolved_energy_threshold
    basis = subspace_basis(g, energy_threshold)
    solve = subspace_solve(
        basis,
        g,
        products.jvp,
        options.damping,
        progress=lambda x: progress(0.5 * x, "subspace JVPs"),
    )
    y0 = solve.solution()
    res = full_residual(
        g,
        y0,
        solve.pushed_solution(),
        products.vjp,
        shape,
        options.damping,
        progress=lambda x: progress(0.5 + 0.5 * x, "full-system residual"),
    )
    return MetricSolve(
        solve.influence,
        lambda: y0,
        {
            "energy_threshold": energy_threshold,
            "subspace_eigenvalues": tuple(solve.metric_eigenvalues.tolist()),
            "rank": basis.rank,
            "residuals": tuple(res.relative.tolist()),
            **products.report(),
        },
    )


@dataclass(frozen=True)
class DeflatedStart:
    """Where deflated cg starts: the Galerkin solution y₀ in K_d = span{G, ηG, …} with its
    residual rows (``start``), the projection that keeps cg's directions A-conjugate to K_d
    (``project``) and what the diagnostics report of it (``fields``)."""

    start: tuple[Tensor, Tensor]
    project: Deflation | None
    fields: dict[str, Any]


def deflated_start(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    share: float,
    progress: StageProgress,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> DeflatedStart:
    """The Galerkin solve in the block Krylov space of ``options.depth`` blocks, its full
    residual, and the deflation of that space (AQ: the basis construction's η q_j reused, one
    VJP per row of the last block). Depth 1 is span(G): the ``subspace`` solution at the same
    energy threshold (cg's default is 1, subspace's 1 − 1e-4). Why deeper:
    every block removes more of the large eigenvalues of η that make cold cg slow (on the
    P = 880 trained model at rtol 5e-2, summed iterations fall from 1348 cold to 366 at
    depth 1 and 18 at depth 4). ``precondition``: the Krylov space of the preconditioned
    metric (``block_krylov_basis``)."""
    galerkin = _krylov_galerkin(
        options, products, g, shape, 0.8 * share, progress, precondition, keep_eta=True
    )
    kbasis, project = galerkin.basis, None
    if kbasis.rank:
        project = deflation(
            kbasis.q, kbasis.pushed, products.vjp, shape, options.damping, kbasis.eta_rows
        )
    progress(share, "deflation")
    fields = {
        **galerkin.fields(options),
        "start_residuals": tuple(galerkin.residual.relative.tolist()),
    }
    return DeflatedStart((galerkin.y0, galerkin.residual.rows), project, fields)


def _cg(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
) -> MetricSolve:
    """Block CG to ``options.rtol``: from zero (cold), or from the Galerkin solution in the
    block Krylov space of ``options.depth`` blocks with that space deflated (its Galerkin
    residual is orthogonal to it: CG continues on the complement)."""
    assert options.rtol is not None  # InfluenceOptions requires it for cg
    start, project, start_fields, head, precondition = None, None, {}, 0.0, None
    if options.cg_start is CGStart.PRECONDITIONED:
        precondition = ekfac_preconditioner(options, products, progress)
    if options.cg_start is not CGStart.COLD:
        head = 0.3  # of the progress bar: the Galerkin start's; the rest is cg's
        begin = deflated_start(options, products, g, shape, head, progress, precondition)
        start, project, start_fields = begin.start, begin.project, begin.fields
    cg = block_cg(
        products.metric_rows(options.damping),
        g,
        options.rtol,
        options.max_iter,
        progress=lambda x: progress(head + (1 - head) * x, "conjugate gradients"),
        start=start,
        deflation=project,
        precondition=precondition,
    )
    return MetricSolve(
        lambda ga: gram64(ga, cg.solution),
        lambda: cg.solution,
        {
            "rtol": options.rtol,
            "max_iter": options.max_iter,
            "iterations": cg.iterations,
            "residuals": cg.residuals,
            "converged": cg.converged,
            "worst_residual": max(cg.residuals, default=0.0),
            "cg_start": options.cg_start.value,
            **start_fields,
            **products.report(),
        },
    )
