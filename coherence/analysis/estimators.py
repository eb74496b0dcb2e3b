"""Estimators of H[r, p] = g_A(r)ᵀ M⁻¹ g_B(p) / D (METHOD.md §4), given the gradients.

Notation: G [N, P] holds g_B(p) = J_pᵀ r_C(p) as rows (SMSE, the perturbation), GA [N, P]
holds g_A(r) for one response; η = Σ_n J_nᵀ J_n; λ the damping. Every small dense product
(Gram matrices, the s×s solve) is accumulated in float64, whatever the model dtype.

- ``euclidean``: M = I, H = GA Gᵀ / D. Cost: P·N² multiply-adds, no model evaluations.
- ``subspace``: Galerkin projection of (η + λI) y_p = g_B(p) onto span(G):
  H = (Qᵀg_A)ᵀ (QᵀηQ + λI)⁻¹ (QᵀG) / D, Q an orthonormal basis of the leading directions of
  span(G). This is exact for its definition (no tolerance) but it equals the full solve
  g_Aᵀ(η + λI)⁻¹g_B only when every solution y_p lies in span(Q), e.g. when Q spans all of R^P
  (P ≤ N with G of full rank) or when span(Q) is an invariant subspace of η. In general it
  differs: the full solve with P ≥ N·D and tiny λ tends to a trivially diagonal H, the
  projected one does not. Cost: s ≤ N batch JVPs (≈ 2 forwards each; see ``tangents``).
  Its full-system residual ‖g_B(p) − (η + λI) y_p‖/‖g_B(p)‖ is reported per column (N batch
  VJPs, ≈ 2N forwards; see ``krylov.full_residual``).
- ``krylov`` (depth d): the same Galerkin solve in the block Krylov space span{G, ηG, …,
  η^{d−1}G} (block Lanczos, see ``krylov``): d steps of block CG. Cost ≤ N·d JVPs +
  N·(d − 1) VJPs (≈ N·(4.2·d − 2) forwards), plus the residual's N VJPs.
- ``cg``: the full solve, matrix-free, by N independent conjugate-gradient runs stopped at a
  relative residual rtol. Default start ``deflated``: from the ``krylov`` solution of depth d
  with that space deflated (``krylov.Deflation``), so CG continues on the complement, where
  the large eigenvalues of η are gone; ``cold``: from zero. Cost: per iteration and
  unconverged column one batch JVP + one batch VJP (≈ 4 forwards); the deflated start adds
  the krylov solve, its residual and AQ (≤ d·N JVPs + (d + 1)·N VJPs: AQ reuses the basis
  construction's products and needs VJPs for its last block only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

# the estimator vocabulary lives in vocabulary.py (torch-free); re-exported for old imports
from coherence.analysis.vocabulary import (  # noqa: F401
    DEFAULT_DEPTH,
    DEFAULT_ENERGY_THRESHOLD,
    KRYLOV_ENERGY_THRESHOLD,
    CGStart,
    Estimator,
    default_energy_threshold,
    parse_cg_start,
    parse_estimator,
)

_GRAM_CHUNK = 1 << 18  # parameter columns per float64 block: bounds the temporary copies


def gram64(a: Tensor, b: Tensor) -> Tensor:
    """a [K, L] · bᵀ [L, M] → [K, M] in float64, in blocks of columns (memory K·block·8 B)."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[1], _GRAM_CHUNK):
        block = slice(start, start + _GRAM_CHUNK)
        a64 = a[:, block].double()
        out += a64 @ (a64 if b is a else b[:, block].double()).T  # a Gram: convert once
    return out


def euclidean_influence(ga: Tensor, g: Tensor) -> Tensor:
    """H·D = GA Gᵀ: the plain gradient dot product (TracIn-style baseline), float64 [N, N]."""
    return gram64(ga, g)


# ---------------------------------------------------------------- subspace (Galerkin) -----


@dataclass(frozen=True)
class SubspaceBasis:
    """Rows of ``q`` [s, P] span the leading directions of span(G); ``whiten`` [s, s'] (float64)
    maps them to an exactly orthonormal basis Q̃ = whitenᵀ q, correcting the loss of
    orthogonality of q in low precision."""

    q: Tensor
    whiten: Tensor
    gram_eigenvalues: Tensor  # σ² of G, descending, float64

    @property
    def rank(self) -> int:
        return self.whiten.shape[1]

    def orthonormal_rows(self) -> Tensor:
        """Q̃ = whitenᵀ q [s', P] in the model dtype (no rows when G is zero)."""
        return self.whiten.T.to(self.q.dtype) @ self.q if self.rank else self.q[:0]


def subspace_basis(g: Tensor, energy_threshold: float) -> SubspaceBasis:
    """Leading singular directions of G (rows g [N, P]) holding ``energy_threshold`` of Σσ².

    Method: eigh of the N×N Gram G Gᵀ accumulated in float64, not a thin SVD of the P×N
    matrix: with P ≫ N the Gram costs P·N² multiply-adds and N² extra memory, while an accurate
    SVD needs a float64 copy of G (P·N·8 bytes; 5 GB for a 13M-parameter UNet at N = 48) and a
    tall QR. Squaring the condition number is harmless: the float64 Gram of the (float32) G is
    exact to ~1e-16·σ₁², and directions below N·1e-15·σ₁² are dropped as numerically zero.
    Keep the smallest s with Σ_{i≤s} σᵢ² ≥ threshold·Σσ². q = Σ⁻¹VᵀG in the model dtype;
    its residual non-orthogonality is removed by whitening with S = q qᵀ (float64), dropping
    directions with eigenvalue below 1e-10 of the largest.
    """
    gram = gram64(g, g)  # (N, N) float64
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)  # descending
    total = evals.sum()
    if total <= 0:
        empty = torch.zeros(0, dtype=torch.float64, device=g.device)
        return SubspaceBasis(g.new_zeros(0, g.shape[1]), empty.reshape(0, 0), evals)
    cumulative = torch.cumsum(evals, 0)
    s = int(torch.searchsorted(cumulative, energy_threshold * cumulative[-1]).item()) + 1
    s = min(s, int((evals > g.shape[0] * 1e-15 * evals[0]).sum().item()))
    coeff = evecs[:, :s] / evals[:s].sqrt()  # (N, s) = V Σ⁻¹
    q = coeff.T.to(g.dtype) @ g  # (s, P)
    s_evals, s_evecs = torch.linalg.eigh(gram64(q, q))
    keep = s_evals > 1e-10 * s_evals.max()
    whiten = s_evecs[:, keep] / s_evals[keep].sqrt()  # (s, s')
    return SubspaceBasis(q, whiten, evals)


@dataclass(frozen=True)
class SubspaceSolve:
    """(QᵀηQ + λI)⁻¹ QᵀG and what is reported: the eigenvalues of QᵀηQ (descending)."""

    basis: SubspaceBasis
    solved: Tensor  # (s', N) float64: (Q̃ᵀηQ̃ + λI)⁻¹ Q̃ᵀG
    metric_eigenvalues: Tensor  # (s',) float64
    pushed: Tensor | None = None  # (s, N·D): J q_j, kept for the full-system residual

    def influence(self, ga: Tensor) -> Tensor:
        """H·D = (Q̃ᵀ g_A)ᵀ (Q̃ᵀηQ̃ + λI)⁻¹ Q̃ᵀG for response gradients ga [N, P], float64."""
        coeff_a = self.basis.whiten.T @ gram64(self.basis.q, ga)  # (s', N)
        return coeff_a.T @ self.solved

    def _coefficients(self) -> Tensor:
        """y_p = qᵀ (whiten · solved)_p: (s, N) float64 coefficients on the rows of q."""
        return self.basis.whiten @ self.solved

    def solution(self) -> Tensor:
        """Y [N, P] in the model dtype: row p is the Galerkin solution y_p."""
        return self._coefficients().T.to(self.basis.q.dtype) @ self.basis.q

    def pushed_solution(self) -> Tensor:
        """J Y as rows [N, N·D] from the stored pushed tangents (no JVP)."""
        if self.pushed is None or not len(self.pushed):
            return self.basis.q.new_zeros(self.solved.shape[1], 0)
        return self._coefficients().T.to(self.pushed.dtype) @ self.pushed


def subspace_solve(
    basis: SubspaceBasis,
    g: Tensor,
    jvp: Callable[[Tensor], Tensor],
    damping: float,
    progress: Callable[[float], None] | None = None,
) -> SubspaceSolve:
    """Form Q̃ᵀηQ̃ = Σ_n (J_n Q̃)ᵀ(J_n Q̃) from s batch JVPs J q_j and solve against Q̃ᵀG.

    Memory: the s pushed tangents, s·N·D numbers in the model dtype.
    """
    s = basis.q.shape[0]
    pushed = []
    for j, qj in enumerate(basis.q.unbind(0)):
        pushed.append(jvp(qj).reshape(-1))  # (N·D,)
        if progress is not None:
            progress((j + 1) / s)
    w = basis.whiten
    jq = torch.stack(pushed) if s else None  # (s, N·D)
    metric = w.T @ gram64(jq, jq) @ w if jq is not None else w.new_zeros(0, 0)  # (s', s')
    metric = 0.5 * (metric + metric.T)
    coeff_b = w.T @ gram64(basis.q, g)  # (s', N)
    eye = torch.eye(metric.shape[0], dtype=metric.dtype, device=metric.device)
    solved = torch.linalg.solve(metric + damping * eye, coeff_b)
    eigenvalues = torch.linalg.eigvalsh(metric).flip(0)
    return SubspaceSolve(basis, solved, eigenvalues, jq if s else None)


# --------------------------------------------------------------------------- cg -----------


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise ⟨a_k, b_k⟩ [K] as float64 (computed in the input dtype: no float64 copies)."""
    return torch.linalg.vecdot(a, b).double()


@dataclass(frozen=True)
class CGResult:
    """Solutions Y [K, P] of (η + λI) y_k = b_k, with per-column iteration counts and the TRUE
    final relative residuals ‖b − (η + λI)y‖/‖b‖ (one extra matvec, not the recursive one)."""

    solution: Tensor
    iterations: tuple[int, ...]
    residuals: tuple[float, ...]
    converged: bool


class DeflationLike(Protocol):
    """What cg needs of a deflated space (``krylov.Deflation``): the projection that keeps
    directions A-conjugate to it, and the correction that restores the Galerkin condition."""

    def __call__(self, r: Tensor) -> Tensor: ...

    def correct(self, y: Tensor, r: Tensor) -> None: ...


REFRESH_EVERY = 50  # cg iterations between true-residual refreshes (one matvec each: 2 %)
RESTART_DRIFT = 0.1  # a refresh that moves r by more than this (relative) restarts d


def _same(rows: Tensor) -> Tensor:
    return rows


def block_cg(
    matvec: Callable[[Tensor], Tensor],
    rhs: Tensor,
    rtol: float,
    max_iter: int,
    progress: Callable[[float], None] | None = None,
    *,
    start: tuple[Tensor, Tensor] | None = None,
    deflation: DeflationLike | None = None,
    precondition: Callable[[Tensor], Tensor] | None = None,
    refresh_every: int = REFRESH_EVERY,
) -> CGResult:
    """K independent conjugate-gradient runs, vectorised over the rows of rhs [K, P].

    ``matvec`` maps rows [k, P] → rows [k, P] (an SPD operator). Cold start (default): y = 0,
    r = rhs. ``start`` = (y₀, r₀ = rhs − A y₀) warm-starts every column; ``deflation``
    (``krylov.Deflation``) projects every residual before it enters a search direction,
    d ← deflation(r) + βd, which keeps the directions A-conjugate to a deflated subspace
    (r₀ must then be orthogonal to it, as a Galerkin residual is). ``precondition`` (rows →
    M̃⁻¹ rows, SPD; e.g. EK-FAC's) makes it preconditioned CG: z = M̃⁻¹r enters the
    directions instead of r (projected by the deflation in the same way: deflated PCG,
    Saad et al. 2000), β = r'ᵀz'/rᵀz; convergence is still judged on ‖r‖.

    Finite precision: every ``refresh_every`` iterations, and whenever a column's recursive
    residual claims rtol, its residual is recomputed as rhs − A y (residual replacement),
    ``deflation.correct(y, r)`` moves y so that r is orthogonal to the
    deflated space again, and d is projected anew. Why: in float32 the deflation's AQ is
    only exact to about eps·λ_max, which at λ = 1e-4 is not small against the complement's
    eigenvalues; without refreshes the drift grew the true residual of a demo ViT column
    from 0.099 to 17 over 2000 iterations. A column stops once its refreshed (true)
    residual is ≤ rtol (iterations 0 if it starts there); only the unconverged columns are
    multiplied, so the cost is Σ_k iterations_k matvecs plus the refreshes (+ K for the
    final true residual). ``start``'s tensors are updated in place (the caller hands them
    over). State: y, r, d, [K, P] each in the model dtype, and up to five working blocks of
    the active rows (A·d or A·y, a projected residual, and copies of y, r, d once some
    columns have stopped; one more, z, when preconditioned); row dot products in the model
    dtype, recursions in float64. A zero right-hand side has solution 0 and residual 0.
    """
    k = rhs.shape[0]
    b_norm = torch.linalg.vector_norm(rhs, dim=1).double()  # (K,)
    keep = deflation if deflation is not None else _same
    solve = precondition if precondition is not None else _same
    y, r = (torch.zeros_like(rhs), rhs.clone()) if start is None else start  # start: owned
    z = solve(r)
    d = z.clone() if deflation is None else deflation(z)  # new: r is updated in place
    rz, rr = _rowdot(r, z), _rowdot(r, r)  # (K,) each
    del z
    iterations = torch.zeros(k, dtype=torch.long)
    active = rr.sqrt() > rtol * b_norm
    state = _CGState(y, r, d, rz, rr)

    def step(rows: Tensor | slice, held: _CGState) -> None:
        _cg_step(matvec, keep, solve, held)

    def refresh(rows: Tensor | slice, held: _CGState) -> None:
        _refresh(matvec, rhs[rows], deflation, solve, held)

    for it in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0:
            break
        _on_rows(idx, state, step)
        iterations[idx.cpu()] += 1
        claims = rr[idx].sqrt() <= rtol * b_norm[idx]
        due = refresh_every > 0 and (it + 1) % refresh_every == 0
        stale = idx if due else idx[claims]
        if len(stale):
            _on_rows(stale, state, refresh)
        active[idx] = rr[idx].sqrt() > rtol * b_norm[idx]
        if progress is not None:
            progress((it + 1) / max_iter)
    true_res = torch.linalg.vector_norm(rhs - matvec(y), dim=1).double()
    rel = torch.where(b_norm > 0, true_res / b_norm.clamp_min(1e-300), torch.zeros_like(b_norm))
    converged = not bool(active.any())
    return CGResult(y, tuple(int(i) for i in iterations), tuple(rel.tolist()), converged)


class _CGState(NamedTuple):
    """cg's rows, updated in place: y, r, d [k, P] (model dtype) and rᵀz, rᵀr [k] (float64)."""

    y: Tensor
    r: Tensor
    d: Tensor
    rz: Tensor
    rr: Tensor


def _on_rows(
    idx: Tensor, state: _CGState, update: Callable[[Tensor | slice, _CGState], None]
) -> None:
    """``update(rows, state)`` in place on the rows idx of cg's state: on views when idx is
    every row (no [K, P] copies), else on copies written back."""
    if len(idx) == len(state.y):
        update(slice(None), state)
        return
    held = _CGState(*(t[idx] for t in state))
    update(idx, held)
    for whole, part in zip(state, held, strict=True):
        whole[idx] = part


def _refresh(
    matvec: Callable[[Tensor], Tensor],
    rhs: Tensor,
    deflation: DeflationLike | None,
    solve: Callable[[Tensor], Tensor],
    state: _CGState,
) -> None:
    """In place on rows: r ← rhs − A y (then deflation-corrected), rᵀz and rᵀr recomputed;
    d re-projected, or restarted from z where r moved by more than RESTART_DRIFT of its
    norm (CG's step lengths assume rᵀd = rᵀz, which a large replacement breaks)."""
    y, r, d, rz, rr = state
    fresh = rhs - matvec(y)
    if deflation is not None:
        deflation.correct(y, fresh)
    new_rr = _rowdot(fresh, fresh)
    moved_sq = new_rr + rr - 2 * _rowdot(fresh, r)  # ‖fresh − r‖² without a [k, P] temporary
    moved = moved_sq > RESTART_DRIFT**2 * new_rr
    r.copy_(fresh)
    del fresh
    z = solve(r)
    d[moved] = z[moved]
    rz.copy_(_rowdot(r, z))
    del z
    if deflation is not None:
        d.copy_(deflation(d))
    rr.copy_(new_rr)


def _cg_step(
    matvec: Callable[[Tensor], Tensor],
    keep: Callable[[Tensor], Tensor],
    solve: Callable[[Tensor], Tensor],
    state: _CGState,
) -> None:
    """One (preconditioned) CG iteration on rows, in place."""
    y, r, d, rz, rr = state
    ad = matvec(d)  # (k, P)
    alpha = rz / _rowdot(d, ad)
    y += alpha.to(y.dtype)[:, None] * d
    r -= alpha.to(r.dtype)[:, None] * ad
    del ad
    z = solve(r)
    rz_new = _rowdot(r, z)
    beta = rz_new / rz
    d.mul_(beta.to(d.dtype)[:, None]).add_(keep(z))
    rz.copy_(rz_new)
    rr.copy_(rz_new if z is r else _rowdot(r, r))


# ------------------------------------------------------------------ Lanczos ---------------


@dataclass(frozen=True)
class TopEigen:
    """Largest Ritz value of an SPD operator; an eigenvalue lies within ``bound`` of it."""

    value: float
    bound: float
    steps: int


def lanczos_top(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    *,
    iters: int,
    tol: float,
) -> TopEigen:
    """Lanczos with full reorthogonalisation from ``start`` [P], ≤ iters matvecs.

    Stops when the residual bound β_j·|s_j| (last component of the top Ritz vector) is
    ≤ tol·θ, or at an invariant subspace. The Ritz value θ never exceeds λ_max, and some
    eigenvalue lies within the bound (Kahan–Parlett); for the top one convergence is fast.
    """
    basis = [start / torch.linalg.vector_norm(start)]
    alphas: list[float] = []
    betas: list[float] = []
    theta, bound = 0.0, float("inf")
    for step in range(1, min(iters, start.numel()) + 1):
        w = matvec(basis[-1])
        alphas.append(float(torch.dot(w.double(), basis[-1].double())))
        stacked = torch.stack(basis)  # (j, P)
        for _ in range(2):  # twice is enough (Kahan)
            w = w - stacked.T @ (stacked @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tri += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(tri)
        theta = float(evals[-1])
        bound = abs(beta * float(evecs[-1, -1]))
        if bound <= tol * abs(theta) or beta <= 1e-14 * abs(theta):
            return TopEigen(theta, bound, step)
        betas.append(beta)
        basis.append(w / beta)
    return TopEigen(theta, bound, len(alphas))
