"""Dashboard summaries of influence tensors (METHOD.md §6): pure numpy, arrays in, arrays out.

Input layout (every function): an analysis tensor [S, B, T, C, T, C] = [checkpoints (seeds),
batches, t_r, c_r, t_p, c_p], rows = response, columns = perturbation. One batch's N×N matrix
reshapes to it with example index n = t·C + c (time-major). Pass the standardized Ĥ for the
panels of the paper; any H works (raw, or the mass/energy responses of §6.6, which reuse
two_time_map and lag_curves unchanged). numpy arrays or torch tensors are accepted.

"Across seeds" means across the S checkpoints: batches are averaged within a checkpoint first,
then the median and quartiles Q1, Q3 are taken with np.percentile (linear interpolation).

The validation and JSON plumbing live in ``arrays`` and the §6.4 distance curve in
``distance``; both are re-exported here, so ``summaries`` stays the one import for panels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coherence.analysis.arrays import LAYOUT, Band, as_influence, json_safe, quartiles, to_numpy
from coherence.analysis.distance import DistanceCurve, influence_vs_distance, input_distances
from coherence.errors import RequestError

__all__ = [  # the summaries below, and the plumbing and §6.4 curve they build on
    "LAYOUT",
    "Band",
    "DistanceCurve",
    "LagCurves",
    "as_influence",
    "class_transfer_matrix",
    "influence_vs_distance",
    "input_distances",
    "inter_class_maps",
    "intra_class_maps",
    "json_safe",
    "lag_curves",
    "lag_profile",
    "quartiles",
    "rollout_summary",
    "spectrum_summary",
    "to_numpy",
    "training_curves",
    "two_time_map",
]


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
