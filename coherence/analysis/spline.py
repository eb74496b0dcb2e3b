"""Discrete smoothing spline (Whittaker–Henderson) with the smoothing chosen by GCV (§6.4).

z minimizes Σ_i w_i (y_i − z_i)² + λ Σ_k (Δ²z)_k², i.e. (W + λP) z = W y with P = DᵀD and D
the (n−2)×n second-difference matrix. Straight lines lie in the null space of P, so every λ
returns a line unchanged; λ → ∞ gives the weighted least-squares line.

Numerics: we solve in residual form, z = y − λ (W + λP)⁻¹ P y, where y is first completed at
zero-weight points by linear interpolation (W y ignores them, so the identity holds for any
completion). The correction λPy is small when y is smooth, which keeps the large-λ solves
accurate even though cond(W + λP) grows like 16λ. A is pentadiagonal and SPD (≥ 2 positive
weights), solved by banded Cholesky; the GCV trace needs diag(A⁻¹): one banded solve with n
right-hand sides, O(n²) time and memory per λ (n is a few dozen windows here).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solveh_banded
from scipy.optimize import minimize_scalar

from coherence.errors import RequestError

_STENCIL = np.array([1.0, -2.0, 1.0])  # one row of D


def _penalty_bands(n: int) -> np.ndarray:
    """Upper band storage (3, n) of P = DᵀD: row 2 diagonal, row 1 first, row 0 second."""
    bands = np.zeros((3, n))
    m = n - 2  # rows of D
    for a in range(3):
        bands[2, a : a + m] += _STENCIL[a] ** 2
    for a in range(2):
        bands[1, a + 1 : a + 1 + m] += _STENCIL[a] * _STENCIL[a + 1]
    bands[0, 2 : 2 + m] += _STENCIL[0] * _STENCIL[2]
    return bands


def _apply_penalty(z: np.ndarray) -> np.ndarray:
    """P z = Dᵀ(D z) without forming D."""
    dz = np.diff(z, 2)
    out = np.zeros_like(z)
    for a in range(3):
        out[a : a + len(dz)] += _STENCIL[a] * dz
    return out


def _check(y: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or len(y) < 3:
        raise RequestError(f"smoothing needs a 1-D series of ≥ 3 values; got shape {y.shape}")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != y.shape:
        raise RequestError(f"weights have shape {w.shape}; they must match y's {y.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise RequestError("smoothing weights must be finite and ≥ 0 (0 marks a missing value)")
    observed = w > 0
    if not np.all(np.isfinite(y[observed])):
        raise RequestError("y has NaN/inf at a point with positive weight; give it weight 0")
    if observed.sum() < 2:
        raise RequestError("smoothing needs ≥ 2 points with positive weight to fix a line")
    return y, w


def _fill(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y with zero-weight points replaced by linear interpolation of the observed ones."""
    observed = np.flatnonzero(w > 0)
    return np.interp(np.arange(len(y)), observed, y[observed])


def _system(w: np.ndarray, lam: float) -> np.ndarray:
    bands = lam * _penalty_bands(len(w))
    bands[2] += w
    return bands


def whittaker(y: np.ndarray, lam: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Whittaker–Henderson smooth of y at a fixed λ ≥ 0 (zero-weight y may be NaN)."""
    y, w = _check(y, weights)
    if not (math.isfinite(lam) and lam >= 0):
        raise RequestError(f"lam={lam}: the smoothing parameter must be finite and ≥ 0")
    if lam == 0 and np.any(w == 0):
        raise RequestError("lam=0 with zero weights leaves those points undetermined; use lam>0")
    filled = _fill(y, w)
    if lam == 0:
        return filled
    return filled - lam * solveh_banded(_system(w, lam), _apply_penalty(filled))


def gcv_score(y: np.ndarray, lam: float, weights: np.ndarray | None = None) -> float:
    """GCV(λ) = n·RSS/(n − tr S_λ)², n = #positive weights, RSS = Σ w (y − z)², S = A⁻¹W."""
    y, w = _check(y, weights)
    return _gcv(_fill(y, w), w, lam)[0]


def _gcv(filled: np.ndarray, w: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
    system = _system(w, lam)
    correction = lam * solveh_banded(system, _apply_penalty(filled))  # y − z
    inverse_diag = np.diag(solveh_banded(system, np.eye(len(w))))
    observed = w > 0
    n = int(observed.sum())
    rss = float(np.sum(w[observed] * correction[observed] ** 2))
    dof_left = n - float(np.sum(w[observed] * inverse_diag[observed]))
    score = math.inf if dof_left <= 0 else n * rss / dof_left**2
    return score, filled - correction


def whittaker_gcv(y: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Smooth y with λ minimizing GCV(λ): a log grid, then a bounded refine in log λ.

    The grid spans log10 λ ∈ [−6, 4·log10 n + 4] in steps of ¼ (the upper end makes λ·(smallest
    nonzero eigenvalue of P ~ (π/n)⁴) ≫ 1, i.e. reaches the straight-line limit); the refine is
    scipy's bounded Brent between the grid neighbours of the best grid point. Needs ≥ 3 points
    with positive weight (with 2, every λ interpolates and GCV is 0/0). Returns (z, λ).
    """
    y, w = _check(y, weights)
    if (w > 0).sum() < 3:
        raise RequestError("GCV smoothing needs ≥ 3 points with positive weight")
    filled = _fill(y, w)
    grid = np.arange(-6.0, 4 * math.log10(len(y)) + 4 + 1e-9, 0.25)
    scores = np.array([_gcv(filled, w, 10.0**g)[0] for g in grid])
    best = int(np.argmin(scores))
    log_lam, best_score = grid[best], scores[best]
    if 0 < best < len(grid) - 1:
        refined = minimize_scalar(
            lambda g: _gcv(filled, w, 10.0**g)[0],
            bounds=(grid[best - 1], grid[best + 1]),
            method="bounded",
            options={"xatol": 1e-3},
        )
        if refined.fun < best_score:
            log_lam = float(refined.x)
    lam = 10.0**log_lam
    return _gcv(filled, w, lam)[1], lam
