"""Scalar scores (METHOD.md §7) on maps with hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.linalg import toeplitz

from coherence.analysis.scores import (
    Score,
    compute_scores,
    decay_length,
    diagonal_dominance,
    toeplitz_defect,
    toeplitz_projection,
)
from coherence.analysis.verdict import format_score, quartile_band, uncertainty
from coherence.errors import RequestError

EXACT = 1e-12


def intra_tensor(v: np.ndarray, c: int = 2, inter: float = 0.0) -> np.ndarray:
    """One batch [1, 1, T, C, T, C] whose intra-class blocks are V and inter-class ones const."""
    t = v.shape[0]
    h = np.full((1, 1, t, c, t, c), inter)
    for cc in range(c):
        h[0, 0, :, cc, :, cc] = v
    return h


def exp_map(t: int, ell: float) -> np.ndarray:
    lag = np.arange(t)[:, None] - np.arange(t)[None, :]
    return np.exp(-np.abs(lag) / ell)


def test_toeplitz_map_has_zero_defect():
    first_col, first_row = np.random.default_rng(0).standard_normal((2, 6))
    first_row[0] = first_col[0]
    v = toeplitz(first_col, first_row)
    assert toeplitz_defect(v) < EXACT
    assert compute_scores(intra_tensor(v)).toeplitz_defect.median < EXACT


def test_defect_of_a_hand_computed_map():
    v = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(toeplitz_projection(v), [[2.5, 2.0], [3.0, 2.5]], atol=EXACT)
    expected = math.sqrt(4.5 / 30.0)  # residual [[−1.5, 0], [0, 1.5]], ‖V‖² = 30
    assert toeplitz_defect(v) == pytest.approx(expected, rel=EXACT)
    assert compute_scores(intra_tensor(v, c=1)).toeplitz_defect.median == pytest.approx(expected)


def test_toeplitz_projection_against_scipy():
    v = np.random.default_rng(1).standard_normal((5, 5))
    means = {k: np.diagonal(v, offset=k).mean() for k in range(-4, 5)}
    reference = toeplitz([means[-k] for k in range(5)], [means[k] for k in range(5)])
    np.testing.assert_allclose(toeplitz_projection(v), reference, atol=EXACT)


def test_perfectly_local_map():
    t, c = 6, 3
    root_n = math.sqrt(t * c)
    scores = compute_scores(intra_tensor(root_n * np.eye(t), c=c))
    assert scores.diagonal_dominance.median == pytest.approx(1.0, abs=EXACT)
    assert scores.toeplitz_defect.median == pytest.approx(0.0, abs=EXACT)
    assert scores.inter_intra_ratio.median == pytest.approx(0.0, abs=EXACT)
    assert scores.decay_length.median == pytest.approx(1 - 1 / math.e, rel=EXACT)
    assert scores.dominant_share is None


def test_dominance_of_flat_and_negative_maps():
    assert diagonal_dominance(np.full((4, 4), 3.0)) == pytest.approx(0.5, rel=EXACT)
    v = -np.eye(3) + 0.5 * (1 - np.eye(3))  # m_d = −1, m_o = 0.5
    assert diagonal_dominance(v) == pytest.approx(-1 / 1.5, rel=EXACT)
    assert math.isnan(diagonal_dominance(np.zeros((3, 3))))


def test_decay_length_of_exponential_maps():
    scores = compute_scores(intra_tensor(exp_map(16, 3.0)))
    assert scores.decay_length.median == pytest.approx(3.0, abs=1e-12)
    assert not scores.decay_length.censored.any()
    # Non-integer ℓ: linear interpolation between lags 2 and 3 of e^(−k/2.5).
    c2, c3 = math.exp(-2 / 2.5), math.exp(-3 / 2.5)
    expected = 2 + (c2 - 1 / math.e) / (c2 - c3)
    got = compute_scores(intra_tensor(exp_map(16, 2.5))).decay_length.median
    assert got == pytest.approx(expected, rel=EXACT)
    assert abs(got - 2.5) < 0.1


def test_decay_length_is_censored_when_the_curve_never_drops():
    scores = compute_scores(intra_tensor(np.ones((5, 5))))
    assert scores.decay_length.median == 4.0  # T − 1, the last lag observed
    assert scores.decay_length.censored.all()
    assert scores.decay_length.to_dict()["n_censored"] == 1
    assert math.isnan(decay_length(np.array([1.0, -2.0, 1.0]))[0])  # c(0) ≤ 0: undefined
    # a review's profile: exp(−|k|/15.5) over T = 16 crosses 1/e at 15.5, beyond the last lag
    # observed (15); the bound must not exceed the crossing (T = 16 did)
    lags = np.arange(-15, 16)
    bound, censored = decay_length(np.exp(-np.abs(lags) / 15.5))
    assert censored and bound == 15.0 <= 15.5
    with pytest.raises(RequestError, match="2T − 1"):
        decay_length(np.ones(4))


def test_inter_intra_ratio():
    scores = compute_scores(intra_tensor(np.full((4, 4), 2.0), c=3, inter=0.5))
    assert scores.inter_intra_ratio.median == pytest.approx(0.25, rel=EXACT)


def test_quartiles_across_seeds_of_their_batch_means_with_spectra():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((3, 4, 5, 2, 5, 2)) + 3 * np.eye(5)[None, None, :, None, :, None]
    h *= (
        1.0
        + np.arange(3)[:, None, None, None, None, None]
        + np.arange(4)[:, None, None, None, None]
    )
    spectra = [
        [rng.uniform(0.1, 1.0, size=int(rng.integers(2, 8))) for _ in range(4)] for _ in range(3)
    ]
    scores = compute_scores(h, spectra)
    shares = np.array([[e.max() / e.sum() for e in row] for row in spectra])
    np.testing.assert_allclose(scores.dominant_share.values, shares, rtol=EXACT)
    for i in range(3):  # each cell scored from its own map, built here by hand
        for j in range(4):
            intra = sum(h[i, j, :, c, :, c] for c in range(2)) / 2
            inter = (h[i, j, :, 0, :, 1] + h[i, j, :, 1, :, 0]) / 2
            profile = np.array(
                [
                    np.mean([intra[r, r - lag] for r in range(5) if 0 <= r - lag < 5])
                    for lag in range(-4, 5)
                ]
            )
            expected = {
                "diagonal_dominance": diagonal_dominance(intra),
                "toeplitz_defect": toeplitz_defect(intra),
                "inter_intra_ratio": inter.mean() / intra.mean(),
                "decay_length": decay_length(profile)[0],
            }
            for score in scores.as_list()[:4]:
                assert score.values[i, j] == pytest.approx(expected[score.name], rel=1e-10)
    for score in scores.as_list():  # METHOD §6: batches averaged within a seed, then seeds
        assert score.values.shape == (3, 4)
        q1, med, q3 = np.percentile(score.values.mean(axis=1), [25, 50, 75])
        assert (score.q1, score.median, score.q3) == pytest.approx((q1, med, q3), rel=EXACT)
        pooled = np.median(score.values)  # the old convention: all S·B values pooled
        assert score.median != pytest.approx(pooled, rel=1e-6)
    table = scores.to_dict()
    assert list(table) == [
        "diagonal_dominance",
        "decay_length",
        "inter_intra_ratio",
        "toeplitz_defect",
        "dominant_share",
    ]
    json.dumps(table, allow_nan=False)
    with pytest.raises(RequestError, match="3 checkpoints × 4 batches"):
        compute_scores(h, spectra[:2])


def test_single_class_ratio_is_undefined_but_json_safe():
    scores = compute_scores(intra_tensor(exp_map(4, 1.0), c=1))
    assert math.isnan(scores.inter_intra_ratio.median)
    out = scores.to_dict()["inter_intra_ratio"]
    assert out["median"] is None
    assert out["n_valid"] == 0
    json.dumps(scores.to_dict(), allow_nan=False)


def test_scores_need_two_times():
    with pytest.raises(RequestError, match="T ≥ 2"):
        compute_scores(np.ones((1, 1, 1, 2, 1, 2)))


def test_one_checkpoint_spreads_over_its_batches_and_seeds_skip_undefined_batches():
    one = Score("decay_length", "", np.array([[1.0, 2.0, 3.0, 10.0]]), np.zeros((1, 4), bool))
    assert not one.across_seeds
    assert (one.q1, one.median, one.q3) == pytest.approx((1.75, 2.5, 4.75), rel=EXACT)
    values = np.array([[1.0, np.nan], [2.0, 4.0], [np.nan, np.nan]])  # seed 3: no value
    seeds = Score("decay_length", "", values, np.zeros((3, 2), bool))
    assert seeds.summarized()[0].tolist() == [1.0, 3.0]
    assert seeds.median == pytest.approx(2.0, rel=EXACT)


def test_only_quantiles_that_depend_on_a_censored_value_are_bounds():
    """A censored decay length is a lower bound (the curve never fell below 1/e within the
    window); a median that larger true values would not move is exact."""
    flags = np.array([[False, False, False, True]])
    above = Score("decay_length", "", np.array([[2.1, 2.3, 2.2, 16.0]]), flags)
    assert above.bounds() == (False, False, True)  # only Q3 reaches the censored value
    assert format_score(above) == "2.25" and quartile_band(above) == "[2.18, ≥ 5.72]"
    under = Score(
        "decay_length", "", np.array([[5.0, 5.0, 2.0, 3.0]]), np.array([[1, 1, 0, 0]]) > 0
    )
    assert under.bounds() == (True, False, True)  # [2, 3, 5*, 5*]: the median needs 5*
    assert format_score(under).startswith("≥ ")
    seeds = Score(  # seed 2's mean includes a bound, so it is one; seed 1's does not
        "decay_length",
        "",
        np.array([[1.0, 2.0], [3.0, 6.0], [9.0, 9.0], [2.0, 2.0]]),
        np.array([[False, False], [False, True], [False, False], [False, False]]),
    )
    assert seeds.summarized()[1].tolist() == [False, True, False, False]
    assert seeds.bounds() == (True, False, True)  # [1.5, 2, 4.5*, 9]
    assert uncertainty(seeds).endswith("over 4 seeds (each the mean of its 2 batches)")
    assert uncertainty(above).endswith("over 4 batches of one checkpoint")
    undefined = np.array([[2.5, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
    one_seed = Score("inter_intra_ratio", "", undefined, np.zeros((3, 2), bool))
    assert uncertainty(one_seed).endswith("over 1 seed (each the mean of its 2 batches)")


def test_decay_length_of_a_one_sided_map_by_a_double_loop():
    """Real maps are not symmetric in the lag (a step moves later times): the decay length
    averages c(k) over Δ = +k and −k. Every map above was symmetric, so a profile read on
    one side only (a mutation) passed; here the causal map exp(−Δ/3)·[Δ ≥ 0], computed by
    hand: c(k) = ½(mean of V at Δ = k + mean at Δ = −k) = ½e^(−k/3) for k ≥ 1, c(0) = 1."""
    t = 8
    v = np.array([[math.exp(-(r - p) / 3) if r >= p else 0.0 for p in range(t)] for r in range(t)])

    def mean_at(lag: int) -> float:
        cells = [v[r, p] for r in range(t) for p in range(t) if r - p == lag]
        return sum(cells) / len(cells)

    c = [mean_at(0)] + [0.5 * (mean_at(k) + mean_at(-k)) for k in range(1, t)]
    k = next(k for k in range(1, t) if c[k] < c[0] / math.e)
    expected = (k - 1) + (c[k - 1] - c[0] / math.e) / (c[k - 1] - c[k])
    got = compute_scores(intra_tensor(v)).decay_length.median
    assert got == pytest.approx(expected, rel=EXACT) and got < 1.5  # one-sided: ≈ 0.98, not 3
    # an all-zero map has no decay to measure: undefined (shown as —), not censored at T − 1
    length, censored = decay_length(np.zeros(2 * t - 1))
    assert math.isnan(length) and not censored
