"""Dashboard summaries of influence tensors (METHOD.md §6): pure numpy, arrays in, arrays out.

Input layout (every function): an analysis tensor [S, B, T, C, T, C] = [checkpoints (seeds),
batches, t_r, c_r, t_p, c_p], rows = response, columns = perturbation. One batch's N×N matrix
reshapes to it with example index n = t·C + c (time-major). Pass the standardized Ĥ for the
panels of the paper; any H works (raw, or the mass/energy responses of §6.6, which reuse
two_time_map and lag_curves unchanged). numpy arrays or torch tensors are accepted.

"Across seeds" means across the S checkpoints: batches are averaged within a checkpoint first,
then the median and quartiles Q1, Q3 are taken with np.percentile (linear interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coherence.analysis.spline import whittaker, whittaker_gcv
from coherence.errors import RequestError

LAYOUT = "[checkpoints, batches, t_r, c_r, t_p, c_p]"


# ------------------------------------------------------------------------- plumbing -------


def to_numpy(x: Any) -> np.ndarray:
    """float64 numpy copy of an array or a (CPU/GPU, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() or x.is_complex():
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def as_influence(H: Any, name: str = "H_std") -> np.ndarray:
    """Validate an influence tensor [S, B, T, C, T, C] and return it as float64 numpy."""
    try:
        h = to_numpy(H)
    except (TypeError, ValueError) as error:
        raise RequestError(f"{name} is not a numeric array ({error})") from error
    if h.ndim != 6:
        raise RequestError(
            f"{name} has shape {h.shape}; expected {LAYOUT} (6 axes). Wrap one batch "
            f"[T, C, T, C] as {name}[None, None]; reshape an N×N matrix to [T, C, T, C] "
            f"with example n = t·C + c."
        )
    _, _, t, c, t2, c2 = h.shape
    if (t, c) != (t2, c2):
        raise RequestError(
            f"{name} has shape {h.shape}: response axes (T, C) = {(t, c)} differ from "
            f"perturbation axes {(t2, c2)}; one batch must be square, laid out {LAYOUT}"
        )
    if min(h.shape) == 0:
        raise RequestError(f"{name} has an empty axis (shape {h.shape}); layout {LAYOUT}")
    bad = ~np.isfinite(h)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestError(
            f"{name} has {int(bad.sum())} NaN/inf entries (first at {LAYOUT} = {first}); "
            f"recompute that checkpoint's influence or drop it"
        )
    return h


def json_safe(x: Any) -> Any:
    """JSON-safe copy: arrays → lists, NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


@dataclass(frozen=True)
class Band:
    """Median and interquartile band (Q1, Q3) across seeds, elementwise."""

    median: np.ndarray
    q1: np.ndarray
    q3: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"median": self.median, "q1": self.q1, "q3": self.q3})


def quartiles(values: Any, axis: int = 0) -> Band:
    """Band of np.percentile(values, [25, 50, 75], axis) (NaN propagates)."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75], axis=axis)
    return Band(median=median, q1=q1, q3=q3)


def _band_dict(values: np.ndarray) -> dict[str, np.ndarray]:
    band = quartiles(values)
    return {"median": band.median, "q1": band.q1, "q3": band.q3}


# ------------------------------------------------------------------- time and class -------


def intra_class_maps(h: np.ndarray) -> np.ndarray:
    """[S, B, T_r, T_p]: mean over classes b of h[..., t_r, b, t_p, b] (validated input)."""
    return np.einsum("sbicjc->sbij", h) / h.shape[3]


def inter_class_maps(h: np.ndarray) -> np.ndarray:
    """[S, B, T_r, T_p]: mean over class pairs c_r ≠ c_p; NaN when C = 1 (no such pair)."""
    c = h.shape[3]
    if c < 2:
        return np.full((*h.shape[:3], h.shape[4]), np.nan)
    total = h.sum(axis=(3, 5))
    return (total - np.einsum("sbicjc->sbij", h)) / (c * (c - 1))


def two_time_map(
    H_std: Any, class_pair: tuple[int, int] | None = None, per_checkpoint: bool = False
) -> np.ndarray:
    """V[t_r, t_p] = mean over batches, seeds and classes b of Ĥ[t_r, b, t_p, b] (§6.1).

    Returned as [T_r, T_p]: rows = response time (plot y), columns = perturbation time (plot
    x), the image orientation of METHOD's V[t_p, t_r] with x = t_p. ``class_pair=(c_r, c_p)``
    gives that class pair's map instead of the intra-class mean; ``per_checkpoint`` returns
    [S, T_r, T_p] (batches averaged within each checkpoint).
    """
    h = as_influence(H_std)
    if class_pair is None:
        maps = intra_class_maps(h)
    else:
        c = h.shape[3]
        pair = tuple(class_pair) if isinstance(class_pair, (tuple, list)) else ()
        if (
            len(pair) != 2
            or not all(isinstance(i, (int, np.integer)) for i in pair)
            or not all(0 <= i < c for i in pair)
        ):
            raise RequestError(
                f"class_pair={class_pair!r}: give (response class, perturbation class) as two "
                f"integers in 0..{c - 1}"
            )
        maps = h[:, :, :, pair[0], :, pair[1]]
    per_seed = maps.mean(axis=1)
    return per_seed if per_checkpoint else per_seed.mean(axis=0)


def class_transfer_matrix(H_std: Any, per_checkpoint: bool = False) -> np.ndarray:
    """K[c_r, c_p] = mean of Ĥ over all (t_r, t_p), batches and seeds (§6.2).

    Rows = response class, columns = perturbation class: K[1, 0] is how much descent on
    class-0 examples moves class-1 predictions. ``per_checkpoint`` returns [S, C_r, C_p].
    """
    per_seed = as_influence(H_std).mean(axis=(1, 2, 4))
    return per_seed if per_checkpoint else per_seed.mean(axis=0)


def lag_profile(maps: np.ndarray) -> np.ndarray:
    """[..., T, T] time maps → [..., 2T−1]: mean over pairs with lag Δ = t_r − t_p, Δ ascending."""
    t = maps.shape[-1]
    # np.diagonal(offset=k) holds [i, i + k], i.e. t_p = t_r + k: Δ = −k.
    return np.stack(
        [np.diagonal(maps, offset=-lag, axis1=-2, axis2=-1).mean(-1) for lag in range(1 - t, t)],
        axis=-1,
    )


@dataclass(frozen=True)
class LagCurves:
    """Mean Ĥ versus lag Δ = t_r − t_p (§6.3), intra-class (same trajectory) and inter-class."""

    lags: np.ndarray  # [2T−1] = −(T−1)..T−1
    intra: Band  # across seeds, each [2T−1]
    inter: Band  # NaN everywhere when C = 1
    intra_per_seed: np.ndarray  # [S, 2T−1], batches averaged
    inter_per_seed: np.ndarray  # [S, 2T−1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lags": json_safe(self.lags),
            "intra": self.intra.to_dict(),
            "inter": self.inter.to_dict(),
            "intra_per_seed": json_safe(self.intra_per_seed),
            "inter_per_seed": json_safe(self.inter_per_seed),
        }


def lag_curves(H_std: Any) -> LagCurves:
    """Per seed: mean Ĥ over all (pairs, batches) with lag Δ; then median, Q1–Q3 over seeds.

    Intra pairs have c_r = c_p (one trajectory per class in a batch), inter pairs c_r ≠ c_p.
    Every batch holds the same number of pairs per lag, so the batch average is the pooled mean.
    """
    h = as_influence(H_std)
    if h.shape[2] < 2:
        raise RequestError(f"lag curves need T ≥ 2 time steps; H_std has T = {h.shape[2]}")
    intra = lag_profile(intra_class_maps(h)).mean(axis=1)  # (S, 2T−1)
    inter = lag_profile(inter_class_maps(h)).mean(axis=1)
    t = h.shape[2]
    return LagCurves(np.arange(1 - t, t), quartiles(intra), quartiles(inter), intra, inter)


# ----------------------------------------------------------------- input distance ---------


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
    the pooled positive d; window k covers bins k and k+1, i.e. [e_k, e_{k+2}) (the last one
    closed), centred at e_{k+1}: K − 1 half-overlapping windows.
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
    if not (isinstance(bins, (int, np.integer)) and bins >= 4):
        raise RequestError(f"bins={bins}: need an integer ≥ 4 (3 windows for the smoother)")
    lo_q, hi_q = quantile_range
    if not 0 <= lo_q < hi_q <= 1:
        raise RequestError(f"quantile_range={quantile_range}: need 0 ≤ low < high ≤ 1")
    values = h.reshape(s, b * n * n)
    dist = d.reshape(s, b * n * n)
    keep = dist > 0
    positive = dist[keep]
    if positive.size == 0:
        raise RequestError("every input distance is 0: the batch inputs are all identical")
    lo, hi = np.quantile(positive, [lo_q, hi_q])
    if not hi > lo:
        raise RequestError(f"input distances span no range ({lo:.3g}); vary the batch inputs")
    edges = np.geomspace(lo, hi, bins + 1)
    sums, counts = np.zeros((s, bins)), np.zeros((s, bins))
    for i in range(s):
        inside = keep[i] & (dist[i] >= lo) & (dist[i] <= hi)
        index = np.searchsorted(edges, dist[i][inside], side="right") - 1
        index = np.minimum(index, bins - 1)  # d = hi belongs to the last bin
        sums[i] = np.bincount(index, weights=values[i][inside], minlength=bins)
        counts[i] = np.bincount(index, minlength=bins)
    win_sum, win_count = sums[:, :-1] + sums[:, 1:], counts[:, :-1] + counts[:, 1:]
    window_means, bin_means = _safe_mean(win_sum, win_count), _safe_mean(sums, counts)
    smoothed, lams = np.empty_like(window_means), np.empty(s)
    for i in range(s):
        series, count = (
            (bin_means[i], counts[i]) if gcv_on == "bins" else (window_means[i], win_count[i])
        )
        if np.count_nonzero(count) < 3:
            raise RequestError(
                f"checkpoint {i}: only {np.count_nonzero(count)} non-empty distance {gcv_on}; "
                f"use fewer bins or larger batches"
            )
        lams[i] = whittaker_gcv(series, (count > 0).astype(float))[1]
        smoothed[i] = whittaker(window_means[i], lams[i], (win_count[i] > 0).astype(float))
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


def _safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    out = np.full(total.shape, np.nan)
    return np.divide(total, count, out=out, where=count > 0)


# ------------------------------------------------------------------------ spectrum --------


def spectrum_summary(eigenvalues: Any) -> dict[str, Any]:
    """Shape of the subspace NTK spectrum eig(QᵀηQ) (§6.5), JSON-safe.

    - ``eigenvalues``: sorted descending (roundoff negatives ≥ −1e-10·max clipped to 0);
    - ``participation_ratio`` (Σλ)²/Σλ²  and ``entropy_rank`` exp(−Σ p log p), p = λ/Σλ: both
      equal n for a flat spectrum and 1 for a single direction; the first weights the top;
    - ``dominant_share`` λ_max/Σλ;
    - ``decay_slope``: least-squares slope of log λ_k against log k over the top half
      (k ≤ max(2, ⌈n/2⌉), positive λ only), λ_k ∝ k^slope; None with < 2 such points.
    """
    lam = to_numpy(eigenvalues).ravel()
    if lam.size == 0 or not np.all(np.isfinite(lam)):
        raise RequestError("eigenvalues must be a non-empty list of finite numbers")
    lam = np.sort(lam)[::-1]
    if lam[0] <= 0 or lam[-1] < -1e-10 * lam[0]:
        raise RequestError(
            f"eigenvalues span [{lam[-1]:.3g}, {lam[0]:.3g}]; QᵀηQ is positive semidefinite, "
            f"so a negative or all-zero spectrum means a wrong input"
        )
    lam = np.clip(lam, 0.0, None)
    total = lam.sum()
    p = lam / total
    nz = p[p > 0]
    top = lam[: max(2, math.ceil(len(lam) / 2))]
    top = top[top > 0]
    slope = (
        float(np.polyfit(np.log(np.arange(1, len(top) + 1)), np.log(top), 1)[0])
        if len(top) >= 2
        else None
    )
    return json_safe(
        {
            "eigenvalues": lam,
            "n": len(lam),
            "total": total,
            "participation_ratio": total**2 / np.sum(lam**2),
            "entropy_rank": math.exp(-np.sum(nz * np.log(nz))),
            "dominant_share": lam[0] / total,
            "decay_slope": slope,
        }
    )


# ------------------------------------------------------------- training and rollout -------


def training_curves(histories: Sequence[Sequence[Mapping[str, float]]]) -> dict[str, Any]:
    """Median and Q1–Q3 over seeds of train and validation SMSE per epoch (§6.7).

    histories: one per seed (checkpoints/<name>/history.json records with ``train_smse`` and
    ``valid_smse``). Unequal lengths are truncated to the shortest, so every epoch shown has
    all seeds. Returns numpy arrays: ``epochs`` [E] (the first history's ``epoch`` field, else
    1..E), ``valid_smse``/``train_smse`` as {median, q1, q3, per_seed [S, E]}, ``lengths``
    (``json_safe`` converts the result to JSON).
    """
    if not histories or any(len(h) == 0 for h in histories):
        raise RequestError("training_curves needs ≥ 1 non-empty history (list of epoch records)")
    length = min(len(h) for h in histories)
    out: dict[str, Any] = {"lengths": [len(h) for h in histories], "truncated_to": length}
    for key in ("valid_smse", "train_smse"):
        try:
            values = np.array([[float(r[key]) for r in h[:length]] for h in histories])
        except (KeyError, TypeError, ValueError) as error:
            raise RequestError(
                f"a history record lacks a numeric '{key}' ({error}); histories must be "
                f"checkpoint history.json lists"
            ) from error
        out[key] = {**_band_dict(values), "per_seed": values}
    first = histories[0][:length]
    has_epoch = all("epoch" in r for r in first)
    out["epochs"] = np.array([r["epoch"] for r in first]) if has_epoch else np.arange(1, length + 1)
    return out


def rollout_summary(one_step: Any, rollout: Any) -> dict[str, Any]:
    """Per-horizon median and Q1–Q3 of one-step and rollout SMSE over all trajectories (§6.7).

    one_step, rollout: per-example errors [B, Hzn] or [S, B, Hzn] (leading axes pooled),
    horizon h = 1..Hzn as in surrogates.rollout.RolloutErrors. Returns numpy arrays
    (``json_safe`` converts): ``horizons``, ``one_step``/``rollout`` {median, q1, q3}.
    """
    a, r = to_numpy(one_step), to_numpy(rollout)
    if a.shape != r.shape or a.ndim not in (2, 3) or a.size == 0:
        raise RequestError(
            f"one_step {a.shape} and rollout {r.shape} must share a shape [B, H] or [S, B, H]"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(r))):
        raise RequestError("rollout errors contain NaN/inf (a diverged rollout?); clip or drop")
    a, r = a.reshape(-1, a.shape[-1]), r.reshape(-1, r.shape[-1])
    return {
        "horizons": np.arange(1, a.shape[1] + 1),
        "one_step": _band_dict(a),
        "rollout": _band_dict(r),
        "n_samples": a.shape[0],
    }
