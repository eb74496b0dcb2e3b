"""Panel data for download: long-format CSV tables and npz archives, as bytes in memory.

CSVs are written with the csv module (no pandas), one row per plotted number, optionally after
'# key: value' parameter lines (read them with pandas' ``comment='#'``); floats use repr(),
which round-trips exactly (NaN → 'nan'); times are rounded to 6 significant digits (0.05, not
0.05000000000000001). ``coherence.analysis.exports`` re-exports everything here.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from coherence.analysis.arrays import to_numpy
from coherence.analysis.distance import DistanceCurve
from coherence.analysis.figures.influence import LagGroups, lag_groups
from coherence.analysis.figures.models import series_names, spectrum_median
from coherence.analysis.figures.validation import score_rows
from coherence.analysis.results import npz_bytes
from coherence.analysis.scores import Scores
from coherence.errors import RequestError


def as_text(value: Any) -> str:
    """A parameter value as one line of text: lists joined by ', ', mappings as 'key:
    value' joined by '; ', floats in %g."""
    if isinstance(value, (list, tuple)):
        return ", ".join(as_text(v) for v in value)
    if isinstance(value, dict):  # {line: its settings}: not Python's repr
        return "; ".join(f"{k}: {as_text(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ------------------------------------------------------------------------------ csv -------


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else str(float(value))
    return value


def with_header(data: bytes, params: Mapping[str, Any]) -> bytes:
    """CSV bytes preceded by one '# key: value' line per parameter (pandas: comment='#')."""
    lines = "".join(f"# {k}: {as_text(v)}".replace("\n", " ") + "\n" for k, v in params.items())
    return lines.encode() + data


def round_times(times: Any) -> np.ndarray:
    """Times to 6 significant digits: 0.05 instead of the float sum 0.05000000000000001."""
    return np.array([float(f"{float(t):.6g}") for t in np.ravel(times)])


def table_csv(columns: Mapping[str, Any]) -> bytes:
    """CSV bytes of equal-length named columns (header row first), UTF-8, '\\n' line ends."""
    if not columns:
        raise RequestError("table_csv: pass at least one column {name: values}")
    data = {
        str(k): np.asarray(to_numpy(v) if hasattr(v, "detach") else v) for k, v in columns.items()
    }
    lengths = {k: (v.shape[0] if v.ndim else 1) for k, v in data.items()}
    if any(v.ndim > 1 for v in data.values()) or len(set(lengths.values())) != 1:
        raise RequestError(
            f"table_csv: columns must be 1-D and of one length; got lengths {lengths} and "
            f"shapes { {k: v.shape for k, v in data.items()} }"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(data))
    for row in zip(*(np.atleast_1d(v).tolist() for v in data.values()), strict=True):
        writer.writerow([_cell(x) for x in row])
    return buffer.getvalue().encode()


def two_time_csv(V: Any, times: Any, *, steps: Any = None) -> bytes:
    """Long format of V [T_r, T_p]: t_p, t_r, value (plus step_p, step_r with ``steps``)."""
    return table_csv(_two_time_columns(V, times, steps))


def rank_correlation_csv(rho: Any, *, seeds: Sequence[str]) -> bytes:
    """seed, batch, row, spearman_rho: every per-row rank correlation of two estimators' Ĥ
    [S, B, N] (the Sensitivity agreement histogram's values; row n = t·C + c, time-major)."""
    r = to_numpy(rho)
    if r.ndim != 3 or r.shape[0] != len(seeds):
        raise RequestError(f"rho has shape {r.shape}; expected [seeds={len(seeds)}, B, N]")
    s, b, n = np.meshgrid(*(np.arange(k) for k in r.shape), indexing="ij")
    return table_csv(
        {
            "seed": np.asarray(seeds)[s.ravel()],
            "batch": b.ravel(),
            "row": n.ravel(),
            "spearman_rho": r.ravel(),
        }
    )


def epoch_maps_csv(maps: Sequence[Any], epochs: Sequence[float], times: Any) -> bytes:
    """epoch, t_p, t_r, value: each epoch's two-time map V [T_r, T_p] in ``two_time_csv``'s
    long format, one block per epoch (the training-dynamics panel's maps)."""
    if len(maps) != len(epochs) or not maps:
        raise RequestError(f"{len(maps)} maps for {len(epochs)} epochs: give one map per epoch")
    blocks = [_two_time_columns(v, times) for v in maps]
    cells = len(blocks[0]["value"])
    columns = {"epoch": np.repeat([f"{e:g}" for e in epochs], cells)}
    return table_csv(columns | {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]})


def _two_time_columns(V: Any, times: Any, steps: Any = None) -> dict[str, Any]:
    v, t = to_numpy(V), to_numpy(times)
    if v.shape != (len(t), len(t)):
        raise RequestError(f"V has shape {v.shape}; expected [T_r, T_p] = {(len(t), len(t))}")
    r, p = np.meshgrid(np.arange(len(t)), np.arange(len(t)), indexing="ij")  # (T_r, T_p)
    rounded = round_times(t)
    columns: dict[str, Any] = {"t_p": rounded[p.ravel()], "t_r": rounded[r.ravel()]}
    if steps is not None:
        k = np.asarray(steps)
        if k.shape != t.shape:
            raise RequestError(f"steps has shape {k.shape}; give one step per time ({len(t)})")
        columns |= {"step_p": k[p.ravel()], "step_r": k[r.ravel()]}
    return columns | {"value": v.ravel()}


def class_matrix_csv(M: Any, classes: Sequence[str]) -> bytes:
    """Long format of M [C_r, C_p]: response_class, perturbation_class, value."""
    m, names = to_numpy(M), np.asarray([str(c) for c in classes])
    if m.shape != (len(names), len(names)):
        raise RequestError(f"M has shape {m.shape} for {len(names)} classes; M is [C_r, C_p]")
    r, p = np.meshgrid(np.arange(len(names)), np.arange(len(names)), indexing="ij")
    return table_csv(
        {
            "response_class": names[r.ravel()],
            "perturbation_class": names[p.ravel()],
            "value": m.ravel(),
        }
    )


def lag_curves_csv(lag_curves: LagGroups, *, label: str = "") -> bytes:
    """group, lag, then median/q1/q3 of the intra- and inter-class curves (NaN if C = 1)."""
    groups = lag_groups(lag_curves, label)
    columns: dict[str, list[Any]] = {"group": [], "lag": []}
    for kind in ("intra", "inter"):
        for q in ("median", "q1", "q3"):
            columns[f"{kind}_{q}"] = []
    for name, curves in groups:
        columns["group"] += [name] * len(curves.lags)
        columns["lag"] += list(curves.lags)
        for kind in ("intra", "inter"):
            band = getattr(curves, kind)
            for q in ("median", "q1", "q3"):
                columns[f"{kind}_{q}"] += list(getattr(band, q))
    return table_csv(columns)


def distance_csv(curve: DistanceCurve, seeds: Sequence[str] | None = None) -> bytes:
    """One row per window: centre, window edges, smoothed median/q1/q3, then per seed the
    window mean, smoothed value and pair count (<seed>_mean, <seed>_smoothed, <seed>_pairs,
    the seed named by ``seeds``, its checkpoint, else seed{i}: 'seed0' read as seed 0)."""
    k = len(curve.centers)
    columns: dict[str, Any] = {
        "d_center": curve.centers,
        "d_low": curve.edges[:k],
        "d_high": curve.edges[2 : k + 2],
        "median": curve.band.median,
        "q1": curve.band.q1,
        "q3": curve.band.q3,
    }
    names = list(seeds) if seeds is not None else [f"seed{i}" for i in range(len(curve.counts))]
    if len(names) != len(curve.window_means) or len(set(names)) != len(names):
        raise RequestError(f"{len(names)} seed names {names} for {len(curve.counts)} seeds")
    for i, name in enumerate(names):
        columns[f"{name}_mean"] = curve.window_means[i]
        columns[f"{name}_smoothed"] = curve.smoothed[i]
        columns[f"{name}_pairs"] = curve.counts[i]
    return table_csv(columns)


def spectra_csv(
    spectra: Mapping[str, Any], series_labels: Mapping[str, Sequence[str]] | None = None
) -> bytes:
    """Long format of {label: eigenvalues [k] or [..., N]}: group, series, index, eigenvalue.

    ``series`` names each flattened leading (seed, batch) position (``series_labels``, else
    its number), then 'median' for the median the figure draws (``spectrum_median``: up to
    the smallest rank); NaN padding is dropped.
    """
    columns: dict[str, list[Any]] = {"group": [], "series": [], "index": [], "eigenvalue": []}
    for name, values in spectra.items():
        rows = to_numpy(values)
        rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
        labels = series_names(series_labels, name, len(rows), str)
        series = list(zip(labels, rows, strict=True))
        if len(rows) > 1:
            series.append(("median", spectrum_median(np.where(rows > 0, rows, np.nan))))
        for label, row in series:
            for k, value in enumerate(row, start=1):
                if np.isnan(value):
                    continue
                columns["group"].append(str(name))
                columns["series"].append(label)
                columns["index"].append(k)
                columns["eigenvalue"].append(value)
    return table_csv(columns)


def top_eigenvalues_csv(
    groups: Mapping[str, Any], series_labels: Mapping[str, Sequence[str]] | None = None
) -> bytes:
    """group, sample (each flattened (seed, batch) position: ``series_labels``, else its
    number), top_eigenvalue; NaN kept."""
    columns: dict[str, list[Any]] = {"group": [], "sample": [], "top_eigenvalue": []}
    for name, values in groups.items():
        flat = to_numpy(values).ravel()
        labels = series_names(series_labels, name, len(flat), int)
        columns["group"] += [str(name)] * len(flat)
        columns["sample"] += labels
        columns["top_eigenvalue"] += list(flat)
    return table_csv(columns)


def _band_rows(
    by_group: Mapping[str, Mapping[str, Any]], axis: str, keys: Sequence[str], x_name: str
) -> bytes:
    columns: dict[str, list[Any]] = {"group": [], x_name: []}
    for key in keys:
        for q in ("median", "q1", "q3"):
            columns[f"{key}_{q}"] = []
    for name, summary in by_group.items():
        x = np.asarray(summary[axis])  # keeps integer epochs and horizons integer
        columns["group"] += [str(name)] * len(x)
        columns[x_name] += list(x)
        for key in keys:
            for q in ("median", "q1", "q3"):
                columns[f"{key}_{q}"] += list(to_numpy(summary[key][q]))
    return table_csv(columns)


def training_curves_csv(curves_by_group: Mapping[str, Mapping[str, Any]]) -> bytes:
    """group, epoch, valid_smse_{median,q1,q3}, train_smse_{median,q1,q3}."""
    return _band_rows(curves_by_group, "epochs", ("valid_smse", "train_smse"), "epoch")


def rollout_csv(summary_by_group: Mapping[str, Mapping[str, Any]]) -> bytes:
    """group, horizon, one_step_{median,q1,q3}, rollout_{median,q1,q3}."""
    return _band_rows(summary_by_group, "horizons", ("one_step", "rollout"), "horizon")


def scores_csv(scores_by_group: Mapping[str, Scores]) -> bytes:
    """group, score, median, q1, q3, n_valid, n_censored, definition (one row per pair)."""
    score_rows(scores_by_group)  # same validation as the table
    columns: dict[str, list[Any]] = {
        k: [] for k in ("group", "score", "median", "q1", "q3", "n_valid", "n_censored")
    }
    columns["definition"] = []
    for group, scores in scores_by_group.items():
        for score in scores.as_list():
            columns["group"].append(str(group))
            columns["score"].append(score.name)
            columns["median"].append(score.median)
            columns["q1"].append(score.q1)
            columns["q3"].append(score.q3)
            columns["n_valid"].append(int(np.isfinite(score.values).sum()))
            columns["n_censored"].append(int(np.sum(score.censored)))
            columns["definition"].append(score.definition)
    return table_csv(columns)


def counterfactual_csv(epsilons: Any, rel_errors: Any) -> bytes:
    """epsilon, then the relative error (one column, or rel_error_{j} per trailing entry)."""
    eps, errors = to_numpy(epsilons), to_numpy(rel_errors)
    if errors.shape[:1] != eps.shape:
        raise RequestError(f"rel_errors has shape {errors.shape}; its rows index {eps.shape} ε")
    rows = errors.reshape(len(eps), -1)
    if rows.shape[1] == 1:
        return table_csv({"epsilon": eps, "rel_error": rows[:, 0]})
    return table_csv(
        {"epsilon": eps} | {f"rel_error_{j}": rows[:, j] for j in range(rows.shape[1])}
    )


# ------------------------------------------------------------------------------ npz -------


def panel_npz(arrays: Mapping[str, Any]) -> bytes:
    """Compressed npz bytes of named arrays, via results.npz_bytes (the result-file writer).

    Strings become fixed-width unicode, so np.load never needs pickle.
    """
    converted = {}
    for key, value in arrays.items():
        a = to_numpy(value) if hasattr(value, "detach") else np.asarray(value)
        if a.dtype == object:
            a = a.astype(str)
        converted[str(key)] = a
    return npz_bytes(converted)
