"""M⁻¹ applied to the perturbation gradients g_B(p), one solve per estimator (METHOD.md §4).

M = η + λI (``subspace``, ``krylov``, ``cg``) or I (``euclidean``). The batch Jacobian's
products are counted for the cost report. Shared by ``compute_influence`` (H = G_A Yᵀ / D)
and the counterfactual check (it steps along the rows y_p), so both see the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from coherence.analysis.autodiff import BatchJacobian, FlatModel
from coherence.analysis.estimators import (
    SubspaceBasis,
    SubspaceSolve,
    block_cg,
    euclidean_influence,
    gram64,
    subspace_basis,
    subspace_solve,
)
from coherence.analysis.krylov import (
    FullResidual,
    block_krylov_basis,
    deflation,
    full_residual,
    galerkin_solve,
)
from coherence.analysis.request import InfluenceOptions
from coherence.analysis.vocabulary import CGStart, Estimator

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
    return _cg(options, products, g, inputs.shape, progress)


def _krylov(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
) -> MetricSolve:
    """Galerkin solve in the block Krylov space span{G, ηG, …} (``options.depth`` blocks)."""
    energy_threshold = options.resolved_energy_threshold
    kbasis = block_krylov_basis(
        g,
        products.jvp,
        products.vjp,
        shape,
        depth=options.depth,
        energy_threshold=energy_threshold,
        progress=lambda x: progress(0.8 * x, "block Krylov basis"),
    )
    ksolve = galerkin_solve(kbasis, g, options.damping)
    kres = full_residual(
        g,
        ksolve.solution(),
        ksolve.pushed_solution(),
        products.vjp,
        shape,
        options.damping,
        progress=lambda x: progress(0.8 + 0.2 * x, "full-system residual"),
    )
    return MetricSolve(
        ksolve.influence,
        ksolve.solution,
        {
            "energy_threshold": energy_threshold,
            "depth": options.depth,
            "rank": kbasis.rank,
            "block_ranks": kbasis.block_ranks,
            "subspace_eigenvalues": tuple(kbasis.first_block_eigenvalues.tolist()),
            "residuals": tuple(kres.relative.tolist()),
            **products.report(),
        },
    )


@dataclass(frozen=True)
class _Galerkin:
    """The Galerkin solve in span(G): its basis, solve, solution y0 and full residual."""

    basis: SubspaceBasis
    solve: SubspaceSolve
    y0: Tensor
    residual: FullResidual

    def fields(self, energy_threshold: float) -> dict[str, Any]:
        return {
            "energy_threshold": energy_threshold,
            "subspace_eigenvalues": tuple(self.solve.metric_eigenvalues.tolist()),
        }


def _galerkin(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    share: float,
    progress: StageProgress,
) -> _Galerkin:
    """Solve in span(G) and measure the full-system residual (``share`` of the progress)."""
    basis = subspace_basis(g, options.resolved_energy_threshold)
    solve = subspace_solve(
        basis,
        g,
        products.jvp,
        options.damping,
        progress=lambda x: progress(share * 0.5 * x, "subspace JVPs"),
    )
    y0 = solve.solution()
    res = full_residual(
        g,
        y0,
        solve.pushed_solution(),
        products.vjp,
        shape,
        options.damping,
        progress=lambda x: progress(share * (0.5 + 0.5 * x), "full-system residual"),
    )
    return _Galerkin(basis, solve, y0, res)


def _subspace(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
) -> MetricSolve:
    """Galerkin solve in span(G), ``options.energy_threshold`` of Σσ² kept."""
    galerkin = _galerkin(options, products, g, shape, 1.0, progress)
    return MetricSolve(
        galerkin.solve.influence,
        lambda: galerkin.y0,
        {
            **galerkin.fields(options.resolved_energy_threshold),
            "rank": galerkin.basis.rank,
            "residuals": tuple(galerkin.residual.relative.tolist()),
            **products.report(),
        },
    )


def _cg(
    options: InfluenceOptions,
    products: CountedJacobian,
    g: Tensor,
    shape: torch.Size,
    progress: StageProgress,
) -> MetricSolve:
    """Block CG to ``options.rtol``: from zero (cold), or from the Galerkin solution with
    span(Q) deflated (the Galerkin residual is orthogonal to span(Q): CG continues on the
    complement)."""
    assert options.rtol is not None  # InfluenceOptions requires it for cg
    start, project, start_fields, head = None, None, {}, 0.0
    if options.cg_start is CGStart.DEFLATED:
        head = 0.3  # of the progress bar: the Galerkin start's; the rest is cg's
        galerkin = _galerkin(options, products, g, shape, head, progress)
        basis, solve = galerkin.basis, galerkin.solve
        if basis.rank and solve.pushed is not None:
            whiten = basis.whiten.T.to(g.dtype)  # rows of whitenᵀq: orthonormal basis of span(Q)
            project = deflation(
                whiten @ basis.q, whiten @ solve.pushed, products.vjp, shape, options.damping
            )
        start = (galerkin.y0, galerkin.residual.rows)
        start_fields = {
            **galerkin.fields(options.resolved_energy_threshold),
            "start_residuals": tuple(galerkin.residual.relative.tolist()),
        }
    cg = block_cg(
        products.metric_rows(options.damping),
        g,
        options.rtol,
        options.max_iter,
        progress=lambda x: progress(head + (1 - head) * x, "conjugate gradients"),
        start=start,
        project=project,
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
