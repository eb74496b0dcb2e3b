"""Validation and score panels (METHOD.md §7): the counterfactual check and the score table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from coherence.analysis.figures.theme import (
    as_array,
    axis_title,
    band_traces,
    group_color,
    log_axis,
    styled,
)
from coherence.analysis.scores import Score, Scores
from coherence.analysis.verdict import format_score, quartile_band
from coherence.errors import RequestError


def _smallest_eps_pairs(values: Any, name: str, eps: np.ndarray) -> np.ndarray:
    """1-D: the pairs at the smallest ε; ≥ 2-D: ε on the leading axis, pick argmin ε."""
    a = as_array(values, name, (1, 2, 3, 4))
    if a.ndim == 1:
        return a
    if a.shape[0] != len(eps):
        raise RequestError(
            f"{name} has shape {a.shape}: its leading axis must index the {len(eps)} epsilons "
            f"(or pass a 1-D array of the pairs at the smallest ε)"
        )
    return a[int(np.argmin(eps))].ravel()


def counterfactual_figures(
    epsilons: Any,
    predicted: Any,
    measured: Any,
    rel_errors: Any,
    *,
    title: str = "Counterfactual check",
) -> tuple[go.Figure, go.Figure]:
    """Read: (a) measured vs predicted change of ⟨r_A(r), ŷ_r⟩ at the smallest ε (points on
    y = x validate the estimator); (b) relative error ‖measured − predicted‖ / ‖predicted‖
    (norms over the responses r) vs ε, log-log: it must fall with ε along the slope-1
    reference (first-order Taylor remainder) until round-off takes over.

    epsilons [E]; predicted, measured: [E, ...] (ε leading; pairs (r, p) after) or 1-D, the
    pairs at the smallest ε; predicted = −ε·D·H[r, p]. rel_errors [E] or [E, ...] (median and
    Q1–Q3 over the trailing entries). Non-positive errors are not drawn (log axis).
    """
    eps = as_array(epsilons, "epsilons", 1)
    if not np.all(np.isfinite(eps) & (eps > 0)):
        raise RequestError(f"epsilons must be finite and positive; got {eps.tolist()}")
    x = _smallest_eps_pairs(predicted, "predicted", eps)
    y = _smallest_eps_pairs(measured, "measured", eps)
    if x.shape != y.shape:
        raise RequestError(f"predicted {x.shape} and measured {y.shape} must pair up one to one")
    smallest = float(eps.min())  # (a) and (b): the caption names the charts so
    scatter = _pairs_scatter(x, y, f"(a) {title}: predicted vs measured, ε = {smallest:.1e}")
    curve = _error_curve(eps, rel_errors, f"(b) {title}: relative error vs ε")
    return scatter, curve


def _pairs_scatter(x: np.ndarray, y: np.ndarray, title: str) -> go.Figure:
    """Panel (a): measured vs predicted change per pair, with the y = x line of exact order 1."""
    scatter = go.Figure(
        go.Scatter(
            x=x,
            y=y,
            mode="markers",
            name="pairs (r, p)",
            marker={"color": group_color(0), "size": 7, "opacity": 0.8},
            customdata=np.arange(len(x)),
            hovertemplate=(
                "pair %{customdata}<br>predicted −εD·H = %{x:.4g}<br>measured Δ = %{y:.4g}"
                "<extra></extra>"
            ),
        )
    )
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    scatter.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            name="y = x (exact first order)",
            line={"color": "black", "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    _legend_above(styled(scatter, title, height=440))
    scatter.update_xaxes(title=axis_title("predicted change −ε·D·H[r, p]"))
    scatter.update_yaxes(
        title=axis_title("measured change of ⟨r_A(r), ŷ_r⟩"), scaleanchor="x", constrain="domain"
    )
    return scatter


def _error_curve(eps: np.ndarray, rel_errors: Any, title: str) -> go.Figure:
    """Panel (b): relative error vs ε on log-log axes (a median band over trailing entries)
    with the slope-1 reference through the largest ε that has a finite error."""
    errors = as_array(rel_errors, "rel_errors", (1, 2, 3))
    if errors.shape[0] != len(eps):
        raise RequestError(f"rel_errors has {errors.shape[0]} rows for {len(eps)} epsilons")
    rows = np.where(errors > 0, errors, np.nan).reshape(len(eps), -1)  # (E, K)
    order = np.argsort(eps)
    eps_sorted, rows = eps[order], rows[order]
    curve = go.Figure()
    median, drawn = _add_error_traces(curve, eps_sorted, rows)
    anchor = np.flatnonzero(np.isfinite(median))
    reference = np.empty(0)
    if anchor.size:
        k = anchor[-1]  # the largest ε with a finite error: slope-1 line through it
        reference = median[k] * eps_sorted / eps_sorted[k]
        curve.add_trace(
            go.Scatter(
                x=eps_sorted,
                y=reference,
                mode="lines",
                name="slope 1 (error ∝ ε)",
                line={"color": "grey", "dash": "dot", "width": 1},
                hoverinfo="skip",
            )
        )
    _legend_above(styled(curve, title, height=440))
    # powers of ten only: the chart is half a page wide, and 1, 2, 5 × 10ᵏ over the usual
    # four decades of ε wrote eleven tilted labels into each other
    curve.update_xaxes(**log_axis(eps_sorted, title="step size ε (log scale)", dense_decades=2))
    curve.update_yaxes(
        **log_axis(drawn, reference, title="relative error (log scale)", dense_decades=2)
    )
    return curve


def _legend_above(fig: go.Figure) -> go.Figure:
    """The legend in a row between title and plot: at the side it took a third of a
    half-page chart's width (the square scatter shrank to fit what was left)."""
    return fig.update_layout(
        legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom"},
        margin={"t": 90},
    )


def _add_error_traces(
    curve: go.Figure, eps_sorted: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One line when each ε has one error, else the median with its Q1–Q3 band; returns the
    median per ε (E,) and every value drawn (the axis spans those, not the pairs outside the
    band)."""
    if rows.shape[1] == 1:
        median = rows[:, 0]
        curve.add_trace(
            go.Scatter(
                x=eps_sorted,
                y=median,
                mode="lines+markers",
                name="relative error",
                line={"color": group_color(0), "width": 2},
                hovertemplate="ε = %{x:.3g}<br>relative error = %{y:.3g}<extra></extra>",
            )
        )
        return median, median
    with np.errstate(all="ignore"):
        q1, median, q3 = np.nanpercentile(rows, [25, 50, 75], axis=1)
    curve.add_traces(
        band_traces(
            eps_sorted,
            median,
            q1,
            q3,
            name="relative error",
            color=group_color(0),
            value="relative error",
            x_hover="ε = %{x:.3g}",
        )
    )
    return median, np.concatenate([q1, median, q3])


SCORE_TITLES = {
    "diagonal_dominance": "diagonal dominance",
    "decay_length": "lag decay length (steps)",
    "inter_intra_ratio": "inter / intra class ratio",
    "toeplitz_defect": "Toeplitz defect",
    "dominant_share": "dominant eigenvalue share",
}


def score_title(name: str) -> str:
    """A score's name for readers ('diagonal dominance'), not its id ('diagonal_dominance')."""
    return SCORE_TITLES.get(name, name.replace("_", " "))


def score_cell(score: Score, peers: Sequence[Score | None] = ()) -> str:
    """'median [Q1, Q3]' across seeds (``Score.summarized``), the three with the same
    decimals and as wide as the ``peers``' (the other groups': the page's header writes them
    so, and a table that did not read 0.04 where the header said 0.038), with the count of
    censored (seed, batch) values."""
    if not math.isfinite(score.median):
        return "undefined"
    text = f"{format_score(score, peers)} {quartile_band(score, peers)}"
    censored = int(np.sum(score.censored))
    if censored:
        text += f" ({censored} of {score.censored.size} lower bounds)"
    return text


def score_rows(scores_by_group: Mapping[str, Scores]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the score table: score, definition, one 'median [Q1, Q3]' per group.

    Scores missing in a group (no spectra → no dominant_share) show '—'.
    """
    if not isinstance(scores_by_group, Mapping) or not scores_by_group:
        raise RequestError("scores_table: pass a non-empty dict {group label: Scores}")
    by_group = {str(k): {s.name: s for s in v.as_list()} for k, v in scores_by_group.items()}
    names: list[str] = []
    definitions: dict[str, str] = {}
    for scores in by_group.values():
        for name, score in scores.items():
            if name not in definitions:
                names.append(name)
                definitions[name] = score.definition
    header = ["score", "definition", *(f"{g}: median [Q1, Q3]" for g in by_group)]
    groups = list(by_group.values())

    def cell(name: str, i: int) -> str:
        if name not in groups[i]:
            return "—"
        peers = [g.get(name) for j, g in enumerate(groups) if j != i]
        return score_cell(groups[i][name], peers)

    rows = [
        [score_title(name), definitions[name], *(cell(name, i) for i in range(len(groups)))]
        for name in names
    ]
    return header, rows


def scores_table(
    scores_by_group: Mapping[str, Scores], *, title: str = "Coherence scores"
) -> go.Figure:
    """Read: each §7 score's median and interquartile range across seeds (each seed's
    batches averaged) per group, beside its definition; compare groups across a row."""
    header, rows = score_rows(scores_by_group)
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in header]
    widths = [1.2, 3.0, *([1.6] * (len(header) - 2))]
    table = go.Table(
        columnwidth=widths,
        header={"values": [f"<b>{h}</b>" for h in header], "align": "left", "height": 30},
        cells={"values": columns, "align": "left", "height": 28},
    )
    fig = styled(go.Figure(table), title, height=120 + 60 * max(1, len(rows)))
    return fig
