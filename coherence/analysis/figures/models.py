"""Model panels (METHOD.md §6.5, 6.7): NTK spectra, training curves, rollout vs one-step error.

Groups are dicts {label: data} (label = architecture or checkpoint group); each group keeps
its colour (theme.group_color by insertion order) in every panel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from coherence.analysis.figures.theme import (
    as_array,
    axis_title,
    band_traces,
    epoch_axis,
    group_color,
    log_axis,
    rgba,
    styled,
)
from coherence.errors import RequestError


def _groups(groups: Mapping[str, Any], what: str) -> list[tuple[str, Any]]:
    if not isinstance(groups, Mapping) or not groups:
        raise RequestError(f"{what}: pass a non-empty dict {{group label: data}}")
    return [(str(k), v) for k, v in groups.items()]


def top_eigenvalue_figure(
    groups: Mapping[str, Any],
    *,
    title: str = "Largest eigenvalue of the NTK metric η + λI",
) -> go.Figure:
    """Read: per architecture, λ_max(η + λI) of every (seed, batch) as a point (log y), with
    a box of the quartiles from 5 values on (fewer: a bar at their median, since three seeds
    make no quartiles); a larger λ_max means a stiffer Gauss–Newton metric, so proximal
    steps move predictions less.

    groups: {label: values of any shape, e.g. AnalysisResult.top_eigenvalues [S, B]}; NaN
    (not computed) is dropped, a group with no finite positive value is an error.
    """
    fig = go.Figure()
    drawn = []
    for i, (name, values) in enumerate(_groups(groups, "top_eigenvalue_figure")):
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v) & (v > 0)]
        if v.size == 0:
            raise RequestError(
                f"top_eigenvalue_figure: group {name!r} has no finite positive eigenvalue; "
                f"request the top eigenvalue (top_eigenvalue=True) when computing it"
            )
        drawn.append(v)
        if v.size < MIN_BOX_VALUES:
            _points_and_median(fig, name, v, group_color(i))
            continue
        fig.add_trace(
            go.Box(
                y=v,
                name=name,
                boxpoints="all",
                jitter=0.3,
                pointpos=0,
                marker={"color": group_color(i), "size": 6},
                line={"color": group_color(i)},
                fillcolor=rgba(group_color(i), 0.2),
                hovertemplate=f"{name}<br>λ_max = %{{y:.3g}}<extra></extra>",
            )
        )
    styled(fig, title, height=420)
    fig.update_xaxes(title=axis_title("architecture / checkpoint group"))
    fig.update_yaxes(**log_axis(*drawn, title="λ_max(η + λI) (log scale)"))
    fig.update_layout(showlegend=False)
    return fig


MIN_BOX_VALUES = 5  # fewer values: their points and median, no box of quartiles


def _points_and_median(fig: go.Figure, name: str, v: np.ndarray, color: str) -> None:
    """A few values as points at the group's place on the x axis, and a bar at their median."""
    hover = f"{name}<br>λ_max = %{{y:.3g}}<extra></extra>"
    fig.add_trace(
        go.Scatter(
            x=[name] * v.size,
            y=v,
            mode="markers",
            name=name,
            marker={"color": color, "size": 8},
            hovertemplate=hover,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[name],
            y=[float(np.median(v))],
            mode="markers",
            name=f"{name} median",
            marker={"symbol": "line-ew-open", "size": 44, "color": color, "line_width": 2},
            hovertemplate=f"{name}<br>median of {v.size}: %{{y:.3g}}<extra></extra>",
        )
    )


def _spectrum_rows(values: Any, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0 or a.size == 0:
        raise RequestError(f"spectrum {name!r} is empty; give eigenvalues [k] or [..., N]")
    rows = a.reshape(-1, a.shape[-1])
    return np.where(rows > 0, rows, np.nan)  # NaN padding and non-positive: not on a log axis


def series_names(
    series_labels: Mapping[str, Sequence[Any]] | None,
    name: str,
    count: int,
    default: Callable[[int], Any],
) -> list[Any]:
    """The names of group ``name``'s ``count`` flattened (seed, batch) rows: its entry of
    ``series_labels``, else ``default(j)`` per row; a list of another length is refused
    (the figure's hover and both CSVs read them alike)."""
    labels = list((series_labels or {}).get(name, ())) or [default(j) for j in range(count)]
    if len(labels) != count:
        raise RequestError(f"spectrum {name!r}: {len(labels)} series labels for {count} series")
    return labels


def spectrum_rows_with_values(rows: np.ndarray) -> np.ndarray:
    """The rows that hold at least one eigenvalue (a solve with none would blank the median)."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    return rows[np.isfinite(rows).any(axis=1)]


def spectrum_median(rows: np.ndarray) -> np.ndarray:
    """Per index k, the median of the rows' λ_k where every row that has eigenvalues has one
    (k up to the smallest rank), NaN beyond: past a row's rank the median of the rest rose
    above the descending spectra it summarizes (7524 → 7801 where one seed of three
    stopped). Rows without any eigenvalue are left out (``spectrum_rows_with_values``)."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    median = np.full(rows.shape[1], np.nan)
    held = spectrum_rows_with_values(rows)
    if held.size:
        every = np.isfinite(held).all(axis=0)
        median[every] = np.median(held[:, every], axis=0)
    return median


def subspace_spectrum_figure(
    spectra: Mapping[str, Any],
    *,
    title: str = "Subspace NTK spectrum eig(QᵀηQ)",
    series_labels: Mapping[str, Sequence[str]] | None = None,
) -> go.Figure:
    """Read: eigenvalue λ_k of the subspace metric QᵀηQ against its index k (log y); a fast
    drop means a few directions dominate the metric (low effective rank).

    spectra: {label: eigenvalues [k]} or {label: per (seed, batch) arrays [..., N]}, e.g.
    AnalysisResult.subspace_spectra [S, B, N] (NaN-padded). Several rows draw faint lines plus
    their median per index up to the smallest rank among them (``spectrum_median``); values
    ≤ 0 are not drawn (log axis). ``series_labels``: {label: one name per flattened row} for
    the faint lines' hover (default 'series j').
    """
    fig = go.Figure()
    drawn = []
    for i, (name, values) in enumerate(_groups(spectra, "subspace_spectrum_figure")):
        rows = _spectrum_rows(values, name)
        drawn.append(rows)
        if not np.any(np.isfinite(rows)):
            raise RequestError(f"spectrum {name!r} has no positive eigenvalue to draw")
        color = group_color(i)
        index = np.arange(1, rows.shape[1] + 1)
        hover = f"{name}<br>k = %{{x}}<br>λ_k = %{{y:.3g}}"
        labels = series_names(series_labels, name, len(rows), lambda j: f"series {j}")
        if len(rows) > 1:
            for j, row in enumerate(rows):
                fig.add_trace(
                    go.Scatter(
                        x=index,
                        y=row,
                        mode="lines",
                        name=f"{name} (each seed, batch)",
                        legendgroup=name,
                        showlegend=j == 0,
                        line={"color": rgba(color, 0.25), "width": 1},
                        hovertemplate=hover + f" ({labels[j]})<extra></extra>",
                    )
                )
        median = spectrum_median(rows)
        held = len(spectrum_rows_with_values(rows))
        of = f" (median of {held}" + (f" of {len(rows)})" if held < len(rows) else ")")
        of = of if len(rows) > 1 else ""
        fig.add_trace(
            go.Scatter(
                x=index,
                y=median,
                mode="lines+markers",
                name=name if len(rows) == 1 else f"{name} median",
                legendgroup=name,
                line={"color": color, "width": 2},
                marker={"size": 5},
                hovertemplate=hover + of + "<extra></extra>",
            )
        )
    styled(fig, title, height=420)
    last = max(int(np.flatnonzero(np.isfinite(r).any(axis=0)).max()) + 1 for r in drawn)
    fig.update_xaxes(  # fitted to the indices drawn (NaN padding is not data)
        title=axis_title("eigenvalue index k (descending)"), range=[0.5, last + 0.5]
    )
    fig.update_yaxes(**log_axis(*drawn, title="eigenvalue λ_k of QᵀηQ (log scale)"))
    return fig


def _band(summary: Mapping[str, Any], key: str, where: str) -> tuple[np.ndarray, ...]:
    try:
        part = summary[key]
        return tuple(np.asarray(part[q], dtype=np.float64) for q in ("median", "q1", "q3"))
    except (KeyError, TypeError) as error:
        raise RequestError(
            f"{where}: missing '{key}' {{median, q1, q3}} ({error}); pass the summaries.py output"
        ) from error


def training_curves_figure(
    curves_by_group: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "Training curves (SMSE)",
) -> go.Figure:
    """Read: validation SMSE (solid) and train SMSE (dashed) per epoch, median and Q1–Q3 over
    seeds (log y); a validation curve that flattens while train keeps falling is overfitting.

    curves_by_group: {label: summaries.training_curves(histories)}.
    """
    fig = go.Figure()
    drawn, all_epochs = [], []
    for i, (name, curves) in enumerate(_groups(curves_by_group, "training_curves_figure")):
        epochs = as_array(curves.get("epochs"), f"{name} epochs", 1)
        all_epochs.append(epochs)
        for key, kind, dash, alpha in (
            ("valid_smse", "validation", "solid", 0.2),
            ("train_smse", "train", "dash", 0.1),
        ):
            median, q1, q3 = _band(curves, key, f"training curves {name!r}")
            drawn += [median, q1, q3]
            fig.add_traces(
                band_traces(
                    epochs,
                    median,
                    q1,
                    q3,
                    name=f"{name} {kind}",
                    color=group_color(i),
                    dash=dash,
                    value=f"{kind} SMSE",
                    x_hover="epoch %{x}",
                    band_alpha=alpha,
                )
            )
    styled(fig, title, height=420)
    fig.update_xaxes(title=axis_title("epoch"), **epoch_axis(*all_epochs))
    fig.update_yaxes(**log_axis(*drawn, title="SMSE (scaled MSE, log scale)"))
    return fig


def rollout_figure(
    summary_by_group: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "One-step vs rollout error",
    trained_horizons: Mapping[str, int] | None = None,
) -> go.Figure:
    """Read: SMSE against horizon h, teacher-forced one-step (dashed) vs autoregressive rollout
    (solid), median and Q1–Q3 over every rollout, seeds, classes and test trajectories
    pooled (log y); a low one-step error with a rollout error that grows fast means one-step
    accuracy does not predict long-horizon reliability.
    The dotted line marks the last snapshot the models were trained to predict: beyond it the
    states lie later in time than any training pair.

    summary_by_group: {label: summaries.rollout_summary(one_step, rollout)};
    trained_horizons: {label: transitions per trajectory the group was trained on}.
    """
    fig = go.Figure()
    drawn = []
    for i, (name, summary) in enumerate(_groups(summary_by_group, "rollout_figure")):
        horizons = as_array(summary.get("horizons"), f"{name} horizons", 1)
        for key, kind, dash in (("rollout", "rollout", "solid"), ("one_step", "one-step", "dash")):
            median, q1, q3 = _band(summary, key, f"rollout summary {name!r}")
            drawn += [median, q1, q3]
            fig.add_traces(
                band_traces(
                    horizons,
                    median,
                    q1,
                    q3,
                    name=f"{name} {kind}",
                    color=group_color(i),
                    dash=dash,
                    value=f"{kind} SMSE",
                    x_hover="horizon h = %{x} steps",
                )
            )
    styled(fig, title, height=420)
    longest = max((len(s.get("horizons", ())) for s in summary_by_group.values()), default=0)
    horizons = np.concatenate(
        [np.asarray(s.get("horizons", ()), dtype=np.float64) for s in summary_by_group.values()]
    )
    fig.update_xaxes(
        title=axis_title("horizon h (steps after the initial state)"),
        dtick=1 if longest <= 25 else None,  # whole steps while they fit
        range=[horizons.min() - 0.5, horizons.max() + 0.5] if horizons.size else None,
    )
    fig.update_yaxes(**log_axis(*drawn, title="SMSE at horizon h (log scale)"))
    _mark_trained_horizons(fig, trained_horizons or {}, list(summary_by_group))
    return fig


def _mark_trained_horizons(fig: go.Figure, horizons: Mapping[str, int], groups: list[str]) -> None:
    """A dotted line at each distinct trained horizon, named in the title's colour or, where
    groups differ, in each group's colour (one line per horizon, naming its groups)."""
    by_horizon: dict[int, list[str]] = {}
    for name in groups:
        if name in horizons:
            by_horizon.setdefault(int(horizons[name]), []).append(name)
    # one gray line only where every group is known to share it; else each names its groups
    shared = len(by_horizon) == 1 and sum(map(len, by_horizon.values())) == len(groups)
    lo, hi = fig.layout.xaxis.range or (None, None)
    for horizon, names in sorted(by_horizon.items()):
        # the label on the line's wider side: left of a line near the axis's start, it ran
        # over the y axis's tick labels (a walkthrough: 'trained up to h = 2' over '50')
        left = lo is None or horizon - lo > (hi - lo) / 2
        # #555: 7.5:1 on white, where plotly's gray (#808080) read 3.9:1 at 13 px
        color = "#555555" if shared else group_color(groups.index(names[0]))
        label = f"trained up to h = {horizon}" + ("" if shared else f" ({', '.join(names)})")
        fig.add_vline(
            x=horizon,
            line={"dash": "dot", "color": color, "width": 2},
            layer="below",
            annotation={"text": label, "font": {"color": color}},
            annotation_position="top left" if left else "top right",
        )
