"""Scores against λ on a model whose influence is known in closed form, and the trend and
agreement summaries of the dynamics and sensitivity panels.

The model is a linear channel mix f(W, x) = W x (a bias-free 1×1 convolution, P = F² = 16)
on N = 48 > P examples. Its Jacobian is exact and the Gauss–Newton metric acts on W as
W ↦ W S with S = Σ_n X_n X_nᵀ (X_n the [F, pixels] input), so with g_n = r_n X_nᵀ

    H[r, p] = ⟨g_r, g_p (S + λI)⁻¹⟩_F / D,   λ_max(η + λI) = λ_max(S) + λ,

and every eigenvalue of S appears F times in η. Nothing of the engine is used to build the
reference; G spans all of R^P here, so the subspace solve is the full solve, and so is every
estimator whose space holds span(G): the default ekfac-krylov (the one the Sensitivity panel
sweeps) and krylov as well as subspace, and cg to its tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coherence.analysis.influence import compute_influence, top_eigenvalue
from coherence.analysis.scores import compute_scores, diagonal_dominance
from coherence.analysis.trends import agreement, point_scores, row_rank_correlation, trends

F, L, T, C = 4, 4, 16, 3  # channels, grid, times, classes: N = 48 examples, D = 64
LAMBDAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # the sensitivity grid


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(F, F, 1, bias=False).double()
    gen = torch.Generator().manual_seed(1)
    # channels of very different scales: the eigenvalues of S (≈ 0.01 … 0.3) straddle the
    # λ grid, so (S + λI)⁻¹ reweights the directions as λ moves
    scale = 2e-2 * torch.tensor([1.0, 0.5, 0.3, 0.2], dtype=torch.float64).view(1, F, 1, 1)
    inputs = scale * torch.randn(T * C, F, L, L, generator=gen, dtype=torch.float64)
    targets = inputs.roll(1, dims=-1) + 0.1 * scale * torch.randn(
        T * C, F, L, L, generator=gen, dtype=torch.float64
    )
    return model, inputs, targets


def analytic_h(model, inputs, targets, damping: float) -> np.ndarray:
    w = model.weight.detach()[:, :, 0, 0].numpy()  # [F, F]
    x = inputs.numpy().reshape(len(inputs), F, L * L)  # [N, F, pix]
    y = targets.numpy().reshape(len(inputs), F, L * L)
    pred = np.einsum("ck,nkp->ncp", w, x)
    rms = np.sqrt((y**2).mean(axis=-1, keepdims=True))
    r = (pred - y) / (rms + 1e-6)  # METHOD.md §3: r_C
    g = np.einsum("ncp,nkp->nck", r, x)  # [N, F, F]: J_nᵀ r_n as a matrix
    s = np.einsum("nkp,njp->kj", x, x)
    solved = g @ np.linalg.inv(s + damping * np.eye(F))  # (η + λI)⁻¹ g_p
    return np.einsum("rck,pck->rp", g, solved) / (F * L * L)


def standardized(h: np.ndarray) -> np.ndarray:
    return h / h.std(axis=1, ddof=1, keepdims=True)


def as_6d(h: np.ndarray) -> np.ndarray:
    return h.reshape(1, 1, T, C, T, C)  # n = t·C + c (time-major)


@pytest.mark.parametrize("estimator", ["ekfac-krylov", "subspace", "krylov", "cg"])
def test_scores_against_lambda_follow_the_closed_form(linear, estimator):
    model, inputs, targets = linear
    options = {"rtol": 1e-12, "max_iter": 400} if estimator == "cg" else {}
    expected_curve, measured_curve = [], []
    for damping in LAMBDAS:
        result = compute_influence(
            model, inputs, targets, estimator=estimator, damping=damping, **options
        )
        h = result.H.numpy()
        reference = analytic_h(model, inputs, targets, damping)
        np.testing.assert_allclose(h, reference, rtol=1e-6, atol=1e-9 * np.abs(reference).max())
        ours = compute_scores(as_6d(standardized(h)))
        exact = compute_scores(as_6d(standardized(reference)))
        expected_curve.append([s.median for s in exact.as_list()])
        measured_curve.append([s.median for s in ours.as_list()])
    np.testing.assert_allclose(measured_curve, expected_curve, rtol=1e-6, atol=1e-9)
    # the curve really moves with λ (a flat curve would make this test vacuous)
    assert np.ptp(np.array(expected_curve), axis=0).max() > 0.02


def test_large_lambda_tends_to_the_euclidean_map(linear):
    model, inputs, targets = linear
    euclid = compute_influence(model, inputs, targets, estimator="euclidean").H.numpy()
    damped = compute_influence(model, inputs, targets, damping=1e8).H.numpy()
    np.testing.assert_allclose(standardized(damped), standardized(euclid), rtol=1e-5, atol=1e-6)


def test_spectrum_and_top_eigenvalue_are_those_of_s(linear):
    model, inputs, targets = linear
    x = inputs.numpy().reshape(len(inputs), F, L * L)
    eig = np.linalg.eigvalsh(np.einsum("nkp,njp->kj", x, x))
    for damping in (1e-4, 1.0):
        top = top_eigenvalue(model, inputs, damping=damping, tol=1e-10).value
        assert top == pytest.approx(eig.max() + damping, rel=1e-6)
    result = compute_influence(model, inputs, targets)
    spectrum = np.array(result.diagnostics.subspace_eigenvalues)
    np.testing.assert_allclose(np.sort(spectrum), np.sort(np.repeat(eig, F)), rtol=1e-8)
    share = compute_scores(as_6d(result.H.numpy()), [[spectrum]]).dominant_share
    assert share.median == pytest.approx(eig.max() / (F * eig.sum()), rel=1e-8)


# ------------------------------------------------------------------ trends, agreement ---


class _Result:
    """The fields of AnalysisResult that point_scores reads."""

    def __init__(self, h_std, tops, spectra):
        self.H_std = {"smse": h_std}
        self.top_eigenvalues = tops
        self.subspace_spectra = spectra
        self.primary = "smse"


def test_trends_average_batches_within_a_seed_then_take_quartiles():
    rng = np.random.default_rng(0)
    # three batches, one far off: a seed's value is their mean (METHOD.md §6.3), which two
    # batches could not tell from their median
    h = rng.normal(size=(3, 3, 4, 2, 4, 2))
    tops = np.array([[1.0, 2.0, 30.0], [5.0, 7.0, 9.0], [9.0, 11.0, 13.0]])
    spectra = np.abs(rng.normal(size=(3, 3, 8))) + 0.1
    values = point_scores(_Result(h, tops, spectra))
    np.testing.assert_allclose(values["top_eigenvalue"], [11.0, 7.0, 11.0])
    direct = [  # per seed: the mean over its batches of each batch's own score
        np.mean(
            [
                diagonal_dominance(_intra_class_mean_by_hand(h[i : i + 1, j : j + 1]))
                for j in range(3)
            ]
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(values["diagonal_dominance"], direct)
    found = trends([(4.0, values), (1.0, {"top_eigenvalue": np.array([1.0, 2.0])})])
    top = found["top_eigenvalue"]
    np.testing.assert_array_equal(top.x, [1.0, 4.0])
    np.testing.assert_allclose(top.median, [1.5, 11.0])
    np.testing.assert_allclose(top.q1, [1.25, 9.0])
    np.testing.assert_allclose(top.q3, [1.75, 11.0])
    assert math.isnan(found["diagonal_dominance"].median[0])  # epoch 1 had no such score


def test_a_lag_decay_censored_at_the_window_is_flagged_along_the_trend():
    """A perfectly flat map never decays to 1/e: its decay length is the window's last lag
    T − 1 and only a bound. The trend keeps the share of such values per point, and its
    hover note says ≥."""
    from coherence.analysis.trends import CENSORED

    flat = np.ones((2, 2, 4, 2, 4, 2))  # 2 seeds × 2 batches, every map flat: censored
    local = np.zeros((2, 2, 4, 2, 4, 2))
    for t in range(4):
        local[:, :, t, :, t, :] = 1.0  # a perfect ridge: decays at once
    local[1, 1] = 1.0  # one (seed, batch) of the four flat
    spectra = np.ones((2, 2, 4))
    tops = np.ones((2, 2))
    censored = point_scores(_Result(flat, tops, spectra))
    np.testing.assert_allclose(censored["decay_length"], [3.0, 3.0])  # the window's T − 1
    np.testing.assert_allclose(censored["decay_length" + CENSORED], [1.0, 1.0])
    mixed = point_scores(_Result(local, tops, spectra))
    np.testing.assert_allclose(mixed["decay_length" + CENSORED], [0.0, 0.5])
    plain = {"decay_length": np.array([1.0, 1.0])}  # a point whose values are all exact
    trend = trends([(1.0, censored), (2.0, mixed), (3.0, plain)])["decay_length"]
    np.testing.assert_allclose(trend.censored, [[1.0, 1.0], [0.0, 0.5], [0.0, 0.0]])
    assert trend.notes() == [
        "≥: 100% of the (seed, batch) values censored at the window",
        "≥: 25% of the (seed, batch) values censored at the window",
        "",
    ]
    assert trends([(1.0, plain)])["decay_length"].notes() == [""]


def _intra_class_mean_by_hand(h: np.ndarray) -> np.ndarray:
    """V[t_r, t_p] = mean over seeds, batches and classes c of h[s, b, t_r, c, t_p, c]."""
    s_n, b_n, t_n, c_n = h.shape[:4]
    v = np.zeros((t_n, h.shape[4]))
    for s in range(s_n):
        for b in range(b_n):
            for c in range(c_n):
                v += h[s, b, :, c, :, c]
    return v / (s_n * b_n * c_n)


def test_rank_correlation_against_scipy_and_identities():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 1, 3, 2, 3, 2))
    b = a + 0.5 * rng.normal(size=a.shape)
    b[0, 0, 0, 0, 0, :2] = 7.0  # ties
    rho = row_rank_correlation(a, b)
    n = 6
    flat_a, flat_b = a.reshape(2, 1, n, n), b.reshape(2, 1, n, n)
    for s in range(2):
        for r in range(n):
            expected = spearmanr(flat_a[s, 0, r], flat_b[s, 0, r]).statistic
            assert rho[s, 0, r] == pytest.approx(expected, abs=1e-12)
    same = agreement(a, a)
    assert same.median_correlation == pytest.approx(1.0)
    assert same.max_difference == 0.0
    found = agreement(a, b)
    hand_a, hand_b = _intra_class_mean_by_hand(a), _intra_class_mean_by_hand(b)
    np.testing.assert_allclose(found.map_difference, hand_a - hand_b, rtol=1e-12)
    assert found.scale == pytest.approx(max(np.abs(hand_a).max(), np.abs(hand_b).max()))
    assert found.max_difference == pytest.approx(np.abs(hand_a - hand_b).max())
    # the sentence's "median per-row ρ": the median of scipy's per-row values, with a row
    # reversed among them (its −1 pulls a mean, not the median)
    reversed_row = b.copy()
    reversed_row[1, 0, 2, 1] = -a[1, 0, 2, 1]
    per_row = [
        spearmanr(flat_a[s, 0, r], reversed_row.reshape(2, 1, n, n)[s, 0, r]).statistic
        for s in range(2)
        for r in range(n)
    ]
    assert agreement(a, reversed_row).median_correlation == pytest.approx(
        np.median(per_row), abs=1e-12
    )
    assert np.median(per_row) - np.mean(per_row) > 0.05  # the reversed row tells them apart
    # Pearson over every entry, against numpy's textbook formula on the raw arrays
    da, db = a.ravel() - a.mean(), b.ravel() - b.mean()
    expected = (da @ db) / np.sqrt((da @ da) * (db @ db))
    assert found.pearson == pytest.approx(expected, rel=1e-12)
    assert same.pearson == pytest.approx(1.0)
    assert agreement(a, -a).pearson == pytest.approx(-1.0)
    flipped = row_rank_correlation(a, -a)
    np.testing.assert_allclose(flipped, -1.0)
