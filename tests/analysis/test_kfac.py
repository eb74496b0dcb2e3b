"""EK-FAC (``kfac``) and the EK-FAC-preconditioned Krylov estimator against dense float64
references: every J_n by jacrev (tests/analysis/fixtures.py), η formed densely, the
preconditioned Krylov basis by a QR of the dense block [M̃⁻¹G, M̃⁻¹AM̃⁻¹G, …]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from coherence.analysis.autodiff import FlatModel
from coherence.analysis.influence import compute_influence
from coherence.analysis.kfac import EigenbasisMetric, fit_eigenbasis, gaussian_probes
from coherence.analysis.metric_solve import solve_metric
from coherence.analysis.request import AnalysisRequest, InfluenceOptions
from coherence.analysis.standardization import standardize
from coherence.analysis.vocabulary import DEFAULT_ENERGY_THRESHOLD
from tests.analysis.fixtures import TinyConv, dense_reference

REL_EXACT = 1e-8
PEARSON_TARGET, SPEARMAN_TARGET = 0.95, 0.9  # issue 14: vs the exact solve

pytestmark = pytest.mark.usefixtures("single_thread")


def one_hot_probes(fm: FlatModel, inputs: Tensor) -> list[Tensor]:
    """The D cotangent fields e_d (the same output position in every example): their outer
    products sum to I, so every EK-FAC statistic is exact."""
    with torch.no_grad():
        shape = fm(fm.theta, inputs).shape
    d = shape[1:].numel()
    probes = []
    for k in range(d):
        v = torch.zeros(shape[0], d, dtype=inputs.dtype)
        v[:, k] = 1.0
        probes.append(v.reshape(shape))
    return probes


def dense_metric(metric: EigenbasisMetric, p: int) -> Tensor:
    """η̃ as a dense [P, P] matrix (columns: η̃ e_i)."""
    return metric.apply(torch.eye(p, dtype=torch.float64)).T


class RowLinear(nn.Module):
    """A Linear on the last axis of [N, F, H, W]: weight shared over F·H positions."""

    def __init__(self) -> None:
        super().__init__()
        self.row = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.row(x)


class GainConv(TinyConv):
    """TinyConv with a scalar gain outside any Linear/Conv2d layer (EK-FAC's diagonal part)."""

    def __init__(self) -> None:
        super().__init__(2, 3)
        self.gain = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gain * self.conv2(nn.functional.silu(self.conv1(x)))


def _batch(generator: torch.Generator, n: int = 5) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 2, 4, 4, generator=generator, dtype=torch.float64)
    return x, x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)


def exact_fit(model: nn.Module, generator: torch.Generator):
    """(FlatModel, dense η, EK-FAC fitted with one-hot probes) on a random batch of five."""
    x, y = _batch(generator)
    fm = FlatModel(model)
    return fm, dense_reference(model, x, y).eta, fit_eigenbasis(fm, x, one_hot_probes(fm, x))


SINGLE_LAYERS = {
    "conv1x1": lambda: nn.Conv2d(2, 2, 1),
    "linear": RowLinear,
    "conv3x3-circular": lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
    "conv3x3-zeros-no-bias": lambda: nn.Conv2d(2, 2, 3, padding=1, bias=False),
    "conv-reflect": lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
    "conv-replicate": lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"),
    "conv-same-2x4": lambda: nn.Conv2d(2, 2, (2, 4), padding="same"),
    # stride and dilation shrink the output: padded back to the inputs' shape, which the
    # probes (like every surrogate) assume
    "conv-strided-dilated": lambda: StridedConv(),
}


class StridedConv(nn.Module):
    """A strided, dilated 3×3 convolution padded back to the input's shape (the probes and
    the dense reference need outputs shaped like the inputs): a zero pad after the conv is
    linear, so the Gauss–Newton matrix of the conv is still exactly A ⊗ (a 0/1 diagonal)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, stride=2, dilation=2, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (N, 2, 2, 2) from 4×4
        return nn.functional.pad(y, (0, x.shape[-1] - y.shape[-1], 0, x.shape[-2] - y.shape[-2]))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("make", SINGLE_LAYERS.values(), ids=SINGLE_LAYERS.keys())
def test_exact_statistics_reproduce_a_kronecker_metric(generator, make):
    """A single Linear or convolution (every padding mode, 'same', stride and dilation, with
    and without bias) whose output is the model's: its Gauss–Newton matrix is exactly A ⊗ I
    (positions and outputs independent), so EK-FAC with exact statistics (one-hot probes)
    equals η. This pins the patch layout: a Q_A built from wrongly ordered patches is not
    A's eigenbasis, and η̃ then differs from η."""
    torch.manual_seed(0)
    model = make().double()
    fm, eta, metric = exact_fit(model, generator)
    assert len(metric.blocks) == 1 and not len(metric.diagonal_index)
    approx = dense_metric(metric, fm.n_params)
    assert float((approx - eta).norm() / eta.norm()) < REL_EXACT


def test_corrected_eigenvalues_are_the_exact_diagonal_in_the_eigenbasis(generator):
    """Λ[i, j] = (q_S,i ⊗ q_A,j)ᵀ η (q_S,i ⊗ q_A,j) for every basis direction of every layer,
    and the diagonal part (the gain) holds η's diagonal entry."""
    torch.manual_seed(1)
    model = GainConv().double()
    fm, eta, metric = exact_fit(model, generator)
    gain_index = [n for n, _ in model.named_parameters()].index("gain")  # own params first
    assert len(metric.blocks) == 2 and metric.diagonal_index.tolist() == [gain_index]
    for block in metric.blocks:
        out, cols = block.eigenvalues.shape
        directions = torch.zeros(out * cols, fm.n_params, dtype=torch.float64)
        basis = torch.einsum("ai,bj->ijab", block.qs, block.qa).reshape(out * cols, out, cols)
        block.write(directions, basis)
        quadratic = torch.einsum("kp,pq,kq->k", directions, eta, directions)
        expected = block.eigenvalues.reshape(-1)
        assert float((quadratic - expected).norm() / expected.norm()) < REL_EXACT
        # and η̃ is diagonal in that basis with exactly those values
        applied = metric.apply(directions)
        assert float((applied - expected[:, None] * directions).norm()) < REL_EXACT * float(
            applied.norm()
        )
    gain = metric.diagonal_index.item()
    assert abs(float(metric.diagonal[0]) - float(eta[gain, gain])) < REL_EXACT * float(
        eta[gain, gain]
    )


def test_gaussian_probes_are_seeded_and_scaled(ce_batch):
    first = gaussian_probes(ce_batch[0], samples=3)
    again = gaussian_probes(ce_batch[0], samples=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    spread = torch.stack(first).var().item() * 3  # each field is N(0, 1/samples)
    assert 0.8 < spread < 1.2


def test_ekfac_is_its_own_dense_damped_solve(ce_model, ce_batch):
    """H of ``ekfac`` = g_Aᵀ (η̃ + λI)⁻¹ g_B / D with η̃ formed densely from the fitted
    factors and inverted by torch.linalg.solve (checks the eigenbasis inverse)."""
    damping = 1e-3
    fm = FlatModel(ce_model)
    ref = dense_reference(ce_model, *ce_batch)
    metric = fit_eigenbasis(fm, ce_batch[0])
    m = dense_metric(metric, fm.n_params) + damping * torch.eye(fm.n_params, dtype=torch.float64)
    g = ref.grads("smse")
    expected = g @ torch.linalg.solve(m, g.T) / ref.d
    result = compute_influence(ce_model, *ce_batch, estimator="ekfac", damping=damping)
    assert float((result.H - expected).norm() / expected.norm()) < REL_EXACT
    assert result.diagnostics.residuals is None  # no product with J: nothing to report


def dense_span_g(g, energy_threshold: float = DEFAULT_ENERGY_THRESHOLD):
    """Rows [s, P]: the leading right singular vectors of G holding the threshold of Σσ²."""
    _, sigma, vh = torch.linalg.svd(g, full_matrices=False)
    energy = torch.cumsum(sigma**2, 0)
    s = int(torch.searchsorted(energy, energy_threshold * energy[-1])) + 1
    return vh[:s]


def dense_preconditioned_solution(ref, metric: EigenbasisMetric, depth: int, damping: float):
    """Galerkin solution [P, N] in span(G) + span{M̃⁻¹G, (M̃⁻¹A)M̃⁻¹G, …} (block 1 holds
    span(G) at the subspace threshold beside M̃⁻¹G), from a QR of the dense blocks."""
    g = ref.grads("smse")  # (N, P)
    a = ref.eta + damping * torch.eye(g.shape[1], dtype=torch.float64)
    blocks = [torch.cat([dense_span_g(g), metric.solve(g, damping)])]
    for _ in range(depth - 1):
        blocks.append(metric.solve(blocks[-1] @ a, damping))
    power = torch.cat([b / b.norm(dim=1, keepdim=True) for b in blocks]).T
    q, r = torch.linalg.qr(power)
    q = q[:, r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()]
    return q @ torch.linalg.solve(q.T @ a @ q, q.T @ g.T)


@pytest.mark.parametrize("depth", [1, 2])
def test_ekfac_krylov_matches_the_dense_preconditioned_galerkin(ce_model, ce_batch, depth):
    damping = 1e-3
    ref = dense_reference(ce_model, *ce_batch)
    metric = fit_eigenbasis(FlatModel(ce_model), ce_batch[0])
    y = dense_preconditioned_solution(ref, metric, depth, damping)
    g = ref.grads("smse").T
    a = ref.eta + damping * torch.eye(g.shape[0], dtype=torch.float64)
    r = g - a @ y  # (P, N): the Galerkin residuals
    m = dense_metric(metric, g.shape[0]) + damping * torch.eye(g.shape[0], dtype=torch.float64)
    # the Galerkin map plus the residual correction r_rᵀM̃⁻¹r_p (SMSE only; mass has none)
    expected = (g.T @ y + r.T @ torch.linalg.solve(m, r)) / ref.d
    expected_mass = ref.grads("mass") @ y / ref.d
    result = compute_influence(
        ce_model,
        *ce_batch,
        estimator="ekfac-krylov",
        depth=depth,
        damping=damping,
        response=("smse", "mass"),
    )
    assert float((result.H - expected).norm() / expected.norm()) < 1e-6
    mass = result.H_by_response["mass"]
    assert float((mass - expected_mass).norm() / expected_mass.norm()) < 1e-6
    correction = torch.linalg.matrix_norm(r.T @ torch.linalg.solve(m, r))
    share = float(correction / torch.linalg.matrix_norm(g.T @ y))
    assert result.diagnostics.residual_correction == pytest.approx(share, rel=1e-6)
    dense_residuals = torch.linalg.vector_norm(r, dim=0) / g.norm(dim=0)
    np.testing.assert_allclose(result.diagnostics.residuals, dense_residuals, rtol=1e-5)
    # block 1 starts with span(G): the spectrum is subspace's, the metric QηQᵀ on span(G)
    q_g = dense_span_g(ref.grads("smse"))
    spectrum = torch.linalg.eigvalsh(q_g @ ref.eta @ q_g.T).flip(0)
    np.testing.assert_allclose(result.diagnostics.subspace_eigenvalues, spectrum, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("damping", [1e-4, 1e-2])
def test_ekfac_krylov_is_more_faithful_than_ekfac(trained_small, damping):
    """The estimator's own preconditioned Galerkin solution is at least as close to the exact
    solve as EK-FAC in A's norm (M̃⁻¹g_p lies in its space) and, on this trained model,
    meets the issue's fidelity target at depth 1 (measured 0.977 / 0.971 at λ = 1e-4;
    EK-FAC 0.957)."""
    t = trained_small
    ref = t.reference
    g = ref.grads("smse")
    a = ref.eta + damping * torch.eye(g.shape[1], dtype=torch.float64)
    exact_y = torch.linalg.solve(a, g.T)  # (P, N)
    exact = standardize(ref.full("smse", damping))
    metric = fit_eigenbasis(FlatModel(t.model), t.inputs)
    ekfac_y = metric.solve(g, damping).T

    def a_norm_errors(y: Tensor) -> Tensor:
        e = y - exact_y
        return torch.einsum("pn,pq,qn->n", e, a, e).sqrt()

    scores = {}
    for label, options in (("ekfac", {}), ("ekfac-krylov", {"depth": 1})):
        h = compute_influence(
            t.model, t.inputs, t.targets, estimator=label, damping=damping, **options
        ).H
        h = standardize(h)
        pearson = float(np.corrcoef(h.flatten(), exact.flatten())[0, 1])
        spearman = float(np.median([spearmanr(h[i], exact[i])[0] for i in range(len(h))]))
        scores[label] = (pearson, spearman)
    options = InfluenceOptions(estimator="ekfac-krylov", depth=1, damping=damping)
    galerkin_y = solve_metric(options, FlatModel(t.model), t.inputs, g).solution().T
    assert bool((a_norm_errors(galerkin_y) <= a_norm_errors(ekfac_y) * (1 + 1e-6)).all())
    assert scores["ekfac-krylov"][0] >= PEARSON_TARGET, scores
    assert scores["ekfac-krylov"][1] >= SPEARMAN_TARGET, scores
    assert scores["ekfac-krylov"][0] > scores["ekfac"][0], scores


def test_requests_record_the_options_the_ekfac_estimators_use():
    base = {"checkpoints": ("a",), "data": "d", "classes": ("CE-RP",), "n_steps": 4}
    ekfac = AnalysisRequest(**base, estimator="ekfac").to_dict()
    assert ekfac["depth"] is None and ekfac["energy_threshold"] is None and ekfac["rtol"] is None
    pre = AnalysisRequest(**base, estimator="ekfac-krylov", depth=2).to_dict()
    assert pre["depth"] == 2 and pre["energy_threshold"] == 1.0
    pcg = AnalysisRequest(
        **base, estimator="cg", rtol=1e-2, cg_start="preconditioned", depth=2
    ).to_dict()  # its start is a Krylov basis: depth and threshold make part of the key
    assert pcg["cg_start"] == "preconditioned" and pcg["depth"] == 2
    assert pcg["energy_threshold"] == 1.0
    for recorded in (ekfac, pre, pcg):
        assert AnalysisRequest.from_dict(recorded).to_dict() == recorded


def test_only_a_start_that_holds_span_g_reports_the_subspace_spectrum(ce_model, ce_batch):
    """The spectrum panel's eigenvalues are QηQᵀ on span(G): deflated cg's start holds span(G)
    as its first block, the preconditioned start's first block is M̃⁻¹G, so it reports none
    rather than a spectrum of another space."""
    runs = {
        start: compute_influence(
            ce_model, *ce_batch, estimator="cg", rtol=1e-2, cg_start=start, depth=1
        ).diagnostics
        for start in ("deflated", "preconditioned")
    }
    krylov = compute_influence(ce_model, *ce_batch, estimator="krylov", depth=1).diagnostics
    assert runs["deflated"].subspace_eigenvalues == pytest.approx(
        krylov.subspace_eigenvalues, rel=1e-6
    )
    assert runs["preconditioned"].subspace_eigenvalues is None


def test_preconditioned_cg_solves_the_system_in_fewer_iterations():
    """block_cg with a preconditioner on a badly scaled SPD system: the exact inverse
    converges in one iteration, the Jacobi preconditioner in far fewer than plain CG, and
    every run reaches the dense solve."""
    from coherence.analysis.estimators import block_cg

    gen = torch.Generator().manual_seed(5)
    p = 80
    scale = torch.logspace(0, 4, p, dtype=torch.float64)
    noise = 0.1 * torch.randn(p, p, dtype=torch.float64, generator=gen)
    a = torch.diag(scale) + (noise @ noise.T) * scale.sqrt()[:, None] * scale.sqrt()[None, :]
    a = 0.5 * (a + a.T)
    rhs = torch.randn(3, p, dtype=torch.float64, generator=gen)
    exact = torch.linalg.solve(a, rhs.T).T
    inverse = torch.linalg.inv(a)
    diagonal = a.diagonal()
    runs = {
        "plain": block_cg(lambda v: v @ a, rhs, 1e-10, 2000),
        "jacobi": block_cg(lambda v: v @ a, rhs, 1e-10, 2000, precondition=lambda r: r / diagonal),
        "exact": block_cg(lambda v: v @ a, rhs, 1e-10, 2000, precondition=lambda r: r @ inverse),
    }
    for run in runs.values():
        assert run.converged and max(run.residuals) <= 1e-10
        assert torch.allclose(run.solution, exact, rtol=1e-6, atol=1e-9)
    assert max(runs["exact"].iterations) == 1
    assert 3 * max(runs["jacobi"].iterations) < min(runs["plain"].iterations), runs


@pytest.mark.slow
def test_preconditioned_cg_is_closer_to_the_exact_solve_at_the_papers_tolerance(trained_small):
    """At the same rtol, the EK-FAC-preconditioned cg (from the ekfac-krylov start) lands
    closer to the exact Ĥ than the plain deflated cg (measured at λ = 1e-4, rtol 1.5e-2:
    Pearson 0.997 vs 0.975 on this model, 0.957 vs 0.805 on the hardest small model): a
    residual below rtol leaves the small-eigenvalue error that 1/λ amplifies, and the
    preconditioner is what reduces it."""
    t = trained_small
    exact = standardize(t.reference.full("smse", 1e-4))
    pearson = {}
    for start in ("deflated", "preconditioned"):
        result = compute_influence(
            t.model, t.inputs, t.targets, estimator="cg", rtol=1.5e-2, cg_start=start
        )
        assert result.diagnostics.converged and max(result.diagnostics.residuals) <= 1.5e-2
        h = standardize(result.H)
        pearson[start] = float(np.corrcoef(h.flatten(), exact.flatten())[0, 1])
    assert pearson["preconditioned"] >= PEARSON_TARGET, pearson
    assert pearson["preconditioned"] > pearson["deflated"], pearson


def test_memory_estimate_covers_the_fitted_factors(ce_model, ce_batch):
    """``kfac.fit_bytes`` (added to the cost estimate of every EK-FAC setting) covers what a
    fit keeps: the eigenbases and corrected eigenvalues in float64, and the probes'
    per-example gradients."""
    from coherence.analysis.kfac import SAMPLES, fit_bytes
    from coherence.analysis.pipeline import estimate_cost, solver_numbers
    from coherence.probe import activation_bytes

    fm = FlatModel(ce_model)
    metric = fit_eigenbasis(fm, ce_batch[0])
    kept = sum(8 * (b.qa.numel() + b.qs.numel() + b.eigenvalues.numel()) for b in metric.blocks)
    x = ce_batch[0]
    n, itemsize = len(x), 8
    patches = n * 16 * (4 * 9 + 1) * itemsize  # the widest layer's unfolded inputs (4×4 grid)
    base = {"checkpoints": ("a",), "data": "d", "classes": ("CE-RP", "CE-CRP"), "n_steps": 3}
    plain_request = AnalysisRequest(**base, estimator="krylov", depth=1)
    pre_request = AnalysisRequest(**base, estimator="ekfac-krylov", depth=1)
    plain = estimate_cost(ce_model, plain_request, x)
    pre = estimate_cost(ce_model, pre_request, x)
    # beyond krylov's: the fit, and the span(G) rows beside M̃⁻¹G (solver_numbers)
    wider_blocks = solver_numbers(pre_request, n, fm.n_params, x)
    wider_blocks -= solver_numbers(plain_request, n, fm.n_params, x)
    added = pre.memory_bytes - plain.memory_bytes - wider_blocks * itemsize
    assert kept + SAMPLES * n * fm.n_params * itemsize + patches <= added
    assert added == fit_bytes(
        ce_model, n, fm.n_params, itemsize, n * activation_bytes(ce_model, x[:1])
    )


@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_demo_architectures_split_into_kronecker_blocks_and_a_diagonal(arch):
    """On the demo UNet and ViT every parameter is in exactly one place: a Linear/Conv2d
    block (convolutions, attention and MLP projections, patch embedding, head) or the
    diagonal (normalisation scales and shifts, position embeddings), and η̃ is symmetric
    positive semi-definite on random directions."""
    from coherence.surrogates.registry import build_model

    torch.manual_seed(0)
    model = build_model(arch, "demo", channels=4, resolution=16)
    x = torch.randn(2, 4, 16, 16)
    fm = FlatModel(model)
    metric = fit_eigenbasis(fm, x)
    owner = torch.zeros(fm.n_params, dtype=torch.long)
    for block in metric.blocks:
        owner[block.weight] += 1
        if block.bias is not None:
            owner[block.bias] += 1
    owner[metric.diagonal_index.cpu()] += 1
    assert bool((owner == 1).all())
    names = dict(zip(fm.layout.names, fm.layout.numels, strict=True))
    normalisation = sum(n for name, n in names.items() if "norm" in name)
    assert normalisation > 0 and len(metric.diagonal_index) >= normalisation
    assert len(metric.blocks) == sum(
        1 for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)
    )
    v = torch.randn(3, fm.n_params)
    applied = metric.apply(v)
    gram = v @ applied.T
    assert torch.allclose(gram, gram.T, rtol=1e-4, atol=1e-4 * float(gram.abs().max()))
    assert bool((gram.diagonal() > 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "vit"])
def test_demo_architectures_metric_is_exact_where_ekfac_claims_it(arch):
    """On the demo UNet and ViT (8², float64) fitted with exact statistics (one-hot probes):
    the diagonal part holds η's exact diagonal entries, and each Kronecker block's corrected
    eigenvalue Λ[i, j] is dᵀηd = ‖J d‖² for its basis direction d = q_S,i ⊗ q_A,j, both
    measured independently with plain torch.func.jvp. (≈ 45 s for the UNet: 256 probes.)"""
    from coherence.surrogates.registry import build_model

    torch.manual_seed(0)
    model = build_model(arch, "demo", channels=4, resolution=8).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    fm = FlatModel(model)
    metric = fit_eigenbasis(fm, x, one_hot_probes(fm, x))

    def quadratic(d: Tensor) -> float:
        with torch.no_grad():
            pushed = torch.func.jvp(lambda th: fm(th, x), (fm.theta,), (d,))[1]
        return float(pushed.pow(2).sum())

    index = metric.diagonal_index
    for k in index[torch.linspace(0, len(index) - 1, 12).long()].tolist():
        e = torch.zeros(1, fm.n_params, dtype=torch.float64)
        e[0, k] = 1.0
        exact = quadratic(e[0])
        assert exact > 0
        assert float(metric.apply(e)[0, k]) == pytest.approx(exact, rel=1e-9)
    for block in metric.blocks[:: max(1, len(metric.blocks) // 6)]:
        out, cols = block.eigenvalues.shape
        for i, j in ((0, 0), (out - 1, cols - 1), (out // 2, cols // 2)):
            d = torch.zeros(1, fm.n_params, dtype=torch.float64)
            block.write(d, torch.outer(block.qs[:, i], block.qa[:, j])[None])
            exact = quadratic(d[0])
            assert float(block.eigenvalues[i, j]) == pytest.approx(exact, rel=1e-8, abs=1e-12)


class InplaceHead(nn.Module):
    """conv → in-place ReLU → 1×1 conv: the first conv's output is modified in place."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.conv1(x)))


def test_an_inplace_op_after_a_layer_does_not_change_its_factors(generator):
    """ReLU(inplace=True) after a hooked layer: the fit sees the same S (gradient at the
    layer's output, ReLU mask included) as with the out-of-place ReLU."""
    x, _ = _batch(generator)
    fits = []
    for inplace in (False, True):
        torch.manual_seed(2)
        model = InplaceHead(inplace).double()
        fits.append(fit_eigenbasis(FlatModel(model), x, one_hot_probes(FlatModel(model), x)))
    for plain, inplace in zip(fits[0].blocks, fits[1].blocks, strict=True):
        assert torch.allclose(plain.eigenvalues, inplace.eigenvalues, rtol=1e-10)
        assert torch.allclose(plain.qs.abs(), inplace.qs.abs(), atol=1e-8)


def test_a_frozen_bias_leaves_its_weight_in_a_block(generator):
    """Only the weight is trained: the layer keeps its Kronecker block (no bias column) and
    is exact for a single layer, as with a trainable bias."""
    torch.manual_seed(3)
    model = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular").double()
    model.bias.requires_grad_(False)
    fm, eta, metric = exact_fit(model, generator)
    assert len(metric.blocks) == 1 and metric.blocks[0].bias is None
    assert not len(metric.diagonal_index)
    approx = dense_metric(metric, fm.n_params)
    weight = eta[: fm.n_params, : fm.n_params]  # the reference differentiates the bias too
    assert float((approx - weight).norm() / weight.norm()) < REL_EXACT


def test_chunked_fit_equals_the_whole_batch_fit(ce_model, ce_batch):
    """chunk_size bounds memory only: the factors and eigenvalues do not depend on it."""
    fm = FlatModel(ce_model)
    whole = fit_eigenbasis(fm, ce_batch[0])
    chunked = fit_eigenbasis(fm, ce_batch[0], chunk_size=4)
    for a, b in zip(whole.blocks, chunked.blocks, strict=True):
        assert torch.allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9)
