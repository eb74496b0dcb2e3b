"""Influence against input distance (METHOD.md §6.4): how far apart are the inputs of the
example pairs that influence each other? Pure numpy, layout as in ``summaries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coherence.analysis.arrays import Band, as_influence, json_safe, quartiles, to_numpy
from coherence.analysis.spline import whittaker, whittaker_gcv
from coherence.errors import RequestError


def input_distances(inputs: Any) -> np.ndarray:
    """d(n, m) = mean_{x,y,c} (x_n − x_m)² / (½(RMS(x_n^c) + RMS(x_m^c)) + 1e-6) (§6.4).

    inputs [B, N, F, H, W] raw input states, n = t·C + c as in H → [B, N, N], symmetric, zero
    diagonal. RMS is per example and channel over pixels. As METHOD.md writes it, the squared
    difference is divided by an RMS, not an RMS², so d carries the units of the field. Cost
    B·N²·F·H·W flops, memory N·F·H·W per step (one example against the batch at a time).
    """
    x = to_numpy(inputs)
    if x.ndim != 5 or min(x.shape) == 0:
        raise RequestError(
            f"inputs have shape {x.shape}; expected raw input states [batches, N, F, H, W]"
        )
    if not np.all(np.isfinite(x)):
        raise RequestError("inputs contain NaN/inf; the distance needs finite input states")
    flat = x.reshape(*x.shape[:3], -1)  # (B, N, F, HW)
    rms = np.sqrt(np.mean(flat**2, axis=-1))  # (B, N, F)
    out = np.empty((*x.shape[:2], x.shape[1]))
    for n in range(x.shape[1]):
        sq = np.mean((flat - flat[:, n : n + 1]) ** 2, axis=-1)  # (B, N, F)
        scale = 0.5 * (rms + rms[:, n : n + 1]) + 1e-6
        out[:, n] = np.mean(sq / scale, axis=-1)
    return out


@dataclass(frozen=True)
class DistanceCurve:
    """Ĥ versus input distance d (§6.4): window means per seed, smoothed, then quartiles.

    Windows: log-spaced edges e_0 < … < e_K (K = bins) between the 0.5% and 99.5% quantiles of
    the positive d, each distinct set of pairs counted once; window k covers bins k and k+1,
    i.e. [e_k, e_{k+2}) (the last one closed), centred at e_{k+1}: K − 1 half-overlapping
    windows.
    """

    centers: np.ndarray  # [K−1] window centres e_1..e_{K−1}
    edges: np.ndarray  # [K+1]
    window_means: np.ndarray  # [S, K−1] mean Ĥ per window, NaN where empty
    counts: np.ndarray  # [S, K−1] pairs per window
    bin_means: np.ndarray  # [S, K] mean Ĥ per (non-overlapping) bin, NaN where empty
    smoothed: np.ndarray  # [S, K−1] Whittaker smooth of window_means at λ = lams
    lams: np.ndarray  # [S] the GCV-chosen λ per seed
    gcv_on: str  # "bins" or "windows": the series whose GCV chose λ
    band: Band  # quartiles of `smoothed` across seeds
    dropped_zero: int  # pairs with d = 0 dropped (diagonal included), all seeds

    def to_dict(self) -> dict[str, Any]:
        keys = ("centers", "edges", "window_means", "counts", "bin_means", "smoothed", "lams")
        out = json_safe({k: getattr(self, k) for k in keys})
        return out | {
            "gcv_on": self.gcv_on,
            "band": self.band.to_dict(),
            "dropped_zero": self.dropped_zero,
        }


def influence_vs_distance(
    H_std: Any,
    inputs: Any,
    bins: int = 25,
    quantile_range: tuple[float, float] = (0.005, 0.995),
    gcv_on: str = "bins",
) -> DistanceCurve:
    """Pool (Ĥ[r, p], d(r, p)) over batches per seed, window-average in log d, smooth, summarize.
    The bins are the same for every seed; their edges are quantiles of the distinct sets of
    pair distances, so where the seeds share their inputs (one set) the bins do not depend
    on how many seeds there are.

    inputs: [B, N, F, H, W] (shared by all checkpoints) or [S, B, N, F, H, W]. Pairs with
    d = 0 (the diagonal, duplicated inputs) are dropped. Each seed's window means are smoothed
    by ``whittaker`` (weight 1 per non-empty window, 0 per empty one) at the λ that
    ``whittaker_gcv`` picks. ``gcv_on="bins"`` (default) runs GCV on the non-overlapping bin
    means, whose errors are independent, and applies that λ to the windows (same log-d spacing,
    so λ means the same bandwidth); GCV assumes independent errors, and on the overlapping
    windows (adjacent means share half their pairs) it undersmooths, often to λ → 0, i.e. no
    smoothing at all. ``gcv_on="windows"`` is the literal reading of METHOD.md §6.4.
    """
    if gcv_on not in ("bins", "windows"):
        raise RequestError(f"gcv_on={gcv_on!r}: choose 'bins' or 'windows'")
    h = as_influence(H_std)
    s, b, t, c = h.shape[:4]
    n = t * c
    d = _pair_distances(inputs, s, b, n)
    if not (isinstance(bins, (int, np.integer)) and bins >= 4):
        raise RequestError(f"bins={bins}: need an integer ≥ 4 (3 windows for the smoother)")
    lo_q, hi_q = quantile_range
    if not 0 <= lo_q < hi_q <= 1:
        raise RequestError(f"quantile_range={quantile_range}: need 0 ≤ low < high ≤ 1")
    values = h.reshape(s, b * n * n)
    dist = d.reshape(s, b * n * n)
    keep = dist > 0
    # the edges from each distinct set of pairs once: checkpoints that share their inputs
    # (the usual case) share d, and counting it once per seed moved the interpolated
    # quantiles with the number of seeds (a seed added or dropped re-binned the others).
    # A set is its sorted values (the quantiles see no order), keyed by their bytes.
    distinct = np.concatenate(list({np.sort(row).tobytes(): row for row in dist}.values()))
    edges = _log_edges(distinct[distinct > 0], quantile_range, bins)
    sums, counts = _bin_sums(values, dist, keep, edges)
    win_sum, win_count = sums[:, :-1] + sums[:, 1:], counts[:, :-1] + counts[:, 1:]
    window_means, bin_means = _safe_mean(win_sum, win_count), _safe_mean(sums, counts)
    series = (bin_means, counts) if gcv_on == "bins" else (window_means, win_count)
    smoothed, lams = _smooth(window_means, win_count, *series, gcv_on)
    return DistanceCurve(
        centers=edges[1:-1],
        edges=edges,
        window_means=window_means,
        counts=win_count.astype(np.int64),
        bin_means=bin_means,
        smoothed=smoothed,
        lams=lams,
        gcv_on=gcv_on,
        band=quartiles(smoothed),
        dropped_zero=int((~keep).sum()),
    )


def _pair_distances(inputs: Any, s: int, b: int, n: int) -> np.ndarray:
    """d [S, B, N, N] of inputs [B, N, F, H, W] (shared by the S checkpoints) or
    [S, B, N, F, H, W], checked against H's S checkpoints, B batches and N examples."""
    x = to_numpy(inputs)
    if x.ndim == 6:
        if x.shape[0] != s:
            raise RequestError(f"inputs have {x.shape[0]} checkpoints, H_std has {s}")
        d = np.stack([input_distances(xi) for xi in x])
    else:
        d = np.broadcast_to(input_distances(x), (s, *x.shape[:2], x.shape[1]))
    if d.shape[1:] != (b, n, n):
        raise RequestError(
            f"inputs give {d.shape[1]} batches of {d.shape[2]} examples; H_std has {b} batches "
            f"of N = T·C = {n} (order n = t·C + c)"
        )
    return d


def _log_edges(positive: np.ndarray, quantile_range: tuple[float, float], bins: int) -> np.ndarray:
    """bins + 1 log-spaced edges between the quantiles of the positive distances."""
    if positive.size == 0:
        raise RequestError("every input distance is 0: the batch inputs are all identical")
    lo, hi = np.quantile(positive, list(quantile_range))
    if not hi > lo:
        raise RequestError(f"input distances span no range ({lo:.3g}); vary the batch inputs")
    return np.geomspace(lo, hi, bins + 1)


def _bin_sums(
    values: np.ndarray, dist: np.ndarray, keep: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the sum of Ĥ and the number of kept pairs in each bin [S, K]; pairs outside
    [e_0, e_K] are left out and d = e_K belongs to the last bin."""
    s, bins = values.shape[0], len(edges) - 1
    lo, hi = edges[0], edges[-1]
    sums, counts = np.zeros((s, bins)), np.zeros((s, bins))
    for i in range(s):
        inside = keep[i] & (dist[i] >= lo) & (dist[i] <= hi)
        index = np.searchsorted(edges, dist[i][inside], side="right") - 1
        index = np.minimum(index, bins - 1)  # d = hi belongs to the last bin
        sums[i] = np.bincount(index, weights=values[i][inside], minlength=bins)
        counts[i] = np.bincount(index, minlength=bins)
    return sums, counts


def _smooth(
    window_means: np.ndarray,
    win_count: np.ndarray,
    gcv_series: np.ndarray,
    gcv_count: np.ndarray,
    gcv_on: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's window means smoothed at the λ that GCV picks on ``gcv_series`` (bin or
    window means, weight 1 where non-empty): (smoothed [S, K−1], λ [S])."""
    s = len(window_means)
    smoothed, lams = np.empty_like(window_means), np.empty(s)
    for i in range(s):
        if np.count_nonzero(gcv_count[i]) < 3:
            raise RequestError(
                f"checkpoint {i}: only {np.count_nonzero(gcv_count[i])} non-empty distance "
                f"{gcv_on}; use fewer bins or larger batches"
            )
        lams[i] = whittaker_gcv(gcv_series[i], (gcv_count[i] > 0).astype(float))[1]
        smoothed[i] = whittaker(window_means[i], lams[i], (win_count[i] > 0).astype(float))
    return smoothed, lams


def _safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(total.shape, np.nan)
    return np.divide(total, count, out=out, where=count > 0)
