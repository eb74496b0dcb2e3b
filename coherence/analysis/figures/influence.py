"""Influence panels (METHOD.md §6.1–6.4, 6.6): two-time map, class transfer, lag and distance.

Inputs are the outputs of coherence.analysis.summaries (rows = response, columns =
perturbation). Heatmaps default to the colour range [0, √N] of theme.influence_range and
accept ``zrange`` so compare mode can put two groups on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from coherence.analysis.distance import DistanceCurve
from coherence.analysis.figures.theme import (
    DIVERGING,
    INFLUENCE_SYMBOL,
    as_array,
    axis_title,
    band_traces,
    cell_edges,
    fit_square_axes,
    group_color,
    heatmap_scale,
    log_axis,
    rgba,
    shared_zrange,
    square_width,
    styled,
)
from coherence.analysis.summaries import LagCurves
from coherence.errors import RequestError

LagGroups = LagCurves | Sequence[tuple[str, LagCurves]]


def _zrange(
    zrange: tuple[float, float] | None, n_examples: int, scale: str, values: np.ndarray
) -> tuple[float, float, list[list[Any]]]:
    """(zmin, zmax, colorscale): ``scale`` (theme.SCALES) over ``values``, or ``zrange``."""
    lo, hi, colorscale = heatmap_scale(scale, values, n_examples)
    if zrange is None:
        return lo, hi, colorscale
    lo, hi = (float(v) for v in zrange)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise RequestError(f"zrange={zrange!r}: give (low, high) finite with low < high")
    return lo, hi, colorscale


def _colorbar(label: str) -> dict[str, Any]:
    return {"title": {"text": label, "side": "top"}, "thickness": 14}


def two_time_heatmap(
    V: Any,
    times: Any,
    n_examples: int,
    *,
    title: str = "Two-time influence, intra-class",
    zrange: tuple[float, float] | None = None,
    value_label: str = INFLUENCE_SYMBOL,
    steps: Any = None,
    scale: str = "paper",
) -> go.Figure:
    """Read: x = perturbation time t_p, y = response time t_r (up); a bright diagonal only =
    each time step learns for itself (memorization), bright off-diagonal = learning transfers.

    V [T_r, T_p] (summaries.two_time_map), times [T] physical input times, N = T·C examples per
    batch fixing the default colour range [0, √N] (``scale``: theme.SCALES); ``steps`` [T]
    adds snapshot indices to the hover. The axes span exactly the cells, which stay square.
    """
    v = as_array(V, "V", 2)
    t = as_array(times, "times", 1)
    if v.shape != (len(t), len(t)):
        raise RequestError(
            f"V has shape {v.shape} but times has {len(t)} entries; V is [T_r, T_p] with T = "
            f"len(times) (summaries.two_time_map)"
        )
    if len(t) > 1 and not np.all(np.diff(t) > 0):
        raise RequestError(f"times must increase strictly; got {t.tolist()}")
    lo, hi, colorscale = _zrange(zrange, n_examples, scale, v)
    hover = f"t_p = %{{x:.3~g}}<br>t_r = %{{y:.3~g}}<br>{value_label} = %{{z:.3~g}}"
    text = None
    if steps is not None:
        k = as_array(steps, "steps", 1)
        if len(k) != len(t):
            raise RequestError(f"steps has {len(k)} entries, times {len(t)}; give one per time")
        # text[i][j]: row i = response step, column j = perturbation step
        text = [[f"step_p = {int(p)}, step_r = {int(r)}" for p in k] for r in k]
        hover += "<br>%{text}"
    trace = go.Heatmap(
        z=v,
        x=t,
        y=t,
        zmin=lo,
        zmax=hi,
        colorscale=colorscale,
        colorbar=_colorbar(value_label),
        text=text,
        hovertemplate=hover + "<extra></extra>",
    )
    fig = styled(go.Figure(trace), title, height=480)
    ticks = {"tickvals": t, "ticktext": [f"{x:.3g}" for x in t]} if len(t) <= 12 else {}
    fig.update_xaxes(title=axis_title("perturbation time t_p"), **ticks)
    fig.update_yaxes(title=axis_title("response time t_r"), **ticks)
    edges = cell_edges(t)
    fit_square_axes(fig, edges, edges)
    fig.update_layout(width=square_width(fig))
    return fig


def difference_heatmap(
    V_a: Any,
    V_b: Any,
    times: Any,
    labels: Sequence[str] = ("A", "B"),
    *,
    title: str = "",
    value_label: str = INFLUENCE_SYMBOL,
) -> go.Figure:
    """Read: the two-time map of the first group minus the second's (red: the first has more
    influence there, blue: less) on a symmetric diverging scale; a red diagonal means the
    first group is more time-local.

    V_a, V_b [T_r, T_p] on the same times [T] (summaries.two_time_map of each group).
    """
    a, b = as_array(V_a, "V_a", 2), as_array(V_b, "V_b", 2)
    if a.shape != b.shape:
        raise RequestError(f"V_a {a.shape} and V_b {b.shape} must share [T_r, T_p]")
    if len(labels) != 2:
        raise RequestError(f"labels={labels!r}: name the two groups")
    first, second = (str(x) for x in labels)
    diff = a - b
    lo, hi = shared_zrange(diff, symmetric=True)
    fig = two_time_heatmap(
        diff,
        times,
        1,
        title=title or f"Difference of two-time maps: {first} − {second}",
        zrange=(lo, hi),
        value_label=f"Δ{value_label}",
    )
    fig.update_traces(
        colorscale=DIVERGING,
        hovertemplate=(
            f"t_p = %{{x:.3~g}}<br>t_r = %{{y:.3~g}}<br>{value_label}({first}) − "
            f"{value_label}({second}) = %{{z:.3~g}}<extra></extra>"
        ),
        colorbar=_colorbar(f"Δ{value_label} ({first} − {second})"),
    )
    return fig.update_layout(width=square_width(fig, colorbar=160))  # its longer bar title


def class_transfer_heatmap(
    M: Any,
    classes: Sequence[str],
    n_examples: int,
    *,
    title: str = "Class transfer matrix",
    zrange: tuple[float, float] | None = None,
    value_label: str = INFLUENCE_SYMBOL,
    scale: str = "paper",
) -> go.Figure:
    """Read: row = response class, column = perturbation class; cell (r, p) is the mean Ĥ by
    which descent on class p moves class r. Off-diagonal cells near the diagonal's value mean
    learning transfers across initial-condition families.

    M [C_r, C_p] (summaries.class_transfer_matrix). Rows run top to bottom as in a matrix.
    """
    m = as_array(M, "M", 2)
    names = [str(c) for c in classes]
    if m.shape != (len(names), len(names)):
        raise RequestError(
            f"M has shape {m.shape} but {len(names)} classes were named; M is [C_r, C_p]"
        )
    lo, hi, colorscale = _zrange(zrange, n_examples, scale, m)
    trace = go.Heatmap(
        z=m,
        x=names,
        y=names,
        zmin=lo,
        zmax=hi,
        colorscale=colorscale,
        colorbar=_colorbar(f"mean {value_label}"),
        texttemplate="%{z:.2f}",
        hovertemplate=(
            "perturbation class = %{x}<br>response class = %{y}<br>"
            f"mean {value_label} = %{{z:.3~g}}<extra></extra>"
        ),
    )
    fig = styled(go.Figure(trace), title, height=420)
    fig.update_xaxes(title=axis_title("perturbation class (column)"), side="bottom")
    fig.update_yaxes(title=axis_title("response class (row)"))
    k = len(names)
    fit_square_axes(fig, (-0.5, k - 0.5), (-0.5, k - 0.5), reversed_y=True)  # rows top down
    longest = max((len(n) for n in names), default=0)  # class names as y tick labels
    return fig.update_layout(width=square_width(fig) + 7 * max(0, longest - 4))


def lag_groups(lag_curves: LagGroups, label: str = "") -> list[tuple[str, LagCurves]]:
    """One LagCurves or (label, LagCurves) pairs → a list of pairs (validated)."""
    if isinstance(lag_curves, LagCurves):
        return [(label, lag_curves)]
    groups = list(lag_curves)
    if not groups or not all(
        isinstance(g, tuple) and len(g) == 2 and isinstance(g[1], LagCurves) for g in groups
    ):
        raise RequestError(
            "lag_curves: pass one LagCurves or a non-empty list of (label, LagCurves) pairs"
        )
    return groups


# the lag chart's y axis: the whole curve, or the lags Δ ≠ 0 (the self-influence peak at
# Δ = 0, often several times the rest, squashed the tails where decay and transfer show)
LAG_AXES = {"whole": "whole curve", "tails": "Δ ≠ 0 (zoom to the tails)"}


def lag_curves_figure(
    lag_curves: LagGroups,
    *,
    label: str = "",
    title: str = "Influence vs time lag",
    value_label: str = INFLUENCE_SYMBOL,
    axis: str = "whole",
) -> go.Figure:
    """Read: mean Ĥ against lag Δ = t_r − t_p (steps); a peak at Δ = 0 that decays fast means
    local-in-time learning; inter-class (dashed) near intra-class (solid) means transfer.

    One LagCurves (``label`` names it) or several (label, LagCurves) groups overlaid, each
    with its median and Q1–Q3 band across seeds. Inter-class curves are skipped when
    undefined (a single class). ``axis``: ``LAG_AXES``; "tails" fits the y axis to the lags
    Δ ≠ 0 (bands included) and writes the Δ = 0 values above the plot.
    """
    if axis not in LAG_AXES:
        raise RequestError(f"axis={axis!r}: give one of {', '.join(LAG_AXES)}")
    groups = lag_groups(lag_curves, label)
    fig = go.Figure()
    for i, (name, curves) in enumerate(groups):
        color = group_color(i)
        prefix = f"{name}: " if name else ""
        for kind, band, dash in (("intra", curves.intra, "solid"), ("inter", curves.inter, "dash")):
            if not np.any(np.isfinite(band.median)):
                continue
            fig.add_traces(
                band_traces(
                    curves.lags,
                    band.median,
                    band.q1,
                    band.q3,
                    name=f"{prefix}{kind}-class",
                    color=color,
                    dash=dash,
                    value=value_label,
                    x_hover="Δ = t_r − t_p = %{x} steps",
                )
            )
    # a light zero line under the traces: a curve near 0 (inter-class) stays visible
    fig.add_hline(y=0, line={"color": "#b0b0b0", "width": 1}, layer="below")
    fig.add_vline(x=0, line={"color": "grey", "width": 1, "dash": "dot"})
    styled(fig, title, height=420)
    fig.update_xaxes(title=axis_title("lag Δ = t_r − t_p (steps)"), zeroline=False)
    # each seed's mean over the lag's pairs; the line is their median (the axis said "mean")
    fig.update_yaxes(title=axis_title(f"mean {value_label} at Δ (median over seeds)"))
    if axis == "tails":
        _zoom_to_tails(fig, groups)
    return fig


def _zoom_to_tails(fig: go.Figure, groups: list[tuple[str, LagCurves]]) -> None:
    """The y axis over the lags Δ ≠ 0 (bands and 0 included, 8 % margin), and the medians at
    Δ = 0, which may now lie off it, written above the plot."""
    tails, peaks = [], []
    for name, curves in groups:
        off = np.asarray(curves.lags) != 0
        for kind, band in (("intra", curves.intra), ("inter", curves.inter)):
            values = np.stack([band.median, band.q1, band.q3])
            tails.append(values[:, off].ravel())
            at_zero = np.asarray(band.median)[~off]
            if at_zero.size and np.isfinite(at_zero[0]):
                peaks.append(f"{name + ' ' if name else ''}{kind} {at_zero[0]:.3g}")
    shown = np.concatenate([*tails, [0.0]])
    shown = shown[np.isfinite(shown)]
    lo, hi = float(shown.min()), float(shown.max())
    margin = 0.08 * (hi - lo) or 1.0
    fig.update_yaxes(range=[lo - margin, hi + margin], autorange=False)
    if peaks:
        fig.add_annotation(
            text="at Δ = 0: " + ", ".join(peaks),
            x=0,
            xref="x",
            y=1,
            yref="paper",
            yanchor="bottom",
            showarrow=False,
            font={"size": 11, "color": "#555"},
        )


def distance_figure(
    curve: DistanceCurve,
    *,
    title: str = "Influence vs input distance",
    seed_labels: Sequence[str] | None = None,
    value_label: str = INFLUENCE_SYMBOL,
    label: str = "",
    color_index: int = 0,
) -> go.Figure:
    """Read: mean Ĥ of example pairs against how different their inputs are (log x); influence
    that stays high at large distance means the update generalizes beyond near-duplicates.

    Faint markers: each seed's overlapping-window means; line and band: median and Q1–Q3 over
    seeds of the GCV smoothing spline (summaries.influence_vs_distance).
    """
    centers = as_array(curve.centers, "curve.centers", 1)
    means = as_array(curve.window_means, "curve.window_means", 2)
    counts = np.asarray(curve.counts)
    seeds = (
        list(seed_labels) if seed_labels is not None else [f"seed {i}" for i in range(len(means))]
    )
    if len(seeds) != len(means):
        raise RequestError(f"seed_labels has {len(seeds)} names for {len(means)} seeds")
    color = group_color(color_index)
    prefix = f"{label}: " if label else ""
    fig = go.Figure()
    _add_window_means(fig, centers, means, counts, seeds, prefix, color, value_label)
    fig.add_traces(
        band_traces(
            centers,
            curve.band.median,
            curve.band.q1,
            curve.band.q3,
            name=f"{prefix}smoothed median",
            color=color,
            value=f"smoothed {value_label}",
            x_hover="d = %{x:.4g}",
        )
    )
    # a light zero line under the traces: a curve near 0 (inter-class) stays visible
    fig.add_hline(y=0, line={"color": "#b0b0b0", "width": 1}, layer="below")
    styled(fig, title, height=420)
    fig.update_xaxes(
        **log_axis(centers, title="input distance d(r, p) (normalized squared difference)")
    )
    fig.update_yaxes(title=axis_title(f"mean {value_label} (standardized influence)"))
    return fig


def _add_window_means(
    fig: go.Figure,
    centers: np.ndarray,
    means: np.ndarray,
    counts: np.ndarray,
    seeds: Sequence[str],
    prefix: str,
    color: str,
    value_label: str,
) -> None:
    """Faint markers: each seed's overlapping-window means, one legend entry for all seeds."""
    for i, (row, name) in enumerate(zip(means, seeds, strict=True)):
        fig.add_trace(
            go.Scatter(
                x=centers,
                y=row,
                mode="markers",
                name=f"{prefix}window means (per seed)",
                legendgroup=f"{prefix}windows",
                showlegend=i == 0,
                marker={"color": rgba(color, 0.35), "size": 6},
                customdata=counts[i],
                hovertemplate=(
                    f"{name}<br>d = %{{x:.4g}}<br>window mean {value_label} = %{{y:.4g}}<br>"
                    "pairs = %{customdata}<extra></extra>"
                ),
            )
        )


def with_click_targets(fig: go.Figure) -> go.Figure:
    """A copy of a two-time heatmap figure with an invisible marker on every cell centre that
    carries the cell's hover: plotly reports clicks on scatter points, not on heatmap cells,
    so this is what lets a click pick a cell (the dashboard's drill-down). The nearest
    centre answers anywhere in the plot (hoverdistance −1). For display only: exports keep
    the plain figure."""
    out = go.Figure(fig)
    for trace in list(out.data):
        if not isinstance(trace, go.Heatmap) or trace.x is None or trace.y is None:
            continue
        x, y = np.meshgrid(np.asarray(trace.x), np.asarray(trace.y))  # [T_r, T_p]
        z = np.asarray(trace.z, dtype=np.float64)
        text = np.asarray(trace.text, dtype=object) if trace.text is not None else None
        custom = np.stack([z.ravel()] + ([text.ravel()] if text is not None else []), axis=-1)
        hover = (
            (trace.hovertemplate or "")
            .replace("%{z", "%{customdata[0]")
            .replace("%{text}", "%{customdata[1]}")
        )
        out.add_trace(
            go.Scatter(
                x=x.ravel(),
                y=y.ravel(),
                mode="markers",
                marker={"size": 8, "opacity": 0},
                customdata=custom,
                hovertemplate=hover,
                showlegend=False,
                name="cells",
                xaxis=trace.xaxis,
                yaxis=trace.yaxis,
            )
        )
        trace.hoverinfo = "skip"
        trace.hovertemplate = None
    out.update_layout(hoverdistance=-1)
    return out


def _cell_bounds(centres: Any) -> np.ndarray:
    """Every cell boundary along one heatmap axis: halfway between centres, and the outer
    edges as plotly draws them (cell k spans bounds[k]..bounds[k + 1])."""
    c = np.asarray(centres, dtype=np.float64)
    lo, hi = cell_edges(c)
    return np.concatenate([[lo], (c[1:] + c[:-1]) / 2, [hi]])


def with_cell_marked(fig: go.Figure, i: int, j: int) -> go.Figure:
    """A copy of a two-time figure with cell (row i = t_r, column j = t_p) outlined on every
    map it holds (compare mode's two, each on its own axes): the cell the drill-down below
    shows. For display only, like the click targets."""
    out = go.Figure(fig)
    for trace in [t for t in out.data if isinstance(t, go.Heatmap) and t.x is not None]:
        x, y = np.asarray(trace.x, dtype=np.float64), np.asarray(trace.y, dtype=np.float64)
        if not (0 <= i < len(y) and 0 <= j < len(x)):
            continue
        xs, ys = _cell_bounds(x), _cell_bounds(y)
        out.add_shape(
            type="rect",
            xref=trace.xaxis or "x",  # the map's own axes, as the click targets use
            yref=trace.yaxis or "y",
            x0=xs[j],
            x1=xs[j + 1],
            y0=ys[i],
            y1=ys[i + 1],
            line={"color": "#ff00ff", "width": 2},
            fillcolor="rgba(0,0,0,0)",
            name="drill-down cell",
        )
    return out
