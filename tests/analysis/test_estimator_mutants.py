"""Checks of the estimator core that a mutation campaign found missing: each compares a number
the package reports with an independent dense float64 computation (η formed from jacrev
Jacobians, solves by torch.linalg.solve), so a sign, a dropped term or a wrong normalisation
in the solve changes the outcome."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from coherence.analysis.influence import compute_influence
from tests.analysis.fixtures import damped, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

REL_EXACT = 1e-7  # float64 agreement of exact formulas (basis rounding included)


def orthonormal_columns(block: Tensor) -> Tensor:
    """Orthonormal columns spanning ``block`` [P, k] (QR, numerically zero directions out)."""
    q, r = torch.linalg.qr(block)
    return q[:, r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()]


def test_gram64_sums_every_block_of_parameter_columns(monkeypatch):
    """P beyond one float64 block (_GRAM_CHUNK columns, 2¹⁸ in production) is summed block by
    block: every block must add to the product, Gram or not, float32 input or not."""
    from coherence.analysis import estimators

    monkeypatch.setattr(estimators, "_GRAM_CHUNK", 7)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(4, 30, dtype=torch.float64, generator=gen)
    b = torch.randn(3, 30, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(estimators.gram64(a, b), a @ b.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(estimators.gram64(a, a), a @ a.T, rtol=1e-12, atol=1e-12)
    a32 = a.float()
    exact = a32.double() @ a32.double().T
    torch.testing.assert_close(estimators.gram64(a32, a32), exact, rtol=1e-12, atol=1e-12)


def test_deflation_holds_the_dense_metric_of_its_rows(ce_model, ce_batch, ce_reference):
    """AQ (η q_j reused for the first blocks, fresh VJPs for the last) is (η + λI) q_j of the
    dense η, row by row, and the Cholesky factor is that of QAQᵀ with the same λ."""
    from coherence.analysis.autodiff import BatchJacobian, FlatModel
    from coherence.analysis.krylov import block_krylov_basis, deflation

    x, _ = ce_batch
    damping = 0.05
    jacobian = BatchJacobian(FlatModel(ce_model), x)
    g = ce_reference.grads("smse")
    basis = block_krylov_basis(
        g, jacobian.jvp, jacobian.vjp, x.shape, depth=2, energy_threshold=1.0, keep_eta=True
    )
    assert basis.block_ranks == (6, 6)
    project = deflation(
        basis.q, basis.pushed, jacobian.vjp, x.shape, damping, eta_rows=basis.eta_rows
    )
    a = damped(ce_reference, damping)
    expected = basis.q @ a
    for j in range(basis.rank):  # each row on its own: the last one too
        assert rel_err(project.a_q[j], expected[j]) < REL_EXACT, j
    e = basis.q @ a @ basis.q.T
    assert rel_err(project.factor @ project.factor.T, e) < REL_EXACT


def jacobi_in_place_of_ekfac(monkeypatch, a: Tensor) -> Tensor:
    """Make the solvers' EK-FAC preconditioner M̃⁻¹ the Jacobi one of the dense ``a``, 1/diag
    a, which a dense reference can apply; returns that diagonal."""
    from coherence.analysis import metric_solve

    inverse_diagonal = 1.0 / a.diagonal()

    def jacobi(options, products, progress):  # ekfac_preconditioner's signature
        return lambda rows: rows * inverse_diagonal.to(rows.dtype)

    monkeypatch.setattr(metric_solve, "ekfac_preconditioner", jacobi)
    return inverse_diagonal


def test_ekfac_krylov_correction_matches_a_dense_preconditioned_galerkin(
    ce_model, ce_batch, ce_reference, monkeypatch
):
    """ekfac-krylov with a known SPD preconditioner M̃⁻¹ (Jacobi: 1/(diag η + λ)) in place of
    EK-FAC's, against a dense computation of METHOD.md §4's construction: the Galerkin
    solution Y in span(G) + span(M̃⁻¹G), residuals R = G − YA, the SMSE map
    GYᵀ + RM̃⁻¹Rᵀ (the correction for SMSE only), the reported residuals and correction
    share, and the counterfactual steps y_p + P M̃⁻¹r_p with P = I − Q(QᵀAQ)⁻¹QᵀA."""
    from coherence.analysis import verify

    damping = 1e-2
    a = damped(ce_reference, damping)
    inverse_diagonal = jacobi_in_place_of_ekfac(monkeypatch, a)
    result = compute_influence(
        ce_model, *ce_batch, estimator="ekfac-krylov", damping=damping, response=("smse", "mass")
    )
    g = ce_reference.grads("smse")  # (N, P)
    span_g = torch.from_numpy(ce_reference.basis(1 - 1e-4))  # (P, s₀)
    q = orthonormal_columns(torch.cat([span_g, (g * inverse_diagonal).T], dim=1))
    assert result.diagnostics.rank == q.shape[1]
    y = (q @ torch.linalg.solve(q.T @ a @ q, q.T @ g.T)).T  # (N, P) Galerkin solutions
    r = g - y @ a  # residual rows
    own = g @ y.T
    correction = (r * inverse_diagonal) @ r.T
    d = ce_reference.d
    assert rel_err(result.H_by_response["smse"], (own + correction) / d) < REL_EXACT
    mass = ce_reference.grads("mass") @ y.T / d  # no correction: it pairs SMSE with SMSE
    assert rel_err(result.H_by_response["mass"], mass) < REL_EXACT
    residuals = torch.tensor(result.diagnostics.residuals, dtype=torch.float64)
    torch.testing.assert_close(residuals, r.norm(dim=1) / g.norm(dim=1), rtol=1e-6, atol=0)
    share = float(torch.linalg.matrix_norm(correction) / torch.linalg.matrix_norm(own))
    assert result.diagnostics.residual_correction == pytest.approx(share, rel=1e-6)

    columns = [0, 3]
    steps = verify.preconditioned_gradients(
        ce_model, *ce_batch, columns, estimator="ekfac-krylov", damping=damping
    )
    w = r[columns] * inverse_diagonal  # M̃⁻¹ r_p as rows
    mu = torch.linalg.solve(q.T @ a @ q, q.T @ a @ w.T)  # (s, k)
    expected = y[columns] + w - (q @ mu).T
    assert rel_err(steps, expected) < REL_EXACT
    # what the step is for: g_rᵀ(step_p) is the corrected SMSE map's column, for every r
    assert rel_err(g @ steps.T, (own + correction)[:, columns]) < REL_EXACT


def test_residual_correction_over_several_chunks_is_the_dense_pairing():
    """R M̃⁻¹Rᵀ is filled ``chunk`` columns at a time: with N = 9 rows and chunks of 2 every
    column block must land in its place (the batches of the other tests fit in one chunk).
    The steps are A-orthogonal to span(Q) and differ from M̃⁻¹r_p by a vector of span(Q)."""
    from coherence.analysis.krylov import GalerkinBasis, residual_correction

    gen = torch.Generator().manual_seed(11)
    p, n, damping = 40, 9, 0.03
    jac = torch.randn(12, p, dtype=torch.float64, generator=gen)  # a linear model's J
    a = jac.T @ jac + damping * torch.eye(p, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(p, 5, dtype=torch.float64, generator=gen))[0].T
    basis = GalerkinBasis(q, q @ jac.T, (5,), None)
    m_inv = torch.linalg.inv(a + torch.diag(torch.rand(p, dtype=torch.float64, generator=gen)))
    m_inv = 0.5 * (m_inv + m_inv.T)
    residual_rows = torch.randn(n, p, dtype=torch.float64, generator=gen)
    correction = residual_correction(
        basis, residual_rows, lambda rows: rows @ m_inv, lambda rows: rows @ a, damping, chunk=2
    )
    expected = residual_rows @ m_inv @ residual_rows.T
    assert rel_err(correction.matrix, expected) < 1e-12
    index = torch.tensor([0, 4, 8])
    steps = correction.steps(index)
    assert float((q @ a @ steps.T).abs().max()) < 1e-10 * float(steps.abs().max())
    inside = steps - residual_rows[index] @ m_inv  # must lie in span(Q)
    assert rel_err(inside @ q.T @ q, inside) < 1e-10


def test_preconditioned_deflated_start_is_the_dense_preconditioned_galerkin(
    ce_model, ce_batch, ce_reference, monkeypatch
):
    """cg --cg-start preconditioned starts from the Galerkin solution in the preconditioned
    Krylov space span{M̃⁻¹G, M̃⁻¹AM̃⁻¹G} (depth 2), with a known M̃⁻¹ (Jacobi) in place of
    EK-FAC's: the reported start residuals are that dense solution's, and cg goes on from
    there to its rtol."""

    damping = 1e-2
    a = damped(ce_reference, damping)
    inverse_diagonal = jacobi_in_place_of_ekfac(monkeypatch, a)
    result = compute_influence(
        ce_model,
        *ce_batch,
        estimator="cg",
        cg_start="preconditioned",
        depth=2,
        rtol=1e-2,
        damping=damping,
    )
    g = ce_reference.grads("smse").T  # (P, N)
    first = inverse_diagonal[:, None] * g
    q = orthonormal_columns(torch.cat([first, inverse_diagonal[:, None] * (a @ first)], dim=1))
    assert result.diagnostics.block_ranks == (6, 6) and q.shape[1] == 12
    y0 = q @ torch.linalg.solve(q.T @ a @ q, q.T @ g)
    start = torch.linalg.vector_norm(g - a @ y0, dim=0) / g.norm(dim=0)
    got = torch.tensor(result.diagnostics.start_residuals, dtype=torch.float64)
    torch.testing.assert_close(got, start, rtol=1e-6, atol=0)
    assert result.diagnostics.converged and result.diagnostics.worst_residual <= 1e-2
    expected = dense_deflated_cg(a, g, q, 1e-2, torch.diag(inverse_diagonal))
    got = result.diagnostics.iterations  # deflated and preconditioned, as the dense one
    assert all(abs(i - j) <= 1 for i, j in zip(got, expected, strict=True)), (got, expected)


def dense_deflated_cg(
    a: Tensor, g: Tensor, q: Tensor, rtol: float, m_inv: Tensor | None = None
) -> list[int]:
    """Iterations per column of deflated (preconditioned, with ``m_inv``) CG (Saad, Yeung,
    Erhel & Guyomarc'h 2000) from the Galerkin solution in span(q) (q [P, s] orthonormal),
    written densely for a reference."""
    e_inv_aq = torch.linalg.solve(q.T @ a @ q, (a @ q).T)  # E⁻¹(AQ)ᵀ, (s, P)
    m_inv = torch.eye(len(a), dtype=a.dtype) if m_inv is None else m_inv
    counts = []
    for b in g.T:
        y = q @ torch.linalg.solve(q.T @ a @ q, q.T @ b)
        r = b - a @ y
        z = m_inv @ r
        d = z - q @ (e_inv_aq @ z)
        it = 0
        while r.norm() > rtol * b.norm():
            ad = a @ d
            alpha = (r @ z) / (d @ ad)
            y, r_new = y + alpha * d, r - alpha * ad
            z_new = m_inv @ r_new
            d = z_new - q @ (e_inv_aq @ z_new) + (r_new @ z_new) / (r @ z) * d
            r, z, it = r_new, z_new, it + 1
        counts.append(it)
    return counts


def test_deflated_cg_takes_the_dense_deflated_iterations(ce_model, ce_batch, ce_reference):
    """cg from the depth-2 Krylov solution with that space deflated needs as many iterations
    per column as a dense deflated CG from the same start: the deflation (not only the warm
    start) is what makes it short."""
    damping, rtol = 1e-2, 1e-2
    result = compute_influence(
        ce_model, *ce_batch, estimator="cg", depth=2, rtol=rtol, damping=damping
    )
    g = ce_reference.grads("smse").T
    a = damped(ce_reference, damping)
    power = torch.cat([g / g.norm(dim=0), (a @ g) / (a @ g).norm(dim=0)], dim=1)
    expected = dense_deflated_cg(a, g, orthonormal_columns(power), rtol)
    got = result.diagnostics.iterations
    assert all(abs(i - j) <= 1 for i, j in zip(got, expected, strict=True)), (got, expected)


def test_ekfac_orients_an_asymmetric_response_as_rows(ce_model, ce_batch, ce_reference):
    """ekfac's H[r, p] = g_mass(r)ᵀ(η̃ + λI)⁻¹g_smse(p) / D: rows are responses, columns
    perturbations (an SMSE-only check cannot see a transpose: that map is symmetric). η̃ is
    formed densely from the fit (η̃ applied to the unit rows) and inverted by solve."""
    from coherence.analysis.autodiff import FlatModel
    from coherence.analysis.kfac import fit_eigenbasis

    damping = 1e-3
    fm = FlatModel(ce_model)
    metric = fit_eigenbasis(fm, ce_batch[0])
    eye = torch.eye(fm.n_params, dtype=torch.float64)
    m = 0.5 * (metric.apply(eye) + metric.apply(eye).T) + damping * eye
    result = compute_influence(
        ce_model, *ce_batch, estimator="ekfac", damping=damping, response=("smse", "mass")
    )
    g, g_mass = ce_reference.grads("smse"), ce_reference.grads("mass")
    expected = g_mass @ torch.linalg.solve(m, g.T) / ce_reference.d
    assert rel_err(result.H_by_response["mass"], expected) < REL_EXACT
    assert rel_err(expected, expected.T) > 0.1  # not vacuous: the map is far from symmetric


def test_cg_declares_convergence_on_the_true_residual_only():
    """A start whose residual is not rhs − Ay₀ (what float32 drift leaves): the recursive
    residual reaches rtol while the true one does not; without periodic refreshes, the
    refresh a claim triggers is all that stands between cg and a wrong 'converged'."""
    from coherence.analysis.estimators import block_cg

    gen = torch.Generator().manual_seed(7)
    p = 40
    u = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=gen))[0]
    a = (u * torch.logspace(0, 2, p, dtype=torch.float64)) @ u.T
    rhs = torch.randn(3, p, dtype=torch.float64, generator=gen)
    y0 = torch.randn(3, p, dtype=torch.float64, generator=gen)
    r0 = rhs - y0 @ a + 1e-3 * torch.randn(3, p, dtype=torch.float64, generator=gen)
    result = block_cg(lambda v: v @ a, rhs, 1e-8, 400, start=(y0, r0), refresh_every=0)
    exact = torch.linalg.solve(a, rhs.T).T
    assert result.converged and max(result.residuals) <= 1e-8
    assert rel_err(result.solution, exact) < 1e-7


@pytest.mark.parametrize("scale", [1e-2, 1e2])
def test_a_scaled_identity_preconditioner_changes_nothing(scale):
    """PCG with M̃⁻¹ = c·I has CG's iterates for any c > 0: the same iterations, the same
    number of products with A (convergence is judged on ‖r‖, not on rᵀM̃⁻¹r) and the
    dense solution, also across residual refreshes (every 4 iterations here)."""
    from coherence.analysis.estimators import block_cg

    gen = torch.Generator().manual_seed(8)
    p = 50
    u = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=gen))[0]
    a = (u * torch.logspace(0, 1, p, dtype=torch.float64)) @ u.T
    rhs = torch.randn(3, p, dtype=torch.float64, generator=gen)
    calls = {"plain": 0, "scaled": 0}

    def counted(name):
        def matvec(v):
            calls[name] += len(v)
            return v @ a

        return matvec

    plain = block_cg(counted("plain"), rhs, 1e-8, 500, refresh_every=4)
    scaled = block_cg(
        counted("scaled"), rhs, 1e-8, 500, precondition=lambda r: scale * r, refresh_every=4
    )
    assert plain.converged and scaled.converged
    assert scaled.iterations == plain.iterations
    # a refresh that barely moves r (float64) keeps d: the same iterations as no refresh
    assert block_cg(lambda v: v @ a, rhs, 1e-8, 500, refresh_every=0).iterations == (
        plain.iterations
    )
    assert calls["scaled"] == calls["plain"]
    # products: one per iteration, one per refresh (every 4th iteration of a column and the
    # one its convergence claim triggers), one per column for the final true residual
    refreshes = sum(-(-n // 4) for n in plain.iterations)
    assert calls["plain"] == sum(plain.iterations) + refreshes + len(rhs)
    exact = torch.linalg.solve(a, rhs.T).T
    assert rel_err(scaled.solution, exact) < 1e-7


@pytest.mark.parametrize("damping", [1e-3, 1.0])
def test_ekfac_damped_inverse_is_the_dense_inverse_of_its_metric(generator, damping):
    """(η̃ + λI)⁻¹ applied to rows equals the dense inverse of η̃ + λI, η̃ formed from
    ``apply`` on the unit rows: in the Kronecker blocks and in the diagonal part (a gain
    outside every Linear/Conv2d layer, which TinyConv alone does not have)."""
    from coherence.analysis.autodiff import FlatModel
    from coherence.analysis.kfac import fit_eigenbasis
    from tests.analysis.test_kfac import GainConv

    torch.manual_seed(1)
    model = GainConv().double()
    x = torch.randn(5, 2, 4, 4, generator=generator, dtype=torch.float64)
    fm = FlatModel(model)
    metric = fit_eigenbasis(fm, x)
    assert len(metric.diagonal_index) == 1 and len(metric.blocks) == 2
    eye = torch.eye(fm.n_params, dtype=torch.float64)
    eta_tilde = metric.apply(eye).T
    rows = torch.randn(3, fm.n_params, generator=generator, dtype=torch.float64)
    expected = torch.linalg.solve(eta_tilde + damping * eye, rows.T).T
    got = metric.solve(rows, damping)
    assert rel_err(got, expected) < 1e-10
    gain = int(metric.diagonal_index)
    assert rel_err(got[:, gain], expected[:, gain]) < 1e-10


def test_lanczos_bound_is_the_residual_of_the_dense_top_ritz_pair():
    """After k steps, lanczos_top's bound is ‖Ax − θx‖ for the top Ritz pair (θ, x) of the
    Krylov space span{v, Av, …, A^{k−1}v}, formed here by a QR of that block and a dense
    Rayleigh–Ritz step; θ is that Ritz value."""
    from coherence.analysis.estimators import lanczos_top

    gen = torch.Generator().manual_seed(4)
    p, k = 30, 4
    u = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=gen))[0]
    a = (u * torch.linspace(1, 10, p, dtype=torch.float64)) @ u.T
    v = torch.randn(p, dtype=torch.float64, generator=gen)
    got = lanczos_top(lambda w: a @ w, v, iters=k, tol=0.0)
    krylov = torch.stack([torch.linalg.matrix_power(a, j) @ v for j in range(k)], dim=1)
    q = torch.linalg.qr(krylov)[0]
    evals, evecs = torch.linalg.eigh(q.T @ a @ q)
    theta, x = float(evals[-1]), q @ evecs[:, -1]
    assert got.steps == k
    assert got.value == pytest.approx(theta, rel=1e-10)
    assert got.bound == pytest.approx(float(torch.linalg.norm(a @ x - theta * x)), rel=1e-6)


def test_a_hidden_convolutions_output_side_basis_diagonalises_its_dense_statistic(generator):
    """With exact statistics (one-hot probes), Q_S of TinyConv's first convolution is an
    eigenbasis of S = Σ_n Σ_positions Σ_d (∂f_d/∂o_{c,l})(∂f_d/∂o_{c',l}), formed here by
    jacrev of the output with respect to that layer's output (channels × positions, not
    flattened the other way round). The output layer's S is ∝ I, so only a hidden layer
    can tell a wrong layout of the gradients apart."""
    from coherence.analysis.autodiff import FlatModel
    from coherence.analysis.kfac import fit_eigenbasis
    from tests.analysis.fixtures import TinyConv
    from tests.analysis.test_kfac import one_hot_probes

    torch.manual_seed(2)
    model = TinyConv(2, hidden=3).double()
    x = torch.randn(4, 2, 4, 4, generator=generator, dtype=torch.float64)
    fm = FlatModel(model)
    metric = fit_eigenbasis(fm, x, one_hot_probes(fm, x))
    first = next(b for b in metric.blocks if b.out_features == 3)
    s = torch.zeros(3, 3, dtype=torch.float64)
    for xn in x:
        h = model.conv1(xn[None]).detach()

        def rest(hidden: Tensor, xn: Tensor = xn) -> Tensor:
            return (xn[None] + model.conv2(torch.nn.functional.silu(hidden))).reshape(-1)

        jac = torch.func.jacrev(rest)(h).reshape(-1, 3, 16)  # (D, channels, positions)
        s += torch.einsum("dcl,dkl->ck", jac, jac).detach()
    rotated = first.qs.T @ s @ first.qs
    off_diagonal = rotated - torch.diag(rotated.diagonal())
    assert float(off_diagonal.norm()) < 1e-8 * float(rotated.norm())
