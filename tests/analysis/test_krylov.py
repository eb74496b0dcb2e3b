"""Block Krylov estimator, full-system residuals and deflated cg against dense float64
references (tests/analysis/conftest.py): every J_n by jacrev, η formed densely, solves by
torch.linalg.solve, the Krylov basis by a QR of the dense block [G, ηG, …]."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor

from coherence.analysis.influence import compute_influence
from coherence.analysis.request import AnalysisRequest
from coherence.analysis.standardization import standardize
from coherence.errors import RequestError
from tests.analysis.fixtures import DenseReference, damped, rel_err, train_small
from tests.fixtures import torch_threads

REL_EXACT = 1e-8  # float64 agreement of exact formulas
PEARSON_TARGET, SPEARMAN_TARGET = 0.95, 0.9  # issue 14: vs the exact solve
FEWER_ITERATIONS = 10  # deflated (depth 4) vs cold, summed over columns (measured 75× and 29×)

pytestmark = pytest.mark.usefixtures("single_thread")


def dense_relative_residuals(ref: DenseReference, y: Tensor, damping: float) -> Tensor:
    """‖g_p − (η + λI) y_p‖ / ‖g_p‖ for solutions y [P, N] as columns."""
    g = ref.grads("smse").T  # (P, N)
    return torch.linalg.vector_norm(g - damped(ref, damping) @ y, dim=0) / g.norm(dim=0)


def dense_krylov_solution(ref: DenseReference, depth: int, damping: float) -> Tensor:
    """Galerkin solution in span{G, ηG, …, η^{depth−1}G}: QR of the column-normalised power
    block (independent of the package's block Lanczos), y = Q (QᵀAQ)⁻¹ QᵀG, [P, N]."""
    g = ref.grads("smse").T
    blocks = [g]
    for _ in range(depth - 1):
        blocks.append(ref.eta @ blocks[-1])
    power = torch.cat([b / b.norm(dim=0) for b in blocks], dim=1)
    q, r = torch.linalg.qr(power)
    q = q[:, r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()]
    return q @ torch.linalg.solve(q.T @ damped(ref, damping) @ q, q.T @ g)


# ------------------------------------------------------------- residual correction -------


@pytest.mark.parametrize("damping", [1e-4, 1e-1])
def test_residual_correction_with_the_exact_inverse_is_the_full_solve(
    ce_model, ce_batch, ce_reference, monkeypatch, damping
):
    """g_rᵀA⁻¹g_p = g_rᵀy_p + r_rᵀA⁻¹r_p for Galerkin solutions in one space: with the dense
    A⁻¹ in place of EK-FAC's M̃⁻¹, ekfac-krylov's SMSE map is the full dense solve, and the
    step it hands the counterfactual check, y_p + P A⁻¹r_p, is A⁻¹g_p itself."""
    from coherence.analysis import metric_solve, verify

    a = damped(ce_reference, damping)

    def exact_inverse(options, products, progress):  # ekfac_preconditioner's signature
        return lambda rows: torch.linalg.solve(a, rows.T).T

    monkeypatch.setattr(metric_solve, "ekfac_preconditioner", exact_inverse)
    h = compute_influence(ce_model, *ce_batch, estimator="ekfac-krylov", damping=damping).H
    expected = ce_reference.full("smse", damping)
    assert rel_err(h, expected) < 1e-7
    steps = verify.preconditioned_gradients(
        ce_model, *ce_batch, [0, 3], estimator="ekfac-krylov", damping=damping
    )
    full = torch.linalg.solve(a, ce_reference.grads("smse")[[0, 3]].T).T
    assert rel_err(steps, full) < 1e-7


# ------------------------------------------------------------- residual reporting --------


def test_subspace_reports_its_dense_full_system_residual(ce_model, ce_batch, ce_reference):
    result = compute_influence(ce_model, *ce_batch, estimator="subspace")
    q = torch.from_numpy(ce_reference.basis(1 - 1e-4))
    g = ce_reference.grads("smse").T
    y = q @ torch.linalg.solve(q.T @ damped(ce_reference, 1e-4) @ q, q.T @ g)
    expected = dense_relative_residuals(ce_reference, y, 1e-4)
    got = torch.tensor(result.diagnostics.residuals, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=REL_EXACT, atol=0)
    assert result.diagnostics.batch_vjps == 6  # one per column, no extra JVP
    assert result.diagnostics.batch_jvps == result.diagnostics.rank


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_krylov_matches_dense_galerkin_in_the_power_basis(ce_model, ce_batch, ce_reference, depth):
    result = compute_influence(
        ce_model, *ce_batch, estimator="krylov", depth=depth, response=("smse", "mass")
    )
    y = dense_krylov_solution(ce_reference, depth, 1e-4)
    for response in ("smse", "mass"):
        expected = ce_reference.grads(response) @ y / ce_reference.d
        assert rel_err(result.H_by_response[response], expected) <= 1e-7
    got = torch.tensor(result.diagnostics.residuals, dtype=torch.float64)
    torch.testing.assert_close(
        got, dense_relative_residuals(ce_reference, y, 1e-4), rtol=1e-7, atol=0
    )
    diag = result.diagnostics
    assert diag.block_ranks == (6,) * depth and diag.rank == 6 * depth and diag.depth == depth


def test_krylov_depth_one_is_subspace(ce_model, ce_batch):
    sub = compute_influence(ce_model, *ce_batch, estimator="subspace")
    kry = compute_influence(
        ce_model, *ce_batch, estimator="krylov", depth=1, energy_threshold=1 - 1e-4
    )
    assert rel_err(kry.H, sub.H) <= REL_EXACT
    assert kry.diagnostics.subspace_eigenvalues == pytest.approx(
        sub.diagnostics.subspace_eigenvalues, rel=1e-10
    )


def test_krylov_residual_and_error_fall_with_depth(ce_model, ce_batch, ce_reference):
    """K_d grows by one block of 6 per step: the residual and the distance of H to the full
    solve fall with every block (observed 0.65, 0.37, 0.14, 0.02)."""
    full = ce_reference.full("smse", 0.1)
    residuals, errors = [], []
    for depth in (1, 3, 6, 12):
        result = compute_influence(
            ce_model, *ce_batch, estimator="krylov", depth=depth, damping=0.1
        )
        residuals.append(max(result.diagnostics.residuals))
        errors.append(rel_err(result.H, full))
    assert residuals == sorted(residuals, reverse=True), residuals
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05, errors


# ---------------------------------------------------------------- deflated cg ------------


@pytest.mark.parametrize(
    "start", ["deflated", pytest.param("cold", marks=pytest.mark.slow), "preconditioned"]
)
def test_cg_tends_to_the_dense_solve_as_rtol_falls(ce_model, ce_batch, ce_reference, start):
    full = ce_reference.full("smse", 0.1)
    errors = []
    for rtol in (1e-2, 1e-5, 1e-10):
        result = compute_influence(
            ce_model,
            *ce_batch,
            estimator="cg",
            damping=0.1,
            rtol=rtol,
            cg_start=start,
            max_iter=3000,
        )
        diag = result.diagnostics
        assert diag.converged and diag.cg_start == start and max(diag.residuals) <= 1.5 * rtol
        errors.append(rel_err(result.H, full))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-7, errors


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_deflated_cg_starts_from_the_krylov_residual(ce_model, ce_batch, depth):
    """Deflated cg starts from the krylov estimator's Galerkin solution of the same depth
    (depth 1: span(G), the subspace solve at the same energy threshold)."""
    kry = compute_influence(ce_model, *ce_batch, estimator="krylov", depth=depth)
    cg = compute_influence(
        ce_model, *ce_batch, estimator="cg", rtol=1e-3, max_iter=3000, depth=depth
    )
    assert cg.diagnostics.start_residuals == pytest.approx(kry.diagnostics.residuals, rel=1e-8)
    assert cg.diagnostics.depth == depth and cg.diagnostics.rank == kry.diagnostics.rank
    if depth == 1:
        sub = compute_influence(ce_model, *ce_batch, estimator="subspace", energy_threshold=1.0)
        assert cg.diagnostics.start_residuals == pytest.approx(sub.diagnostics.residuals, rel=1e-8)


def test_deflated_cg_meets_an_easy_tolerance_without_iterating(ce_model, ce_batch):
    """A column whose Galerkin start already meets rtol costs no iteration; the others do."""
    start = compute_influence(ce_model, *ce_batch, estimator="krylov", depth=4).diagnostics
    residuals = sorted(start.residuals)
    above_all = 1.01 * residuals[-1]
    easy = compute_influence(ce_model, *ce_batch, estimator="cg", rtol=above_all, max_iter=10)
    assert easy.diagnostics.iterations == (0,) * 6
    middle = 0.5 * (residuals[2] + residuals[3])  # three columns meet it at the start
    mixed = compute_influence(ce_model, *ce_batch, estimator="cg", rtol=middle, max_iter=3000)
    met = [r <= middle for r in start.residuals]
    assert [n == 0 for n in mixed.diagnostics.iterations] == met


# ------------------------------------------------- small trained model (N = 48) ----------


@pytest.mark.slow
@pytest.mark.parametrize("rtol", [5e-2, 1.5e-2])
def test_deflated_cg_needs_fewer_iterations_on_a_trained_model(trained_small, rtol):
    t = trained_small
    runs = {
        start: compute_influence(
            t.model,
            t.inputs,
            t.targets,
            estimator="cg",
            rtol=rtol,
            cg_start=start,
            max_iter=5000,
        ).diagnostics
        for start in ("cold", "deflated")
    }
    assert runs["cold"].converged and runs["deflated"].converged
    cold, warm = sum(runs["cold"].iterations), sum(runs["deflated"].iterations)
    assert warm * FEWER_ITERATIONS <= cold, (cold, warm)


@pytest.mark.slow
@pytest.mark.parametrize("damping", [1e-4, 1e-2])
def test_krylov_fidelity_to_the_exact_solve(trained_small, damping):
    """The issue's target: standardised Ĥ vs the exact dense (η + λI)⁻¹ solve, Pearson ≥ 0.95
    over all entries and median per-row Spearman ≥ 0.9, met by the default estimator (called
    without naming one) and by krylov; subspace falls short here."""
    t = trained_small
    exact = standardize(t.reference.full("smse", damping))
    scores = {}
    for estimator in ("subspace", "krylov", "default"):
        named = {} if estimator == "default" else {"estimator": estimator}
        h = standardize(compute_influence(t.model, t.inputs, t.targets, damping=damping, **named).H)
        pearson = float(np.corrcoef(h.flatten(), exact.flatten())[0, 1])
        spearman = float(np.median([spearmanr(h[i], exact[i])[0] for i in range(len(h))]))
        scores[estimator] = (pearson, spearman)
    for estimator in ("krylov", "default"):
        pearson, spearman = scores[estimator]
        assert pearson >= PEARSON_TARGET and spearman >= SPEARMAN_TARGET, scores
        assert scores["subspace"][0] < pearson, scores


# The default's fidelity on each small dense-reference model of bench_fidelity.MODELS
# ((hidden, seed) → P = 880, 1172, 1756, 1756), as measured in
# bench/results/fidelity_subspace_ekfac_ekfac-krylov.json: (Pearson, median row Spearman).
DEFAULT_FIDELITY = {
    (12, 2, 1e-4): (0.9812, 0.9715),
    (12, 2, 1e-2): (0.9901, 0.9808),
    (16, 0, 1e-4): (0.9627, 0.9618),
    (16, 0, 1e-2): (0.9819, 0.9684),
    (24, 1, 1e-4): (0.9633, 0.9373),
    (24, 1, 1e-2): (0.9910, 0.9684),
    (24, 0, 1e-4): (0.9376, 0.8176),
    (24, 0, 1e-2): (0.9865, 0.9728),
}
REGRESSION_MARGIN = 0.015


@functools.lru_cache(maxsize=1)
def _small_model(hidden: int, seed: int):
    with torch_threads(1):
        return train_small(hidden, seed)


@pytest.mark.slow
@pytest.mark.parametrize(("hidden", "seed", "damping"), list(DEFAULT_FIDELITY))
def test_default_fidelity_on_every_small_model(hidden, seed, damping):
    """Issue 14's target (Pearson ≥ 0.95, row Spearman ≥ 0.9 against the exact dense solve) on
    every small model, not only the one where it is met: the default must not fall below
    its recorded fidelity, must beat EK-FAC, and meets the target exactly where the record
    says (an improvement fails too, so the table and the README are updated with it)."""
    t = _small_model(hidden, seed)
    exact = standardize(t.reference.full("smse", damping))

    def fidelity(**named) -> tuple[float, float]:
        h = standardize(compute_influence(t.model, t.inputs, t.targets, damping=damping, **named).H)
        rows = [spearmanr(h[i], exact[i])[0] for i in range(len(h))]
        return float(np.corrcoef(h.flatten(), exact.flatten())[0, 1]), float(np.median(rows))

    pearson, spearman = fidelity()  # the default estimator, named nowhere
    recorded = DEFAULT_FIDELITY[(hidden, seed, damping)]
    assert pearson >= recorded[0] - REGRESSION_MARGIN, (pearson, recorded)
    assert spearman >= recorded[1] - REGRESSION_MARGIN, (spearman, recorded)
    assert pearson > fidelity(estimator="ekfac")[0]  # more faithful than EK-FAC
    target = recorded[0] >= PEARSON_TARGET and recorded[1] >= SPEARMAN_TARGET
    assert (pearson >= PEARSON_TARGET and spearman >= SPEARMAN_TARGET) == target, (
        pearson,
        spearman,
        "the target is met where the record says it is not, or missed where it was met",
    )


# ------------------------------------------------------------------- options -------------


def test_bad_krylov_and_cg_options_raise_with_the_fix(ce_model, ce_batch):
    with pytest.raises(RequestError, match=r"depth=0: must be an integer from 1 to 16"):
        compute_influence(ce_model, *ce_batch, estimator="krylov", depth=0)
    with pytest.raises(RequestError, match="unknown cg start 'warm'; choose one of"):
        compute_influence(ce_model, *ce_batch, estimator="cg", rtol=1e-2, cg_start="warm")


def test_request_records_each_option_only_where_it_is_used():
    base = {"checkpoints": ("a",), "data": "d", "classes": ("CE-RP",), "n_steps": 4}
    sub = AnalysisRequest(**base, estimator="subspace", energy_threshold=0.99).to_dict()
    assert sub["energy_threshold"] == 0.99 and sub["depth"] is None and sub["cg_start"] is None
    kry = AnalysisRequest(**base, estimator="krylov", depth=3).to_dict()
    # the default is recorded as its value: given or defaulted, one solve makes one cache key
    assert kry["depth"] == 3 and kry["energy_threshold"] == 1.0
    assert AnalysisRequest(**base, estimator="krylov", depth=3, energy_threshold=1.0) == (
        AnalysisRequest(**base, estimator="krylov", depth=3)
    )
    cold = AnalysisRequest(**base, estimator="cg", rtol=1e-2, cg_start="cold").to_dict()
    assert cold["cg_start"] == "cold" and cold["energy_threshold"] is None
    assert cold["depth"] is None
    # the deflated start is a krylov basis: its depth and threshold make part of the key
    warm = AnalysisRequest(**base, estimator="cg", rtol=1e-2, depth=2).to_dict()
    assert warm["depth"] == 2 and warm["energy_threshold"] == 1.0
    assert AnalysisRequest.from_dict(warm).to_dict() == warm
    assert AnalysisRequest.from_dict(cold).to_dict() == cold
    assert AnalysisRequest.from_dict(kry).to_dict() == kry
    with pytest.raises(RequestError, match=r"energy_threshold=1\.5"):
        AnalysisRequest(**base, energy_threshold=1.5)
    with pytest.raises(RequestError, match="unknown cg start"):
        AnalysisRequest(**base, estimator="cg", rtol=1e-2, cg_start="hot")


# ------------------------------------------------------------------ memory estimate ------


def test_memory_estimate_covers_what_the_krylov_solvers_keep(ce_model, ce_batch):
    """``pipeline.solver_numbers`` against the storage the solvers allocate (whole buffers,
    not the views they hand out): the basis buffer of depth·N rows and its pushed tangents,
    the η q_j kept for AQ and AQ itself, beside the start's solution and residual rows,
    beyond one basis of N rows (counted elsewhere)."""
    from coherence.analysis.autodiff import BatchJacobian, FlatModel
    from coherence.analysis.krylov import block_krylov_basis, deflation
    from coherence.analysis.pipeline import solver_numbers

    x, _ = ce_batch
    n, fm = len(x), FlatModel(ce_model)
    p = fm.n_params
    g = torch.randn(n, p, dtype=torch.float64)
    base = {"checkpoints": ("a",), "data": "d", "classes": ("CE-RP",), "n_steps": n}

    def allocated(t: torch.Tensor) -> int:
        return t.untyped_storage().nbytes() // t.element_size()

    def build(depth: int, **options):
        products = BatchJacobian(fm, x)
        basis = block_krylov_basis(
            g, products.jvp, products.vjp, x.shape, depth=depth, energy_threshold=1.0, **options
        )
        return products, basis

    for depth in (1, 3):
        products, basis = build(depth, keep_eta=True)
        q, pushed = allocated(basis.q), allocated(basis.pushed)
        assert q == depth * n * p  # one buffer, filled in place
        start = 2 * n * p  # the Galerkin solution and its residual rows
        request = AnalysisRequest(**base, estimator="krylov", depth=depth)
        assert q + pushed + start - n * p <= solver_numbers(request, n, p, x), depth
        eta = allocated(basis.eta_rows) if basis.eta_rows is not None else 0
        assert eta == (depth - 1) * n * p
        a_q = allocated(
            deflation(basis.q, basis.pushed, products.vjp, x.shape, 1e-4, basis.eta_rows).a_q
        )
        deflated = AnalysisRequest(**base, estimator="cg", rtol=1e-2, depth=depth)
        # while AQ is built: the basis, the kept η q_j, AQ, the start and the pushed tangents;
        # during cg: the basis and AQ beside y, r, d and five working blocks (block_cg)
        building = q + eta + a_q + start + pushed
        iterating = q + a_q + 8 * n * p
        assert max(building, iterating) - n * p <= solver_numbers(deflated, n, p, x), depth
        cold = AnalysisRequest(**base, estimator="cg", rtol=1e-2, cg_start="cold")
        assert solver_numbers(cold, n, p, x) == 7 * n * p  # y, r, d, four working blocks
    assert solver_numbers(AnalysisRequest(**base, estimator="subspace"), n, p, x) == 0
    # ekfac-krylov: blocks of up to 2N rows (span(G) beside M̃⁻¹G)
    for depth in (1, 2):
        _, basis = build(
            depth,
            precondition=lambda rows: 2.0 * rows + 0.1 * rows.flip(1),
            span_g_threshold=1 - 1e-4,
        )
        held = allocated(basis.q) + allocated(basis.pushed) + 2 * n * p - n * p
        request = AnalysisRequest(**base, estimator="ekfac-krylov", depth=depth)
        assert basis.block_ranks[0] > n  # span(G) and its preconditioned image: 2N rows
        assert held <= solver_numbers(request, n, p, x), depth


def test_deflation_reuses_the_basis_products(ce_model, ce_batch):
    """AQ from the η q_j kept by the basis construction equals AQ from fresh VJPs, and costs
    only the last block's VJPs."""
    from coherence.analysis.autodiff import BatchJacobian, FlatModel
    from coherence.analysis.krylov import block_krylov_basis, deflation
    from coherence.analysis.metric_solve import CountedJacobian

    x, _ = ce_batch
    fm = FlatModel(ce_model)
    g = torch.randn(
        len(x), fm.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    products = CountedJacobian(BatchJacobian(fm, x))
    basis = block_krylov_basis(
        g, products.jvp, products.vjp, x.shape, depth=3, energy_threshold=1.0, keep_eta=True
    )
    assert basis.eta_rows is not None and len(basis.eta_rows) == sum(basis.block_ranks[:-1])
    before = products.vjps
    fresh = deflation(basis.q, basis.pushed, products.vjp, x.shape, 0.1)
    assert products.vjps - before == basis.rank
    before = products.vjps
    reused = deflation(basis.q, basis.pushed, products.vjp, x.shape, 0.1, basis.eta_rows)
    assert products.vjps - before == basis.block_ranks[-1]
    assert rel_err(reused.a_q, fresh.a_q) < REL_EXACT
    r = torch.randn(4, fm.n_params, dtype=torch.float64)
    assert rel_err(reused(r), fresh(r)) < REL_EXACT


def test_deflation_refuses_a_dependent_basis_with_the_fix():
    """E = (JQ)(JQ)ᵀ + λQQᵀ (the matrix the Galerkin start solved) is positive definite for
    independent rows; a dependent basis gets a RequestError naming the options that fix it,
    not a bare LinAlgError."""
    from coherence.analysis.krylov import deflation
    from coherence.errors import RequestError

    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(30, 3, dtype=torch.float64, generator=gen))[0].T  # (3, P)
    j = torch.randn(8, 30, dtype=torch.float64, generator=gen)  # a linear model's Jacobian
    pushed, eta = q @ j.T, (q @ j.T) @ j  # J q_j and η q_j = JᵀJ q_j as rows
    project = deflation(q, pushed, lambda u: None, torch.Size([8]), 1e-4, eta)
    e_exact = q @ (j.T @ j + 1e-4 * torch.eye(30, dtype=torch.float64)) @ q.T
    r = torch.randn(2, 30, dtype=torch.float64, generator=gen)
    # the projected rows are A-conjugate to span(Q): Q A (project r) = 0
    a = j.T @ j + 1e-4 * torch.eye(30, dtype=torch.float64)
    assert torch.allclose(q @ a @ project(r).T, torch.zeros(3, 2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(project.factor @ project.factor.T, e_exact, atol=1e-12)
    twice = torch.cat([q, q[:1]])
    with pytest.raises(RequestError, match=r"--damping.*--depth.*--energy-threshold"):
        deflation(twice, twice @ j.T, lambda u: None, torch.Size([8]), 1e-4, twice @ j.T @ j)


def _deflated_problem(p: int = 60, s: int = 6, k: int = 3):
    """A small SPD system η + λI (η = BBᵀ, spread spectrum), its top-s eigenvectors as the
    deflated rows Q, the exact Deflation of span(Q), and right-hand sides, in float64."""
    from coherence.analysis.estimators import gram64
    from coherence.analysis.krylov import Deflation

    gen = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=gen))[0]
    b_mat = u * torch.logspace(1, -3, p, dtype=torch.float64).sqrt()  # η = B Bᵀ
    a = b_mat @ b_mat.T + 1e-4 * torch.eye(p, dtype=torch.float64)
    q = u[:, :s].T.contiguous()
    a_q = q @ a
    e = gram64(q, a_q)
    deflation = Deflation(q, a_q, torch.linalg.cholesky(0.5 * (e + e.T)))
    rhs = torch.randn(k, p, dtype=torch.float64, generator=gen)
    return a, deflation, rhs


def test_deflation_correct_restores_the_galerkin_condition():
    """Deflation.correct moves y within span(Q) so that r = b − Ay stays its residual and is
    orthogonal to span(Q) again (what drift in float32 cg destroys)."""
    a, deflation, rhs = _deflated_problem()
    y = torch.randn_like(rhs)
    r = rhs - y @ a
    deflation.correct(y, r)
    assert torch.allclose(r, rhs - y @ a, atol=1e-10)
    assert float((deflation.q @ r.T).abs().max()) < 1e-10 * float(r.abs().max())


RTOL_TIGHT = 1e-9


def test_cg_refreshes_remove_residual_drift_into_the_deflated_space():
    """A start whose residual has a part in span(Q) (what float32 drift leaves): the deflated
    directions can never reduce that part, so without refreshes cg stalls at the cap; the
    refreshes (true residual, deflation correction) let it converge, and a column is only
    declared converged when its true residual meets rtol."""
    from coherence.analysis.estimators import block_cg

    a, deflation, rhs = _deflated_problem()
    y0 = torch.cholesky_solve(deflation.q @ rhs.T, deflation.factor).T @ deflation.q
    y0 += 1e-5 * torch.ones(3, 6, dtype=torch.float64) @ deflation.q  # drift inside span(Q)

    def run(refresh_every: int):
        start = (y0.clone(), rhs - y0 @ a)
        return block_cg(
            lambda v: v @ a,
            rhs,
            RTOL_TIGHT,
            400,
            start=start,
            deflation=deflation,
            refresh_every=refresh_every,
        )

    stalled, refreshed = run(0), run(50)
    assert not stalled.converged and min(stalled.residuals) > RTOL_TIGHT
    assert refreshed.converged and max(refreshed.residuals) <= RTOL_TIGHT
    exact = torch.linalg.solve(a, rhs.T).T
    assert torch.allclose(refreshed.solution, exact, rtol=0, atol=1e-4 * float(exact.abs().max()))


def test_every_estimator_reports_the_spectrum_of_span_g_at_the_subspace_threshold(
    trained_small,
):
    """METHOD.md's dominant-eigenvalue share is of QᵀηQ with Q holding 1 − 1e-4 of G's
    energy: krylov and cg solve in a fuller block 1 (every direction of G), but report the
    spectrum at that threshold, so the share does not change with the estimator."""
    m = trained_small
    sub = compute_influence(m.model, m.inputs, m.targets, estimator="subspace")
    expected = sub.diagnostics.subspace_eigenvalues
    for estimator, options in (
        ("krylov", {"depth": 2}),
        ("cg", {"rtol": 0.5, "depth": 1}),
        ("ekfac-krylov", {}),
    ):
        got = compute_influence(m.model, m.inputs, m.targets, estimator=estimator, **options)
        assert got.diagnostics.subspace_eigenvalues == pytest.approx(expected, rel=1e-8)
        if estimator == "krylov":  # block 1 is fuller than the reported span: not vacuous
            assert got.diagnostics.block_ranks[0] > len(expected)
    coarse = {"energy_threshold": 0.99}  # a threshold of the user's: its own span, as subspace
    krylov = compute_influence(m.model, m.inputs, m.targets, estimator="krylov", **coarse)
    subspace = compute_influence(m.model, m.inputs, m.targets, estimator="subspace", **coarse)
    assert krylov.diagnostics.subspace_eigenvalues == pytest.approx(
        subspace.diagnostics.subspace_eigenvalues, rel=1e-8
    )
