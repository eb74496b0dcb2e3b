"""Scalar scores with uncertainty (METHOD.md §7): one number per (checkpoint, batch), each
seed's batches averaged, then the median and Q1–Q3 across seeds (§6's convention, as the
training-dynamics trends take it; one checkpoint: across its batches). The paper reports
only figures; these make runs comparable in a table.

Every score is computed on one batch's intra-class two-time map V[t_r, t_p] = mean_b
Ĥ[t_r, b, t_p, b] (or its lag profile) unless stated; input layout as in summaries.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from coherence.analysis.summaries import (
    as_influence,
    inter_class_maps,
    intra_class_maps,
    json_safe,
    lag_profile,
    spectrum_summary,
)
from coherence.errors import RequestError

DEFINITIONS = {
    "diagonal_dominance": (
        "m_d / (|m_d| + m_o), m_d = mean of V on t_r = t_p, m_o = mean |V| off it: "
        "1 perfectly local, 0.5 flat, ≤ 0 negative diagonal"
    ),
    "decay_length": (
        "the lag |Δ| in steps, interpolated linearly between whole lags, at which the "
        "symmetrised intra-class lag curve first falls below 1/e of its Δ = 0 value "
        "(1 − 1/e ≈ 0.63 for a perfectly local map); T − 1, the last lag observed, and "
        "censored (a lower bound) if it never does"
    ),
    "inter_intra_ratio": "mean inter-class Ĥ / mean intra-class Ĥ over all time pairs",
    "toeplitz_defect": (
        "‖V − Toep(V)‖_F / ‖V‖_F, Toep(V) = each diagonal t_r − t_p = const replaced by its "
        "mean: 0 for a time-translation-invariant map"
    ),
    "dominant_share": "λ_max / Σλ of the subspace metric QᵀηQ of the batch",
}


# --------------------------------------------------------------- one map, one number ------


def diagonal_dominance(V: np.ndarray) -> float:
    """m_d/(|m_d| + m_o) ∈ [−1, 1] for a square map; NaN for an all-zero map (needs T ≥ 2).

    Bounded where diag/offdiag is not: a perfectly local map (√N on the diagonal, 0 off it)
    gives 1, a constant map 0.5.
    """
    v = np.asarray(V, dtype=np.float64)
    t = v.shape[-1]
    diag = float(np.trace(v)) / t
    off = (float(np.abs(v).sum()) - float(np.abs(np.diagonal(v)).sum())) / (t * t - t)
    denominator = abs(diag) + off
    return diag / denominator if denominator > 0 else math.nan


def toeplitz_projection(V: np.ndarray) -> np.ndarray:
    """Toep(V): every entry replaced by the mean of its diagonal (t_r − t_p constant).

    The orthogonal (Frobenius) projection onto Toeplitz matrices.
    """
    v = np.asarray(V, dtype=np.float64)
    t = v.shape[-1]
    out = np.empty_like(v)
    rows = np.arange(t)
    for k in range(1 - t, t):
        r = rows[max(0, -k) : t - max(0, k)]
        out[r, r + k] = v[r, r + k].mean()
    return out


def toeplitz_defect(V: np.ndarray) -> float:
    """‖V − Toep(V)‖_F / ‖V‖_F ∈ [0, 1]; NaN for an all-zero map."""
    v = np.asarray(V, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    return float(np.linalg.norm(v - toeplitz_projection(v))) / norm if norm > 0 else math.nan


def decay_length(profile: np.ndarray) -> tuple[float, bool]:
    """Decay length of a lag profile over Δ = −(T−1)..T−1 → (length, censored).

    c(k) = ½(profile(k) + profile(−k)) for k ≥ 1, c(0) = profile(0); threshold c(0)/e. At the
    first k with c(k) < threshold: (k − 1) + (c(k−1) − thr)/(c(k−1) − c(k)). Never below:
    (T − 1, True), a lower bound: only lags up to T − 1 are observed and c(T − 1) is still
    above the threshold, so the crossing lies beyond T − 1 (T was reported until a review
    found a profile crossing at 15.5 < T = 16). c(0) ≤ 0: (NaN, False). A perfectly local
    map gives 1 − 1/e.
    """
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim != 1 or len(p) < 3 or len(p) % 2 == 0:
        raise RequestError(f"a lag profile has 2T − 1 ≥ 3 entries (T ≥ 2); got shape {p.shape}")
    t = (len(p) + 1) // 2
    c = np.concatenate([[p[t - 1]], 0.5 * (p[t:] + p[t - 2 :: -1])])  # c[k], k = 0..T−1
    if not c[0] > 0:
        return math.nan, False
    threshold = c[0] / math.e
    below = np.flatnonzero(c[1:] < threshold)
    if below.size == 0:
        return float(t - 1), True
    k = int(below[0]) + 1
    return (k - 1) + float((c[k - 1] - threshold) / (c[k - 1] - c[k])), False


# ---------------------------------------------------------------------- the table ---------


def seed_means(values: np.ndarray) -> np.ndarray:
    """[S, B] → [S]: mean over the finite batches of each seed (NaN if none)."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    counts = finite.sum(axis=1)
    sums = np.where(finite, v, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def quartile_bounds(values: np.ndarray, bounded: np.ndarray) -> tuple[bool, bool, bool]:
    """(median, Q1, Q3) of ``values``: whether each is only a lower bound, i.e. it would
    move if the ``bounded`` values (lower bounds themselves) were larger. One rule for the
    score cards and the sweep charts (``trends.Trend.median_bounds``)."""
    if not bounded.any():
        return False, False, False
    larger = np.where(bounded, 1e6 * (np.abs(values).max() + 1.0), values)
    moved = np.percentile(larger, [50, 25, 75])
    exact = np.percentile(values, [50, 25, 75])
    median, q1, q3 = (bool(m != e) for m, e in zip(moved, exact, strict=True))
    return median, q1, q3


@dataclass(frozen=True)
class Score:
    """One scalar score: its values per (checkpoint, batch) and their median and quartiles
    across seeds (``summarized``)."""

    name: str
    definition: str
    values: np.ndarray  # [S, B]; NaN where undefined (excluded from the quartiles)
    censored: np.ndarray  # bool [S, B]: the value is a bound (included in the quartiles)

    @property
    def across_seeds(self) -> bool:
        """The quartiles are across seeds (S ≥ 2); with one checkpoint, across its batches."""
        return self.values.shape[0] > 1

    def summarized(self) -> tuple[np.ndarray, np.ndarray]:
        """The finite values the median and quartiles are taken over, and which are lower
        bounds: each seed's mean over its batches (a mean over a censored batch is itself a
        bound), so the spread is the seeds', not the batches' (METHOD.md §6); with one
        checkpoint its batches, the only spread there is."""
        if self.across_seeds:
            finite = np.isfinite(self.values)
            values, bounds = seed_means(self.values), (self.censored & finite).any(axis=1)
        else:
            values, bounds = self.values[0], self.censored[0]
        keep = np.isfinite(values)
        return values[keep], bounds[keep]

    def _quartiles(self) -> tuple[float, float, float]:
        values, _ = self.summarized()
        if values.size == 0:
            return math.nan, math.nan, math.nan
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return float(median), float(q1), float(q3)

    def bounds(self) -> tuple[bool, bool, bool]:
        """(median, Q1, Q3): whether each is only a lower bound, i.e. it would move if the
        censored values (bounds themselves) were larger; a median above every censored
        value is exact even when some values are censored."""
        values, bounds = self.summarized()
        return quartile_bounds(values, bounds)

    @property
    def median(self) -> float:
        return self._quartiles()[0]

    @property
    def q1(self) -> float:
        return self._quartiles()[1]

    @property
    def q3(self) -> float:
        return self._quartiles()[2]

    def to_dict(self) -> dict[str, Any]:
        median, q1, q3 = self._quartiles()
        return json_safe(
            {
                "name": self.name,
                "definition": self.definition,
                "median": median,
                "q1": q1,
                "q3": q3,
                "n_valid": int(np.isfinite(self.values).sum()),
                "n_censored": int(self.censored.sum()),
                "values": self.values,
            }
        )


@dataclass(frozen=True)
class Scores:
    """The §7 table; ``dominant_share`` is None when no spectra were given."""

    diagonal_dominance: Score
    decay_length: Score
    inter_intra_ratio: Score
    toeplitz_defect: Score
    dominant_share: Score | None = None

    def as_list(self) -> list[Score]:
        return [s for f in fields(self) if (s := getattr(self, f.name)) is not None]

    def to_dict(self) -> dict[str, Any]:
        return {s.name: s.to_dict() for s in self.as_list()}


def _score(name: str, values: np.ndarray, censored: np.ndarray | None = None) -> Score:
    flags = np.zeros(values.shape, dtype=bool) if censored is None else censored
    return Score(name, DEFINITIONS[name], values, flags)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and math.isfinite(a) else math.nan


def _shares(spectra: Any, shape: tuple[int, int]) -> np.ndarray:
    s, b = shape
    if len(spectra) != s or any(len(row) != b for row in spectra):
        raise RequestError(
            f"spectra must be nested [checkpoint][batch] lists of eigenvalues matching H_std's "
            f"{s} checkpoints × {b} batches"
        )
    return np.array([[spectrum_summary(e)["dominant_share"] for e in row] for row in spectra])


def compute_scores(H_std: Any, spectra: Sequence[Sequence[Any]] | None = None) -> Scores:
    """All §7 scores per (checkpoint, batch) of Ĥ [S, B, T, C, T, C] (needs T ≥ 2).

    spectra: optional eig(QᵀηQ) per (checkpoint, batch), nested [S][B] (lengths may differ),
    e.g. InfluenceDiagnostics.subspace_eigenvalues. inter_intra_ratio is NaN when C = 1.
    """
    h = as_influence(H_std)
    s, b, t = h.shape[:3]
    if t < 2:
        raise RequestError(f"scores need T ≥ 2 time steps; H_std has T = {t}")
    intra, inter = intra_class_maps(h), inter_class_maps(h)  # (S, B, T, T)
    profiles = lag_profile(intra)  # (S, B, 2T−1)
    dominance, defect, ratio = np.empty((s, b)), np.empty((s, b)), np.empty((s, b))
    length, censored = np.empty((s, b)), np.zeros((s, b), dtype=bool)
    for i in range(s):
        for j in range(b):
            dominance[i, j] = diagonal_dominance(intra[i, j])
            defect[i, j] = toeplitz_defect(intra[i, j])
            ratio[i, j] = _ratio(float(inter[i, j].mean()), float(intra[i, j].mean()))
            length[i, j], censored[i, j] = decay_length(profiles[i, j])
    return Scores(
        diagonal_dominance=_score("diagonal_dominance", dominance),
        decay_length=_score("decay_length", length, censored),
        inter_intra_ratio=_score("inter_intra_ratio", ratio),
        toeplitz_defect=_score("toeplitz_defect", defect),
        dominant_share=None
        if spectra is None
        else _score("dominant_share", _shares(spectra, (s, b))),
    )
