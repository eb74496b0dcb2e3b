"""Block Krylov (Galerkin) solves of (η + λI) y_p = g_B(p), their full-system residuals, and
the deflated conjugate gradients that continue from them (METHOD.md §4).

Notation as in ``estimators``: G [N, P] holds g_B(p) as rows, η = JᵀJ, A = η + λI. A basis is
stored as rows q_j of Q [s, P] (model dtype, orthonormal up to its rounding) beside the pushed
tangents JQ [s, N·D]; the Galerkin system is written for any basis,
    (QηQᵀ + λ QQᵀ) C = Q Gᵀ,   y_p = Qᵀ c_p,
with QηQᵀ = (JQ)(JQ)ᵀ and QQᵀ accumulated in float64, so a slightly non-orthonormal float32 Q
costs nothing in accuracy.

- ``krylov`` (depth d): Q spans the block Krylov space K_d = span{G, ηG, …, η^{d−1}G}, built by
  block Lanczos with full re-orthogonalisation (each new block ηQ_j is projected off all
  earlier blocks twice, then orthonormalised by the float64 Gram trick). d = 1 is span(G), the
  ``subspace`` estimator's space; the Galerkin solve in K_d is d steps of block CG started
  from zero. Cost in batch forwards (JVP ≈ 2.2, VJP ≈ 2): Σ_j s_j JVPs + Σ_{j<d} s_j VJPs,
  s_j ≤ N the rank of block j, i.e. ≤ N·(2.2·d + 2·(d − 1)). Memory: Q's buffer of d·N rows,
  one block of ηQ (N rows; all of them when kept for deflation) and the pushed tangents
  (d·N rows of N·D numbers): ``pipeline.solver_numbers`` counts them.
- ``ekfac-krylov``: the same construction for the preconditioned operator M̃⁻¹A (M̃ = η̃ + λI,
  η̃ the EK-FAC approximation of ``kfac``): block 1 spans M̃⁻¹G, block j+1 is M̃⁻¹(A Q_j)
  projected off the earlier blocks. d steps of preconditioned block CG; at energy threshold 1
  (its default) M̃⁻¹g_p lies in the space, so the Galerkin solution is never further from
  the full solve in A's norm than EK-FAC's own. As an estimator, block 1 also holds span(G)
  at 1 − 1e-4 (``span_g_threshold``): the spectrum panel's metric, and a solution never
  further than ``subspace``'s either, for s₁ ≤ N more JVPs. Otherwise the same products as
  ``krylov`` (the preconditioner needs no model evaluation).
- Full-system residual of any Galerkin solution: ρ_p = ‖g_B(p) − (η + λI) y_p‖ / ‖g_B(p)‖.
  J y_p = Σ_j c_jp J q_j comes from the stored pushed tangents (no JVP), so ρ costs N batch
  VJPs (≈ 2N forwards).
- Residual correction (``ekfac-krylov``): for Galerkin solutions x_r, y_p in one space with
  residuals r_r, r_p (both orthogonal to it), g_rᵀA⁻¹g_p = g_rᵀy_p + r_rᵀA⁻¹r_p exactly; the
  estimator adds r_rᵀM̃⁻¹r_p, EK-FAC's estimate of the remainder, from the residual rows it
  already computes (no model evaluation). It is the first-order effect of the step
  z_p = y_p + P M̃⁻¹r_p, P = I − QᵀE⁻¹QA (M̃⁻¹r_p made A-orthogonal to the space), on every
  SMSE response, so the counterfactual check steps along z_p (one JVP + one VJP per column).
- Deflated CG (Saad, Yeung, Erhel & Guyomarc'h 2000): start from the Galerkin solution, whose
  residual is orthogonal to span(Q), and keep every search direction A-conjugate to span(Q):
  d ← r + βd − Qᵀ E⁻¹ (AQ) r, E = QAQᵀ. CG then runs on the complement of span(Q), where
  the large eigenvalues of η that dominate the gradients have been removed. Extra cost over
  cold CG: AQ (the last block's VJPs, once: the basis construction computed η q_j for the
  others) and s×P products per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from coherence.analysis.estimators import gram64, subspace_basis
from coherence.errors import RequestError

Rows = Callable[[Tensor], Tensor]  # rows [k, ·] → rows [k, ·]


def _drop_below(dtype: torch.dtype) -> float:
    """Relative singular-value floor of a new Krylov block: 100× the dtype's rounding."""
    return 100 * torch.finfo(dtype).eps


def orthonormal_rows(w: Tensor, floor: float, scale: float | None = None) -> Tensor:
    """Orthonormal rows spanning the directions of w [k, P] with singular value above
    floor·scale (scale: the largest row norm of w unless given), by the float64 Gram trick
    applied twice (the second pass removes the float32 loss of orthogonality of the first)."""
    if scale is None:
        scale = float(torch.linalg.vector_norm(w, dim=1).max()) if len(w) else 0.0
    if scale == 0.0:
        return w[:0]
    for threshold in ((floor * scale) ** 2, 0.25):  # second pass: rows already ≈ orthonormal
        evals, evecs = torch.linalg.eigh(gram64(w, w))  # (k, k) float64, ascending
        keep = evals > threshold
        if not bool(keep.any()):
            return w[:0]
        coeff = evecs[:, keep] / evals[keep].sqrt()  # (k, s) = V Σ⁻¹
        w = coeff.T.to(w.dtype) @ w  # (s, P)
    return w


def project_out(w: Tensor, q: Tensor) -> Tensor:
    """w − (w Qᵀ) Q twice (classical Gram–Schmidt with re-orthogonalisation), coefficients in
    float64: rows of w [k, P] made orthogonal to the rows of q [s, P]."""
    for _ in range(2):
        w = w - gram64(w, q).to(w.dtype) @ q
    return w


@dataclass(frozen=True)
class GalerkinBasis:
    """Rows q [s, P] of the basis, their pushed tangents J q [s, N·D], the rank of each Krylov
    block, and the eigenvalues of the metric QηQᵀ on span(G)'s rows of the first block (the
    ``subspace`` spectrum; None when block 1 holds no span(G): preconditioned, no
    ``span_g_threshold``)."""

    q: Tensor
    pushed: Tensor
    block_ranks: tuple[int, ...]
    first_block_eigenvalues: Tensor | None  # (s₁,) float64, descending
    eta_rows: Tensor | None = None  # η q_j for the first rows of q (kept on request), [k, P]

    @property
    def rank(self) -> int:
        return self.q.shape[0]


def _push_into(
    out: Tensor, q: Tensor, jvp: Callable[[Tensor], Tensor], tick: Callable[[], None]
) -> None:
    """Rows J q_j (flattened, N·D each) written into ``out`` [len(q), N·D]."""
    for j, qj in enumerate(q.unbind(0)):
        out[j] = jvp(qj).reshape(-1)
        tick()


def block_krylov_basis(
    g: Tensor,
    jvp: Callable[[Tensor], Tensor],
    vjp: Callable[[Tensor], Tensor],
    output_shape: torch.Size,
    *,
    depth: int,
    energy_threshold: float,
    progress: Callable[[float], None] | None = None,
    keep_eta: bool = False,
    precondition: Rows | None = None,
    damping: float = 0.0,
    span_g_threshold: float | None = None,
    spectrum_threshold: float | None = None,
) -> GalerkinBasis:
    """Block Lanczos basis of K_depth = span{G, ηG, …} (see the module docstring), or with
    ``precondition`` (rows → M̃⁻¹ rows, e.g. EK-FAC's (η̃ + λI)⁻¹) of the preconditioned
    space span{M̃⁻¹G, M̃⁻¹A M̃⁻¹G, …}, A = η + ``damping``·I: the space d steps of
    preconditioned block CG search, so (at energy threshold 1: no direction of M̃⁻¹G dropped)
    its Galerkin solution is at least as close to the full solve (in A's norm) as M̃⁻¹g_p.
    ``span_g_threshold`` (with ``precondition``): block 1 also holds span(G) at that
    threshold, first, so the reported spectrum is ``subspace``'s at that threshold and the
    solution at least as close as ``subspace``'s too (s₁ more JVPs). ``spectrum_threshold``
    (without ``precondition``, below ``energy_threshold``): the reported spectrum is that of
    span(G) at this threshold, as ``subspace`` reports it (METHOD.md keeps 1 − 1e-4), not of
    the fuller block 1 the solve uses; its metric is block 1's, restricted (no JVP).

    Block 1 is the leading span of G holding ``energy_threshold`` of Σσ² (as ``subspace``);
    block j+1 is ηQ_j = Jᵀ(JQ_j) projected off every earlier block, keeping directions above
    100·eps of its largest row norm (numerically new). ``jvp``: v [P] → J v (``output_shape``);
    ``vjp``: u (``output_shape``) → Jᵀu [P]. Stops early when a block adds nothing (an
    invariant subspace: the Galerkin solution is then the full solve). ``keep_eta`` keeps the
    products η q_j the construction computes anyway (every block but the last, or all of them
    after an early stop) as ``eta_rows``: deflation reuses them instead of repeating the VJPs.
    Memory: q, the pushed tangents and η q_j are filled into buffers of depth·N rows (2N a
    block with span(G) added; the size the cost estimate counts), so no block list is
    copied into a stacked one.
    """
    first = g if precondition is None else precondition(g)
    block = subspace_basis(first, energy_threshold).orthonormal_rows()  # (s₁, P)
    spectrum_rows = None if precondition is not None else block.shape[0]  # span(G)'s rows
    if precondition is not None and span_g_threshold is not None:
        span_g = subspace_basis(g, span_g_threshold).orthonormal_rows()
        block = orthonormal_rows(project_out(block, span_g), _drop_below(g.dtype), 1.0)
        block = orthonormal_rows(project_out(block, span_g), 0.5, 1.0)
        block, spectrum_rows = torch.cat([span_g, block]), span_g.shape[0]
    n, p = g.shape
    width = max(n, block.shape[0])  # rows a block can have: ≤ N, ≤ 2N with span(G) added
    total = max(1, depth * width + (depth - 1) * width)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done / total, 1.0))

    q = g.new_empty(depth * width, p)  # rows 0 … filled − 1 hold the basis
    eta = g.new_empty((depth - 1) * width if keep_eta else 0, p)  # η q_j of the kept blocks
    pushed = g.new_empty(depth * width, output_shape.numel())  # J q_j, flattened (N·D each)
    filled, previous, eta_filled, ranks = 0, 0, 0, []
    for level in range(depth):
        if level > 0:
            k = filled - previous  # rows of the last block
            eta_q = eta[eta_filled : eta_filled + k] if keep_eta else g.new_empty(k, p)
            for j, u in enumerate(pushed[previous:filled].unbind(0)):
                eta_q[j] = vjp(u.reshape(output_shape))  # η q_j = Jᵀ(J q_j), (P,)
                tick()
            eta_filled += k if keep_eta else 0
            earlier = q[:filled]
            if precondition is not None:  # M̃⁻¹(η + λI) q_j: λ q_j is not in the span here
                eta_q = precondition(eta_q + damping * q[previous:filled])
            scale = float(torch.linalg.vector_norm(eta_q, dim=1).max())
            block = orthonormal_rows(project_out(eta_q, earlier), _drop_below(g.dtype), scale)
            # normalising amplifies the rounding left along earlier blocks: project once more
            block = orthonormal_rows(project_out(block, earlier), 0.5, 1.0)
        if not len(block):
            break
        s = block.shape[0]
        q[filled : filled + s] = block
        _push_into(pushed[filled : filled + s], block, jvp, tick)
        previous, filled = filled, filled + s
        ranks.append(s)
    if not ranks:
        empty = torch.zeros(0, dtype=torch.float64, device=g.device)
        spectrum = empty if spectrum_rows is not None else None
        return GalerkinBasis(g[:0], g.new_zeros(0, 0), (), spectrum)
    evals = None
    if spectrum_rows is not None:
        first_pushed = pushed[:spectrum_rows]
        metric1 = gram64(first_pushed, first_pushed)
        narrower = spectrum_threshold is not None and spectrum_threshold < energy_threshold
        if precondition is None and narrower:  # span(G) at that threshold lies in block 1
            leading = subspace_basis(g, spectrum_threshold).orthonormal_rows()
            within = gram64(leading, q[:spectrum_rows])  # its rows in block 1's basis
            metric1 = within @ metric1 @ within.T
        evals = torch.linalg.eigvalsh(0.5 * (metric1 + metric1.T)).flip(0)
    eta_rows = eta[:eta_filled] if keep_eta else None
    return GalerkinBasis(q[:filled], pushed[:filled], tuple(ranks), evals, eta_rows)


@dataclass(frozen=True)
class GalerkinSolve:
    """Coefficients C [s, N] (float64) of y_p = Qᵀ c_p solving (QηQᵀ + λQQᵀ) C = Q Gᵀ."""

    basis: GalerkinBasis
    coefficients: Tensor
    rhs: Tensor  # Q Gᵀ [s, N] (float64): the right-hand side the coefficients solve

    def influence(self, ga: Tensor) -> Tensor:
        """H·D = G_A Y ᵀ = (Q g_A)ᵀ C for response gradients ga [N, P], float64 [N, N]."""
        return gram64(self.basis.q, ga).T @ self.coefficients

    def own_influence(self) -> Tensor:
        """G Yᵀ = (Q G)ᵀ C for the solved gradients themselves, without a pass over P."""
        return self.rhs.T @ self.coefficients

    def solution(self) -> Tensor:
        """Y [N, P] in the model dtype: row p is y_p."""
        return self.coefficients.T.to(self.basis.q.dtype) @ self.basis.q

    def pushed_solution(self) -> Tensor:
        """J Y as rows [N, N·D] from the stored pushed tangents (no JVP)."""
        return self.coefficients.T.to(self.basis.pushed.dtype) @ self.basis.pushed


def galerkin_system(q: Tensor, pushed: Tensor, damping: float) -> Tensor:
    """E = QAQᵀ = (JQ)(JQ)ᵀ + λQQᵀ in float64, symmetrised (s×s): positive definite by
    construction, where Q·(AQ)ᵀ from float32 VJPs can lose definiteness."""
    system = gram64(pushed, pushed) + damping * gram64(q, q)
    return 0.5 * (system + system.T)


def galerkin_solve(basis: GalerkinBasis, g: Tensor, damping: float) -> GalerkinSolve:
    """Solve (QηQᵀ + λQQᵀ) C = Q Gᵀ in float64 (an s×s system; s ≤ depth·N)."""
    rhs = gram64(basis.q, g)  # (s, N)
    if not len(rhs):
        return GalerkinSolve(basis, rhs.new_zeros(0, g.shape[0]), rhs)
    system = galerkin_system(basis.q, basis.pushed, damping)
    return GalerkinSolve(basis, torch.linalg.solve(system, rhs), rhs)


@dataclass(frozen=True)
class FullResidual:
    """R = G − (η + λI) Y as rows [N, P] (model dtype) and ρ_p = ‖R_p‖/‖g_p‖ (float64)."""

    rows: Tensor
    relative: Tensor


def full_residual(
    g: Tensor,
    y: Tensor,
    pushed_y: Tensor,
    vjp: Callable[[Tensor], Tensor],
    output_shape: torch.Size,
    damping: float,
    progress: Callable[[float], None] | None = None,
) -> FullResidual:
    """Residual of the full system for solutions y [N, P] whose pushed tangents J y_p are
    known (``pushed_y`` [N, N·D]): N batch VJPs η y_p = Jᵀ(J y_p), ≈ 2N forwards. A zero
    right-hand side has relative residual 0."""
    if pushed_y.shape[1] == 0:  # an empty basis: y = 0, nothing to push
        residual = g - damping * y
    else:
        residual = torch.empty_like(g)  # filled row by row: no list beside a stacked copy
        for p, u in enumerate(pushed_y.unbind(0)):
            residual[p] = g[p] - vjp(u.reshape(output_shape)) - damping * y[p]
            if progress is not None:
                progress((p + 1) / len(pushed_y))
    b_norm = torch.linalg.vector_norm(g, dim=1).double()
    r_norm = torch.linalg.vector_norm(residual, dim=1).double()
    relative = torch.where(b_norm > 0, r_norm / b_norm.clamp_min(1e-300), torch.zeros_like(b_norm))
    return FullResidual(residual, relative)


@dataclass(frozen=True)
class Deflation:
    """The projection r ↦ r − Qᵀ E⁻¹ (AQ) r that keeps CG directions A-conjugate to span(Q).

    a_q = AQ = ηQ + λQ [s, P] (VJPs of the last block only, once); E = QAQᵀ (float64, s×s,
    factored once).
    Per call on k rows: 2·s·k·P multiply-adds, no model evaluations."""

    q: Tensor
    a_q: Tensor
    factor: Tensor  # Cholesky factor of E

    def __call__(self, r: Tensor) -> Tensor:
        mu = torch.cholesky_solve(gram64(self.a_q, r), self.factor)  # (s, k)
        return r - mu.T.to(r.dtype) @ self.q

    def correct(self, y: Tensor, r: Tensor) -> None:
        """In place: y += Qᵀμ and r −= (AQ)ᵀμ with μ = E⁻¹Qr, so r = b − Ay stays the
        residual of y and becomes orthogonal to span(Q) (the Galerkin condition) again."""
        mu = torch.cholesky_solve(gram64(self.q, r), self.factor).T  # (k, s)
        y += mu.to(y.dtype) @ self.q
        r -= mu.to(r.dtype) @ self.a_q


def deflation(
    q: Tensor,
    pushed: Tensor,
    vjp: Callable[[Tensor], Tensor],
    output_shape: torch.Size,
    damping: float,
    eta_rows: Tensor | None = None,
) -> Deflation:
    """The deflation of span(q) (rows q [s, P], pushed tangents J q [s, N·D]): AQ from batch
    VJPs of the stored tangents (no JVP) and the Cholesky factor of QAQᵀ. ``eta_rows`` [k, P]
    holds η q_j for the first k rows when known (``block_krylov_basis(keep_eta=True)``): only
    the other s − k rows cost a VJP."""
    a_q = damping * q  # (s, P), filled in place: no list of rows beside the stacked copy
    known = 0
    if eta_rows is not None:
        known = len(eta_rows)
        a_q[:known] += eta_rows
    for j in range(known, len(q)):
        a_q[j] += vjp(pushed[j].reshape(output_shape))
    # E = QAQᵀ as the Galerkin start solved it (not Q·(AQ)ᵀ, which loses definiteness once
    # the basis holds directions whose η-energy is below λ at the model's rounding)
    factor, info = torch.linalg.cholesky_ex(galerkin_system(q, pushed, damping))
    if int(info) != 0:
        raise RequestError(
            f"the deflated cg start's basis ({len(q)} rows) is numerically dependent at "
            f"damping λ = {damping:g}: raise --damping, or lower --depth or --energy-threshold, "
            "or use --cg-start cold"
        )
    return Deflation(q, a_q, factor)


@dataclass(frozen=True)
class ResidualCorrection:
    """The SMSE pairing's remainder estimate R M̃⁻¹Rᵀ (float64 [N, N], ``matrix``) and the
    step that realises it: ``steps(index)`` gives P M̃⁻¹r_p [k, P] for those columns, so that
    g_rᵀ(y_p + P M̃⁻¹r_p) = g_rᵀy_p + r_rᵀM̃⁻¹r_p for every response example r."""

    matrix: Tensor
    steps: Callable[[Tensor], Tensor]


def residual_correction(
    basis: GalerkinBasis,
    residual_rows: Tensor,
    precondition: Rows,
    metric_rows: Rows,
    damping: float,
    chunk: int = 8,
) -> ResidualCorrection:
    """R M̃⁻¹Rᵀ from the Galerkin solution's residual rows R [N, P] (one preconditioner
    application, no model evaluation, ``chunk`` rows of M̃⁻¹R at a time: no second N×P
    buffer); the steps cost one JVP + one VJP per column asked for (``metric_rows``: rows
    v ↦ (η + λI)v)."""
    n = len(residual_rows)
    matrix = residual_rows.new_zeros(n, n, dtype=torch.float64)
    for start in range(0, n, chunk):
        block = precondition(residual_rows[start : start + chunk])  # M̃⁻¹r_p
        matrix[:, start : start + chunk] = gram64(residual_rows, block)
    matrix = 0.5 * (matrix + matrix.T)  # symmetric in exact arithmetic (M̃ is)

    def steps(index: Tensor) -> Tensor:
        w = precondition(residual_rows[index])
        if not basis.rank:
            return w
        system = galerkin_system(basis.q, basis.pushed, damping)
        mu = torch.linalg.solve(system, gram64(basis.q, metric_rows(w)))  # (s, k)
        return w - mu.T.to(w.dtype) @ basis.q

    return ResidualCorrection(matrix, steps)
