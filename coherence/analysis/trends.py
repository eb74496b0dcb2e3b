"""Scores along a sweep (epochs, λ) and the agreement of two estimators: pure functions.

A trend point is one AnalysisResult (S seeds × B batches). As for the time-lag curves
(METHOD.md §6.3), a score is first averaged over the batches of each seed, then summarised by
the median and Q1–Q3 across seeds; a point with one seed has a zero-width band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coherence.analysis.results import AnalysisResult
from coherence.analysis.scores import compute_scores, quartile_bounds, seed_means
from coherence.analysis.summaries import as_influence, two_time_map
from coherence.errors import RequestError

# (name, title) of the scores drawn against the sweep variable, in panel order
TREND_SCORES = (
    ("diagonal_dominance", "Diagonal dominance"),
    ("decay_length", "Lag decay (steps)"),  # as the page's header names it
    ("inter_intra_ratio", "Inter / intra class"),
    ("toeplitz_defect", "Toeplitz defect"),
    ("top_eigenvalue", "Top eigenvalue of η + λI"),
    ("dominant_share", "Dominant-eigenvalue share"),
)
CENSORED = ":censored"  # point_scores' key suffix for the share of bounded values


@dataclass(frozen=True)
class Trend:
    """One score along a sweep: x ascending, per-seed values [X, S] (NaN where missing)."""

    name: str
    x: np.ndarray
    per_seed: np.ndarray
    # [X, S] share of each seed's batches whose value is only a bound (the lag decay length
    # censored at the window: it never fell to 1/e); None for scores that are never bounds
    censored: np.ndarray | None = None

    def notes(self) -> list[str]:
        """Per x, a hover note when some values are bounds ('' otherwise): a lag decay length
        at the window length T reads as T, and means 'at least T'. It starts with '≥' where
        the median itself is only a lower bound (``median_bounds``), the charts' cue."""
        if self.censored is None:
            return [""] * len(self.x)
        share = seed_means(self.censored)  # NaN (no note) where no seed has a value
        said = "of the (seed, batch) values censored at the window"
        notes = []
        for c, bound in zip(share, self.median_bounds(), strict=True):
            if not c > 0:
                notes.append("")
            elif bound:
                notes.append(f"≥: {c:.0%} {said}")
            else:  # the bounded seeds lie above the median: raising them leaves it
                notes.append(f"{c:.0%} {said}, above the median, which is exact")
        return notes

    def median_bounds(self) -> list[bool]:
        """Per x, whether the median over seeds is only a lower bound: it would move if the
        seeds whose mean holds a censored value had larger ones (a median above every such
        seed is exact, as ``scores.Score.bounds`` decides for the score cards)."""
        if self.censored is None:
            return [False] * len(self.x)
        out = []
        for values, shares in zip(self.per_seed, self.censored, strict=True):
            keep = np.isfinite(values)
            out.append(quartile_bounds(values[keep], np.nan_to_num(shares[keep]) > 0)[0])
        return out

    @property
    def median(self) -> np.ndarray:
        return _nanpercentile(self.per_seed, 50)

    @property
    def q1(self) -> np.ndarray:
        return _nanpercentile(self.per_seed, 25)

    @property
    def q3(self) -> np.ndarray:
        return _nanpercentile(self.per_seed, 75)


def _nanpercentile(values: np.ndarray, q: float) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    for i, row in enumerate(values):
        finite = row[np.isfinite(row)]
        if finite.size:
            out[i] = np.percentile(finite, q)
    return out


def spectra_lists(result: AnalysisResult) -> list[list[np.ndarray]] | None:
    """eig(QᵀηQ) per (checkpoint, batch) without NaN padding; None when absent (euclidean,
    cg) or degenerate."""
    rows = [[e[np.isfinite(e)] for e in per_batch] for per_batch in result.subspace_spectra]
    if not rows or any(e.size == 0 or not np.any(e > 0) for row in rows for e in row):
        return None
    return rows


def point_scores(result: AnalysisResult, response: str | None = None) -> dict[str, np.ndarray]:
    """Score name → per-seed values [S] of one result (the trend scores that apply); for a
    score with bounded values, name + CENSORED → each seed's share of its batches that are."""
    response = response or result.primary
    h = result.H_std[response]
    out: dict[str, np.ndarray] = {}
    if as_influence(h).shape[2] >= 2:
        scores = compute_scores(h, spectra_lists(result))
        for score in scores.as_list():
            out[score.name] = seed_means(score.values)
            if score.censored.any():  # the share of each seed's batches that are bounds
                out[score.name + CENSORED] = seed_means(score.censored.astype(np.float64))
    top = np.asarray(result.top_eigenvalues, dtype=np.float64)
    if top.size and np.isfinite(top).any():
        out["top_eigenvalue"] = seed_means(top)
    return out


def _table(rows: Sequence[np.ndarray | None], width: int) -> np.ndarray:
    table = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            table[i, : len(row)] = row
    return table


def trends(points: Sequence[tuple[float, dict[str, np.ndarray]]]) -> dict[str, Trend]:
    """Per score, the trend over ``points`` = [(x, point_scores(...)), …] (any order; points
    with different seed counts are padded with NaN)."""
    ordered = sorted(points, key=lambda p: p[0])
    x = np.array([p[0] for p in ordered], dtype=np.float64)
    out = {}
    for name, _ in TREND_SCORES:
        rows = [p[1].get(name) for p in ordered]
        if all(r is None for r in rows):
            continue
        width = max(len(r) for r in rows if r is not None)
        flags = [p[1].get(name + CENSORED) for p in ordered]
        censored = None
        if any(f is not None for f in flags):  # missing flags: no value was a bound
            censored = np.nan_to_num(_table(flags, width), nan=0.0)
        out[name] = Trend(name, x, _table(rows, width), censored)
    return out


# --------------------------------------------------------------------------- agreement ---


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    order = np.argsort(values, axis=-1, kind="stable")
    ranks = np.empty_like(values, dtype=np.float64)
    flat_v = values.reshape(-1, values.shape[-1])
    flat_o = order.reshape(-1, values.shape[-1])
    flat_r = ranks.reshape(-1, values.shape[-1])
    for i in range(flat_v.shape[0]):
        row, idx = flat_v[i], flat_o[i]
        sorted_row = row[idx]
        r = np.arange(1, row.size + 1, dtype=np.float64)
        start = 0
        while start < row.size:  # average tied runs
            end = start + 1
            while end < row.size and sorted_row[end] == sorted_row[start]:
                end += 1
            r[start:end] = (start + 1 + end) / 2
            start = end
        flat_r[i, idx] = r
    return ranks


def row_rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of Ĥ (response r, over the N perturbations p)
    between two results of the same batches: [S, B, N]; NaN for a constant row."""
    ha, hb = as_influence(a, "a"), as_influence(b, "b")
    if ha.shape != hb.shape:
        raise RequestError(
            f"Ĥ shapes {ha.shape} and {hb.shape} differ: compare results of the same request "
            "apart from the estimator"
        )
    s, bt, t, c = ha.shape[:4]
    n = t * c
    ra = _ranks(ha.reshape(s, bt, n, n))
    rb = _ranks(hb.reshape(s, bt, n, n))
    ra -= ra.mean(axis=-1, keepdims=True)
    rb -= rb.mean(axis=-1, keepdims=True)
    num = (ra * rb).sum(axis=-1)
    den = np.sqrt((ra**2).sum(axis=-1) * (rb**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class Agreement:
    """How far two estimators' Ĥ agree on the same batches."""

    rank_correlation: np.ndarray  # [S, B, N] per-row Spearman
    map_difference: np.ndarray  # [T_r, T_p] two-time map of a minus that of b
    scale: float  # max |V| of the two maps (for a symmetric colour range)
    pearson: float = math.nan  # over every entry of Ĥ, all seeds and batches pooled

    @property
    def median_correlation(self) -> float:
        finite = self.rank_correlation[np.isfinite(self.rank_correlation)]
        return float(np.median(finite)) if finite.size else math.nan

    @property
    def max_difference(self) -> float:
        return float(np.abs(self.map_difference).max()) if self.map_difference.size else 0.0


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Per-row rank correlation, Pearson correlation over all entries and the difference of
    the intra-class two-time maps of two standardized influence arrays [S, B, T, C, T, C] of
    the same request.

    Why both correlations: the per-row rank correlation weighs the many near-zero
    off-diagonal entries of a row as much as its ridge, so two solves that agree on the
    ridge can still rank the rest differently; the Pearson correlation over all entries
    (pooled over seeds and batches; ``bench_fidelity`` scores one batch's map this way
    against the exact solve) is dominated by the ridge."""
    corr = row_rank_correlation(a, b)
    va, vb = two_time_map(a), two_time_map(b)
    scale = float(max(np.abs(va).max(), np.abs(vb).max()))
    flat_a = np.asarray(a, dtype=np.float64).ravel()
    flat_b = np.asarray(b, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = float(np.corrcoef(flat_a, flat_b)[0, 1]) if flat_a.size > 1 else math.nan
    return Agreement(corr, va - vb, scale, pearson)
