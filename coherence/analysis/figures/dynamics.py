"""Training dynamics and sensitivity figures (METHOD.md §7: influence across checkpoints, and
the sensitivity of H to λ and the solver). Pure builders: data → go.Figure, no streamlit.

Inputs come from ``coherence.analysis.trends``: {group label: {score name: Trend}}.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from coherence.analysis.diagnostics import paper_notation
from coherence.analysis.figures.theme import (
    COLORSCALE,
    DIVERGING,
    axis_title,
    band_traces,
    epoch_axis,
    group_color,
    influence_range,
    log_axis,
    square_width,
    styled,
)
from coherence.analysis.trends import TREND_SCORES, Agreement, Trend
from coherence.errors import RequestError
from coherence.wording import plural

# line styles of the estimator settings (colour is the group's in compare mode); "dash" is
# kept for the flat lines of estimators that ignore λ
ESTIMATOR_DASHES = ("solid", "dot", "dashdot", "longdash")
# and marker symbols: a setting cached at one λ is a lone marker, whose line style is unseen,
# so each setting of the sweep's table gets a symbol of its own
ESTIMATOR_SYMBOLS = (
    "circle",
    "diamond",
    "square",
    "triangle-up",
    "x",
    "star",
    "cross",
    "hexagon",
    "triangle-down",
    "pentagon",
    "hourglass",
    "bowtie",
)


def setting_style(setting: str, order: Sequence[str] = ()) -> tuple[str, str]:
    """(line dash, marker symbol) of one estimator setting, the same in every view and group:
    a setting of ``order`` (the sweep's table) by its place there, so the table's settings
    never share a symbol; any other (a sidebar's depth) an open symbol picked by its name.
    Styles by place among the settings drawn changed with what was cached, and two settings
    shared a symbol once more than five were drawn."""
    if setting in order:
        n = list(order).index(setting)
        symbol = ESTIMATOR_SYMBOLS[n % len(ESTIMATOR_SYMBOLS)]
    else:
        n = zlib.crc32(setting.encode())
        symbol = ESTIMATOR_SYMBOLS[n % len(ESTIMATOR_SYMBOLS)] + "-open"
    return ESTIMATOR_DASHES[n % len(ESTIMATOR_DASHES)], symbol


def _grid(n_panels: int) -> tuple[int, int]:
    cols = 2 if n_panels > 1 else 1
    return math.ceil(n_panels / cols), cols


def dynamics_figure(
    trends_by_group: Mapping[str, Mapping[str, Trend]],
    valid_by_group: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    colors: Mapping[str, int] | None = None,
    dashed: Sequence[str] = (),
    title: str = "Scores across training",
) -> go.Figure:
    """Read: each coherence score against the training epoch (median over seeds, Q1–Q3 band;
    each seed's score is first averaged over its batches); the last panel is the validation
    SMSE on the same epoch axis. A diagonal dominance that rises while the validation error
    falls means the model improves by memorizing time steps; a decay length or inter/intra
    ratio that grows means it learns transferable dynamics. A triangle marks a median that is
    only a lower bound (a decay length censored at the window).

    trends_by_group: {label: {score: Trend}}; valid_by_group: {label:
    summaries.training_curves(histories)} (its ``epochs`` and ``valid_smse`` band);
    ``colors``: {label: colour index} (default: one per line); ``dashed``: labels drawn dashed
    (the same group at another λ keeps the group's colour).
    """
    if not trends_by_group:
        raise RequestError("dynamics_figure needs at least one group of trends")
    names = [(n, t) for n, t in TREND_SCORES if any(n in g for g in trends_by_group.values())]
    panels = [*names, ("valid_smse", "Validation SMSE")] if valid_by_group else names
    rows, cols = _grid(len(panels))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[t for _, t in panels],
        vertical_spacing=0.08,
        horizontal_spacing=0.1,
    )
    for g, (label, trends) in enumerate(trends_by_group.items()):
        color = group_color(colors[label] if colors is not None else g)
        dash = "dash" if label in dashed else "solid"
        for p, (name, panel_title) in enumerate(panels):
            row, col = p // cols + 1, p % cols + 1
            notes = None
            if name == "valid_smse":
                curves = (valid_by_group or {}).get(label)
                if not curves:
                    continue
                x = np.asarray(curves["epochs"], dtype=np.float64)
                band = curves["valid_smse"]
                median, q1, q3 = (
                    np.asarray(band[q], dtype=np.float64) for q in ("median", "q1", "q3")
                )
                if dashed:  # drawn once beside lines at two λ: it belongs to neither
                    notes = ["training's validation error, independent of λ"] * len(x)
            elif name in trends:
                trend = trends[name]
                x, median, q1, q3 = trend.x, trend.median, trend.q1, trend.q3
                notes = trend.notes()
            else:
                continue
            value = "validation SMSE" if name == "valid_smse" else panel_title
            _add_band(
                fig,
                (row, col),
                (x, median, q1, q3),
                label=label,
                color=color,
                dash=dash,
                value=value,
                x_hover="epoch %{x}",
                notes=notes,
                legend=p == 0,
            )
    styled(fig, title, height=260 * rows + 60)
    fig.update_xaxes(showticklabels=True)  # every panel readable on its own
    fig.update_xaxes(title=axis_title("epoch"), row=rows)
    axis = epoch_axis(
        *[t.x for g in trends_by_group.values() for t in g.values()],
        *[c["epochs"] for c in (valid_by_group or {}).values()],
    )
    if axis:  # one epoch axis for every panel, whole epochs only (no "11.5")
        fig.update_xaxes(**axis)
        for name in [n for n in fig.layout if n.startswith("xaxis") and n != "xaxis"]:
            fig.layout[name].matches = "x"  # the others follow the first
    if valid_by_group:
        p = len(panels) - 1
        values = [
            np.asarray(c["valid_smse"][q], dtype=np.float64)
            for c in valid_by_group.values()
            for q in ("median", "q1", "q3")
        ]
        axis = log_axis(*values, title="validation SMSE")
        axis.pop("title")  # the subplot's title names it
        fig.update_yaxes(axis, row=p // cols + 1, col=p % cols + 1)
    _log_eigenvalue_axis(fig, trends_by_group.values(), names, cols)
    floor_y_spans(fig)
    _cap_shares(fig, names, cols)
    return fig


def _log_eigenvalue_axis(
    fig: go.Figure,
    trends: Iterable[Mapping[str, Trend]],
    names: Sequence[tuple[str, str]],
    cols: int,
) -> None:
    """The top-eigenvalue panel on a labelled log axis (values span decades over training
    and λ; a linear axis wrote them as '2.9M')."""
    where = [p for p, (name, _) in enumerate(names) if name == "top_eigenvalue"]
    values = [
        np.concatenate([t["top_eigenvalue"].q1, t["top_eigenvalue"].q3])
        for t in trends
        if "top_eigenvalue" in t
    ]
    if where and values:
        # a near-constant eigenvalue (λ-free, or one setting alone) framed to its 8th digit
        # (ticks "2.82527635×10⁵") made a flat line read as a jump: frame ±10% at least
        every = np.concatenate(values)
        every = every[np.isfinite(every) & (every > 0)]
        if every.size and every.max() < MIN_EIGEN_RATIO * every.min():
            middle = math.sqrt(every.min() * every.max())
            values.append(np.array([middle / 1.1, middle * 1.1]))
        axis = log_axis(*values, title="")
        axis.pop("title")  # the subplot's title names it
        fig.update_yaxes(axis, row=where[0] // cols + 1, col=where[0] % cols + 1)


MIN_RELATIVE_SPAN = 0.2  # a linear panel spans at least this share of its values' magnitude
MIN_EIGEN_RATIO = 1.2  # and the top eigenvalue's log panel at least this ratio


SHARES = ("diagonal_dominance", "dominant_share")  # scores that never exceed 1


def _cap_shares(fig: go.Figure, names: Sequence[tuple[str, str]], cols: int) -> None:
    """Keep the panels of scores bounded by 1 at or below 1: autorange (or a floored span)
    drew the diagonal dominance's axis to 1.05, as if the score could pass 1."""
    for p, (name, _) in enumerate(names):
        if name not in SHARES:
            continue
        axis = fig.get_subplot(p // cols + 1, p % cols + 1).yaxis
        axis.autorangeoptions = {"maxallowed": 1.0}
        if axis.range is not None and axis.range[1] > 1:
            low, high = axis.range
            axis.range = [low - (high - 1), 1.0]


def floor_y_spans(fig: go.Figure, relative: float = MIN_RELATIVE_SPAN) -> None:
    """Give each linear panel a y range of at least ``relative`` × |its values' middle|.

    Why: autorange fits a near-constant score to the whole panel, so a share that moved
    0.46 → 0.47 across λ (or did not move, its Q1–Q3 band filling the panel) looked like a
    large change. Panels whose values already span more, and log axes, keep autorange."""
    values: dict[str, list[np.ndarray]] = {}
    for trace in fig.data:
        if trace.y is None:
            continue
        y = np.asarray(trace.y, dtype=np.float64)
        parts = [y]
        bars = trace.error_y
        if bars is not None and bars.array is not None:
            parts += [y + np.asarray(bars.array), y - np.asarray(bars.arrayminus)]
        values.setdefault(trace.yaxis or "y", []).extend(parts)
    for axis, parts in values.items():
        name = "yaxis" + axis[1:]
        if fig.layout[name].type == "log":
            continue
        y = np.concatenate(parts)
        y = y[np.isfinite(y)]
        if not y.size:
            continue
        lo, hi = float(y.min()), float(y.max())
        middle, floor = (lo + hi) / 2, relative * abs((lo + hi) / 2)
        if hi - lo < floor:
            fig.layout[name].range = [middle - floor / 2, middle + floor / 2]


def epoch_heatmaps(
    maps: Sequence[np.ndarray],
    epochs: Sequence[float],
    n_examples: int,
    *,
    times: Sequence[float] | None = None,
    title: str = "Two-time map across epochs",
) -> go.Figure:
    """Read: the intra-class two-time map V[t_r, t_p] (x = perturbation time, y = response
    time) at each snapshot epoch, on one colour scale [0, √N]: a ridge that narrows over
    training means influence becomes local in time (memorization); one that widens means
    transfer across time steps."""
    if len(maps) != len(epochs) or not maps:
        raise RequestError("epoch_heatmaps needs one map per epoch and at least one")
    lo, hi = influence_range(n_examples)
    n = len(maps)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"epoch {e:g}" for e in epochs],
        horizontal_spacing=0.04,
        vertical_spacing=0.12,
    )
    for i, v in enumerate(maps):
        v = np.asarray(v, dtype=np.float64)
        axis = np.asarray(times if times is not None else np.arange(v.shape[0]), dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=v,
                x=axis,
                y=axis,
                zmin=lo,
                zmax=hi,
                colorscale=COLORSCALE,
                showscale=i == 0,
                colorbar={"title": {"text": "Ĥ"}},
                hovertemplate="t_p %{x}<br>t_r %{y}<br>Ĥ %{z:.3g}<extra>epoch "
                f"{epochs[i]:g}</extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    styled(fig, title, height=240 * rows + 80)
    for i in range(n):  # square cells: one time step is as long on both axes
        suffix = "" if i == 0 else str(i + 1)
        fig.update_yaxes(  # time ticks on the first column only: at 1024 px a map's
            # labels touched its left neighbour
            scaleanchor=f"x{suffix}",
            constrain="domain",
            showticklabels=i % cols == 0,
            row=i // cols + 1,
            col=i % cols + 1,
        )
        fig.update_xaxes(constrain="domain", row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title=axis_title("perturbation time t_p"), row=rows)
    fig.update_yaxes(title=axis_title("response time t_r"), col=1)
    if n == 1:  # one map: drawn at its own width, beside its colour bar (not across the tab)
        fig.update_layout(width=square_width(fig))
    return fig


def sensitivity_figure(
    trends_by_series: Mapping[str, Mapping[str, Trend]],
    *,
    paper_damping: float,
    flat: Sequence[str] = (),
    x_span: tuple[float, float] | None = None,
    selected_damping: float | None = None,
    colors: Mapping[str, int] | None = None,
    estimators: Mapping[str, str] | None = None,
    order: Sequence[str] = (),
    unconverged: Mapping[str, Sequence[float]] | None = None,
    title: str = "Scores against λ",
) -> go.Figure:
    """Read: each score against the damping λ (log axis) per estimator, median over seeds
    with the Q1–Q3 band; the dotted vertical line is the paper's λ (a dashed one, the
    sidebar's λ where it differs). Flat (dashed) lines across the whole axis are estimators
    that ignore λ (euclidean; their top eigenvalue, of η + λI, is a point where computed).
    Where the curves of two estimators sit apart, the conclusion depends on the solver;
    where a curve bends near the paper's λ, on λ.

    trends_by_series: {series label (e.g. "UNet · subspace"): {score: Trend}}; ``flat``:
    labels computed at one λ and drawn as horizontal lines across the axis; ``x_span``: the
    λ range the axis covers at least (the sweep's grid, so missing settings show as gaps);
    ``colors``: {label: colour index} (compare mode: the group's colour, as on the other
    panels); default: one colour per series. ``estimators``: {label: estimator setting}: one
    line style and marker symbol per setting, the same in every group (default: per label);
    ``order``: every setting of the sweep's table, which fixes each one's style
    (``setting_style``) whatever subset is drawn.
    ``unconverged``: {label: the λ values whose cg solve stopped at its cap}: those points
    get a red ring, so an inaccurate point is told apart on the chart itself.
    """
    if not trends_by_series:
        raise RequestError("sensitivity_figure needs at least one series")
    names = [(n, t) for n, t in TREND_SCORES if any(n in s for s in trends_by_series.values())]
    rows, cols = _grid(len(names))
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[t for _, t in names], vertical_spacing=0.1
    )
    xs = [t.x for label, s in trends_by_series.items() if label not in flat for t in s.values()]
    span = (
        (float(min(x.min() for x in xs)), float(max(x.max() for x in xs)))
        if xs
        else (paper_damping, paper_damping)
    )
    # whole decades around the data and the paper's λ: one point still gets a readable axis
    wanted = x_span or span
    marks = [paper_damping] + ([selected_damping] if selected_damping is not None else [])
    low = math.floor(math.log10(min(span[0], wanted[0], *marks))) - 0.5
    high = math.ceil(math.log10(max(span[1], wanted[1], *marks))) + 0.5
    setting_of = dict(estimators or {})
    for i, (label, trends) in enumerate(trends_by_series.items()):
        flat_span = (10.0**low, 10.0**high) if label in flat else None
        color = colors[label] if colors is not None else i
        dash, symbol = setting_style(setting_of.get(label, label), order)
        dash = "dash" if label in flat else dash
        _add_series(
            fig,
            trends,
            names,
            cols,
            label=label,
            color=group_color(color),
            dash=dash,
            symbol=symbol,
            flat_span=flat_span,
        )
    _ring_unconverged(fig, trends_by_series, dict(unconverged or {}), names, cols)
    _mark_bounds(fig, trends_by_series, names, cols)
    _mark_damping(fig, paper_damping, len(names), cols, dash="dot")
    note = f"dotted line: the paper's λ = {paper_damping:g}"
    if selected_damping is not None and not math.isclose(selected_damping, paper_damping):
        _mark_damping(fig, selected_damping, len(names), cols, dash="dash")
        note += f"; dashed: the sidebar's λ = {selected_damping:g}"
    styled(fig, f"{title} · {note}", height=260 * rows + 60)
    # legend symbols at one size: a flat line's only marker is its middle point's (its
    # array of sizes starts at 0, and the legend drew no symbol)
    fig.update_layout(legend_itemsizing="constant")
    # a label every other decade past 4 (a grid line at each): two panels a row at 1024 px
    # gave each decade ≈ 30 px, and plotly turned the labels on end
    step = 2 if high - low > 5 else 1
    fig.update_xaxes(
        type="log",
        exponentformat="power",
        dtick=step,
        tick0=0,
        range=[low, high],
        minor={"dtick": 1, "showgrid": True} if step > 1 else None,
    )
    fig.update_xaxes(title=axis_title("damping λ"), row=rows)
    _log_eigenvalue_axis(fig, trends_by_series.values(), names, cols)
    floor_y_spans(fig)
    _cap_shares(fig, names, cols)
    return fig


UNCONVERGED_NAME = "cg not converged"
BOUND_NAME = "≥: median only a lower bound"


def _ring_unconverged(
    fig: go.Figure,
    trends_by_series: Mapping[str, Mapping[str, Trend]],
    unconverged: Mapping[str, Sequence[float]],
    names: Sequence[tuple[str, str]],
    cols: int,
) -> None:
    """A red ring around each median whose cg solve did not reach its tolerance (one legend
    entry): the warning above the chart names them, the chart shows which they are."""
    _mark_medians(
        fig,
        {label: trends_by_series.get(label, {}) for label in unconverged},
        names,
        cols,
        pick=lambda label, trend: np.isin(trend.x, np.asarray(unconverged[label], dtype=float)),
        legend=UNCONVERGED_NAME,
        marker={"symbol": "circle-open", "size": 15, "color": "#d62728", "line": {"width": 2}},
        hover=lambda label: (
            f"{label}: cg stopped at its iteration cap above its tolerance; "
            "this value is inaccurate<extra></extra>"
        ),
    )


def _mark_bounds(
    fig: go.Figure,
    trends_by_series: Mapping[str, Mapping[str, Trend]],
    names: Sequence[tuple[str, str]],
    cols: int,
) -> None:
    """An arrow up from a bar around each median that is only a lower bound (a lag decay
    length censored at the window), one legend entry: the sensitivity chart's markers are
    its estimator settings' symbols (a triangle among them), so the training chart's cue,
    the median's marker a triangle, is not used there, and a flat euclidean line at T − 1
    read as measured."""
    _mark_medians(
        fig,
        trends_by_series,
        names,
        cols,
        pick=lambda label, trend: trend.median_bounds(),
        legend=BOUND_NAME,
        marker={"symbol": "arrow-bar-up-open", "size": 16, "color": "#444", "line": {"width": 1.5}},
        hover=lambda label: (
            f"{label}: the median is only a lower bound (≥ %{{y:.4g}}): lag "
            "decay censored at the window<extra></extra>"
        ),
    )


def _mark_medians(
    fig: go.Figure,
    trends_by_series: Mapping[str, Mapping[str, Trend]],
    names: Sequence[tuple[str, str]],
    cols: int,
    *,
    pick: Callable[[str, Trend], Sequence[bool]],
    legend: str,
    marker: Mapping[str, Any],
    hover: Callable[[str], str],
) -> None:
    """Markers over the medians that ``pick(label, trend)`` selects (a mask over x) in each
    score's panel, under one legend entry ``legend``."""
    shown = False
    for label, trends in trends_by_series.items():
        for p, (name, _) in enumerate(names):
            trend = trends.get(name)
            keep = None if trend is None else np.asarray(pick(label, trend), dtype=bool)
            if keep is None or not keep.any():
                continue
            fig.add_trace(
                go.Scatter(
                    x=trend.x[keep],
                    y=trend.median[keep],
                    mode="markers",
                    marker=dict(marker),
                    name=legend,
                    legendgroup=legend,
                    showlegend=not shown,
                    hovertemplate=hover(label),
                ),
                row=p // cols + 1,
                col=p % cols + 1,
            )
            shown = True


# scores that depend on λ even for an estimator whose Ĥ does not (euclidean): the top
# eigenvalue of η + λI (drawn across the axis, it read 1.26e6 at λ = 1e6, where it is 2.26e6)
DAMPED_SCORES = frozenset({"top_eigenvalue"})


def _add_series(
    fig: go.Figure,
    trends: Mapping[str, Trend],
    names: Sequence[tuple[str, str]],
    cols: int,
    *,
    label: str,
    color: str,
    dash: str,
    symbol: str,
    flat_span: tuple[float, float] | None,
) -> None:
    """One series' median and Q1–Q3 band in each score's panel (legend entry once); a flat
    series (``flat_span`` given) with one λ is drawn across that span, its hover saying that
    λ does not enter it, except for a score of η + λI itself (``DAMPED_SCORES``), which is
    drawn where it was computed."""
    for p, (name, panel_title) in enumerate(names):
        if name not in trends:
            continue
        trend = trends[name]
        x, median, q1, q3 = trend.x, trend.median, trend.q1, trend.q3
        hover, sizes, notes = "λ %{x:.0e}", None, trend.notes()
        if flat_span is not None and len(x) == 1 and name not in DAMPED_SCORES:
            # edges of the axis, and the λ computed
            hover = f"computed at λ {paper_notation(x[0])}, independent of λ"  # as d3's 1e-4
            x = np.array([flat_span[0], x[0], flat_span[1]])
            median, q1, q3 = (np.repeat(a, 3) for a in (median, q1, q3))
            sizes, notes = [0, 7, 0], notes * 3
        _add_band(
            fig,
            (p // cols + 1, p % cols + 1),
            (x, median, q1, q3),
            label=label,
            color=color,
            dash=dash,
            value=panel_title,
            x_hover=hover,
            notes=notes,
            legend=p == 0,
            marker={"symbol": symbol, "size": sizes or 7},
        )


def _add_band(
    fig: go.Figure,
    cell: tuple[int, int],
    curve: tuple[Any, Any, Any, Any],
    *,
    label: str,
    color: str,
    dash: str,
    value: str,
    x_hover: str,
    notes: Sequence[str] | None,
    legend: bool,
    marker: Mapping[str, Any] | None = None,
) -> None:
    """One line's median and Q1–Q3 band (``curve``: x, median, q1, q3) in the subplot at
    ``cell`` (row, col); its legend entry only where ``legend`` (the first panel), its
    median's markers styled by ``marker``. Both sweep figures draw their lines this way."""
    for trace in band_traces(
        *curve,
        name=label,
        color=color,
        dash=dash,
        value=value,
        x_hover=x_hover,
        group=label,
        notes=notes,
    ):
        trace.showlegend = trace.showlegend is not False and legend
        if marker is not None and trace.mode == "lines+markers":
            trace.marker.update(marker)
        fig.add_trace(trace, row=cell[0], col=cell[1])


def _mark_damping(fig: go.Figure, damping: float, n: int, cols: int, *, dash: str) -> None:
    """A vertical line at λ in each of the n panels, behind the data (a point on it stayed
    visible), twice the grid's width so that the decade's grid line it sits on does not hide
    it; the title names it (a note in the top-right corner sat under the toolbar). Not
    layer="between": plotly.js throws on a y-domain line in that layer and draws none of
    the figure's shapes and no hover layer."""
    for p in range(n):
        fig.add_vline(
            x=damping,
            line={"dash": dash, "color": "gray", "width": 2},
            layer="below",
            row=p // cols + 1,
            col=p % cols + 1,
        )


def _pooled(seeds: int, batches: int) -> str:
    """Which rows a histogram pools: 'of 3 seeds', 'of 2 batches', 'of 3 seeds × 2 batches'."""
    parts = [plural(seeds, "seed"), plural(batches, "batch", "batches")]
    return "of " + " × ".join(p for p in parts if not p.startswith("1 "))


def agreement_figure(
    result: Agreement,
    labels: tuple[str, str],
    *,
    times: Sequence[float] | None = None,
    damping: float | None = None,
    group: str | None = None,
    color_index: int = 0,
) -> go.Figure:
    """Read: left, the distribution of the per-row rank correlation of Ĥ between two
    estimators, every row of every seed and batch counted (1: every row ranks the
    perturbations identically; the title adds the Pearson correlation over all entries,
    which the ridge dominates); right, the difference of
    their intra-class two-time maps on the maps' own symmetric scale ±max|V| (white: no
    difference; full colour: a difference as large as the maps themselves). High
    correlations and a pale map mean the conclusion does not depend on the solver."""
    a, b = labels
    corr = result.rank_correlation[np.isfinite(result.rank_correlation)].ravel()
    # rows of every seed and batch: 3 seeds of N = 48 gave bars of 144 "rows"
    s, n_b, _ = np.shape(result.rank_correlation)
    counted = "rows" if s * n_b == 1 else f"rows ({_pooled(s, n_b)})"
    m = max(result.scale, 1e-12)
    share = result.max_difference / m
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(  # two lines each: one line ran into the other at 1024 px
            f"Per-row rank correlation of Ĥ (median {result.median_correlation:.2f})"
            f"<br>Pearson over all entries {result.pearson:.2f}",
            f"Two-time map: {a} − {b}<br>max |ΔĤ| {result.max_difference:.3g} "
            f"= {share:.0%} of the maps' {m:.3g}",
        ),
        horizontal_spacing=0.14,
    )
    fig.add_trace(
        go.Histogram(
            x=corr,
            xbins={"start": -1.0, "end": 1.0001, "size": 0.05},
            marker={"color": group_color(color_index)},  # the group's colour on the page
            name="rows",
            showlegend=False,
            hovertemplate=f"ρ %{{x}}<br>%{{y}} {counted}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    v = result.map_difference
    axis = np.asarray(times if times is not None else np.arange(v.shape[0]), dtype=float)
    fig.add_trace(
        go.Heatmap(
            z=v,
            x=axis,
            y=axis,
            zmin=-m,
            zmax=m,
            colorscale=DIVERGING,
            colorbar={"title": {"text": "ΔĤ"}},
            hovertemplate="t_p %{x}<br>t_r %{y}<br>ΔĤ %{z:.3g}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    at = f" at λ = {damping:g}" if damping is not None else ""
    whose = f"{group} · " if group else ""  # compare mode: which model group
    styled(fig, f"Agreement{at}: {whose}{a} vs {b}", height=400)
    fig.update_layout(margin_t=100)  # the title above the two-line panel titles
    fig.update_xaxes(  # a margin beyond ±1: the "−1" tick ran into the y axis's "0"
        title=axis_title("Spearman ρ per response row"), range=[-1.08, 1.08], row=1, col=1
    )
    fig.update_yaxes(title=axis_title(counted), row=1, col=1)
    fig.update_xaxes(title=axis_title("perturbation time t_p"), row=1, col=2)
    fig.update_yaxes(title=axis_title("response time t_r"), row=1, col=2)
    return fig
