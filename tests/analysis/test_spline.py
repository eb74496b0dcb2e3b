"""Whittaker–Henderson smoother and its GCV against a dense float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.analysis.spline import gcv_score, whittaker, whittaker_gcv
from coherence.errors import RequestError

DENSE_RTOL = 1e-9  # banded Cholesky vs dense LU on systems with cond ≲ 1e5


def dense_smooth(y: np.ndarray, w: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """z = (W + λDᵀD)⁻¹ W y and GCV = n·RSS/(n − tr S)², everything dense."""
    n = len(y)
    d = np.diff(np.eye(n), 2, axis=0)  # (n − 2, n) second differences
    a = np.diag(w) + lam * d.T @ d
    y0 = np.where(w > 0, y, 0.0)
    z = np.linalg.solve(a, w * y0)
    hat = np.linalg.solve(a, np.diag(w))
    obs = w > 0
    m = obs.sum()
    rss = np.sum(w[obs] * (y0[obs] - z[obs]) ** 2)
    return z, m * rss / (m - np.trace(hat[np.ix_(obs, obs)])) ** 2


@pytest.fixture
def series() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.standard_normal(30))
    w = rng.uniform(0.5, 2.0, 30)
    w[[0, 7, 8, 20]] = 0.0
    y[[0, 7, 8, 20]] = np.nan  # missing values carry weight 0
    return y, w


@pytest.mark.parametrize("lam", [0.1, 10.0, 1e3])
def test_matches_dense_reference(series, lam):
    y, w = series
    z_ref, gcv_ref = dense_smooth(y, w, lam)
    np.testing.assert_allclose(whittaker(y, lam, w), z_ref, rtol=DENSE_RTOL, atol=1e-10)
    np.testing.assert_allclose(gcv_score(y, lam, w), gcv_ref, rtol=DENSE_RTOL)


def test_straight_line_is_kept_for_every_lambda():
    x = np.linspace(-1.0, 2.0, 25)
    line = 3.0 - 2.0 * x
    for lam in [1e-3, 1.0, 1e3, 1e6, 1e10]:
        np.testing.assert_allclose(whittaker(line, lam), line, rtol=0, atol=1e-10)
    z, _ = whittaker_gcv(line)
    np.testing.assert_allclose(z, line, rtol=0, atol=1e-10)


def test_gcv_reduces_noise_on_a_sine():
    x = np.linspace(0, 1, 100)
    truth = np.sin(2 * np.pi * x)
    y = truth + 0.2 * np.random.default_rng(0).standard_normal(100)
    z, _ = whittaker_gcv(y)
    rmse_raw = np.sqrt(np.mean((y - truth) ** 2))
    rmse_smooth = np.sqrt(np.mean((z - truth) ** 2))
    assert rmse_smooth < 0.5 * rmse_raw, (rmse_smooth, rmse_raw)


def test_gcv_lambda_grows_with_noise():
    """Median over 7 noise draws (GCV is noisy per draw): λ rises by decades with σ."""
    x = np.linspace(0, 1, 100)
    truth = np.sin(2 * np.pi * x)
    medians = []
    for sigma in [0.02, 0.2, 2.0]:
        lams = [
            whittaker_gcv(truth + sigma * np.random.default_rng(s).standard_normal(100))[1]
            for s in range(7)
        ]
        medians.append(np.median(np.log10(lams)))
    assert medians[0] + 0.5 < medians[1] < medians[2] - 0.5, medians


def test_gcv_choice_is_a_minimum_of_the_dense_gcv(series):
    y, w = series
    z, lam = whittaker_gcv(y, w)
    _, best = dense_smooth(y, w, lam)
    for other in lam * np.array([0.5, 0.9, 1.1, 2.0]):
        assert best <= dense_smooth(y, w, other)[1] * (1 + 1e-9)
    for g in np.arange(-6, 10, 0.5):  # a grid the implementation does not use
        assert best <= dense_smooth(y, w, 10.0**g)[1] * (1 + 1e-9)
    np.testing.assert_allclose(z, dense_smooth(y, w, lam)[0], rtol=DENSE_RTOL, atol=1e-10)


@pytest.mark.parametrize(
    ("y", "weights", "match"),
    [
        (np.ones(2), None, "≥ 3 values"),
        (np.ones((3, 3)), None, "1-D"),
        (np.ones(5), np.ones(4), "weights have shape"),
        (np.ones(5), -np.ones(5), "≥ 0"),
        (np.array([1.0, np.nan, 2.0, 3.0]), None, "NaN"),
        (np.ones(5), np.array([1.0, 0, 0, 0, 0]), "≥ 2 points"),
    ],
)
def test_bad_inputs_raise(y, weights, match):
    with pytest.raises(RequestError, match=match):
        whittaker(y, 1.0, weights)


def test_gcv_needs_three_points_and_lambda_must_be_valid():
    with pytest.raises(RequestError, match="≥ 3 points"):
        whittaker_gcv(np.arange(5.0), np.array([1.0, 1.0, 0, 0, 0]))
    with pytest.raises(RequestError, match="lam="):
        whittaker(np.arange(5.0), -1.0)
    with pytest.raises(RequestError, match="lam=0"):
        whittaker(np.arange(5.0), 0.0, np.array([1.0, 1.0, 0, 1, 1]))
