"""One look for every figure: colour scales, group colours, layout defaults, band traces.

Every influence heatmap uses COLORSCALE over ``influence_range(N)`` = [0, √N] (METHOD.md §4:
a perfectly local standardized row gives √N), so two panels or two checkpoint groups side by
side read on the same scale. Pure plotly and numpy; no streamlit, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go

from coherence.errors import RequestError

COLORSCALE: list[list[Any]] = [list(step) for step in pcolors.get_colorscale("Viridis")]
"""Sequential scale of every influence heatmap (explicit list: identical in every trace)."""

DIVERGING: list[list[Any]] = [list(step) for step in pcolors.get_colorscale("RdBu_r")]
"""Diverging scale (blue < 0 < red) for signed differences, always on a symmetric range."""

FIELD_COLORSCALE: list[list[Any]] = [list(step) for step in pcolors.get_colorscale("Cividis")]
"""Sequential scale for one-signed physical fields (density, energy), distinct from influence;
signed ones (momentum, velocity) take ``DIVERGING`` (``field_scale``)."""

GROUP_COLORS: tuple[str, ...] = ("#1F77B4", "#D55E00", "#009E73", "#CC79A7", "#4D4D4D")
"""Group colours: blue (the page's primary colour), then Okabe–Ito's vermillion, bluish green
and reddish purple, then dark grey. Each has ≥ 3:1 contrast on the white plot (WCAG 1.4.11)
and stays apart from the others under deuteranopia, protanopia and tritanopia; plotly's D3
put orange (2.5:1) second and drew green beside red for the third and fourth groups. A sixth
group takes blue again (the dashboard draws two; a figure of more names each in its legend)."""
TEMPLATE = "plotly_white"
FONT = {"family": "Inter, Helvetica, Arial, sans-serif", "size": 13}
INFLUENCE_SYMBOL = "Ĥ"
SCALES: dict[str, str] = {
    "paper": "paper [0, √N]",
    "auto": "auto (data)",
    "diverging": "diverging ±",
}
"""Colour-scale modes of every influence heatmap: the paper's fixed [0, √N], the data's own
(min, max), or a symmetric diverging scale on which negative influence is visible."""


def influence_range(n_examples: int) -> tuple[float, float]:
    """The fixed colour range [0, √N] of standardized influence for a batch of N examples."""
    if isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer)):
        raise RequestError(f"n_examples={n_examples!r}: give the batch size N as an integer ≥ 1")
    if n_examples < 1:
        raise RequestError(f"n_examples={n_examples}: the batch size N must be ≥ 1")
    return 0.0, math.sqrt(int(n_examples))


def shared_zrange(*arrays: Any, symmetric: bool = False) -> tuple[float, float]:
    """(min, max) over the finite values of all arrays: one colour range for compare mode.

    ``symmetric`` gives (−m, m) with m the largest |value|, for diverging scales. A constant
    input c is widened to c ± ½|c| (± 0.5 for c = 0) so plotly never gets an empty range.
    """
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, dtype=np.float64) for x in arrays)]
    values = np.concatenate([f.ravel() for f in finite]) if finite else np.empty(0)
    if values.size == 0:
        raise RequestError("shared_zrange needs at least one finite value across its arrays")
    if symmetric:
        m = float(np.abs(values).max())
        return (-m, m) if m > 0 else (-1.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        pad = 0.5 * abs(lo) if lo != 0 else 0.5
        return lo - pad, hi + pad
    return lo, hi


# a field is signed when each sign reaches this share of the other's extreme: a density's
# slight undershoot at a shock (a few pixels just below 0) keeps it sequential
SIGNED_SHARE = 0.05


def field_scale(*arrays: Any) -> tuple[float, float, list[list[Any]]]:
    """(zmin, zmax, colorscale) of physical fields: a field of both signs (momentum,
    velocity) on the diverging scale over a symmetric range, so zero is the middle colour
    and the sign reads at once; a one-signed one (density, energy) on the sequential scale
    (a walk-through read momentum_x in cividis, its zero anywhere)."""
    lo, hi = shared_zrange(*arrays)
    if lo < 0 < hi and min(-lo, hi) > SIGNED_SHARE * max(-lo, hi):
        lo, hi = shared_zrange(*arrays, symmetric=True)
        return lo, hi, DIVERGING
    return lo, hi, FIELD_COLORSCALE


def group_color(index: int) -> str:
    """The colour of the index-th group (architecture, checkpoint group) in every figure."""
    return GROUP_COLORS[index % len(GROUP_COLORS)]


def rgba(color: str, alpha: float) -> str:
    """'#RRGGBB' (or 'rgb(...)') → 'rgba(r, g, b, alpha)' for translucent bands."""
    r, g, b = pcolors.hex_to_rgb(color) if color.startswith("#") else pcolors.unlabel_rgb(color)
    return f"rgba({int(r)}, {int(g)}, {int(b)}, {alpha})"


def styled(fig: go.Figure, title: str = "", *, height: int | None = None) -> go.Figure:
    """Apply the shared template, font, margins and hover style (in place; returns fig)."""
    fig.update_layout(
        template=TEMPLATE,
        font=FONT,
        # left-aligned, 12 px in from the edge: an exported PNG/SVG has no page margin
        title={"text": title, "x": 0.0, "xanchor": "left", "pad": {"l": 12}, "font": {"size": 16}},
        margin={"l": 70, "r": 30, "t": 60 if title else 30, "b": 60},
        hoverlabel={"font": {"family": FONT["family"]}},
        legend={"bgcolor": "rgba(255, 255, 255, 0.6)"},
    )
    if height is not None:
        fig.update_layout(height=height)
    return fig


def axis_title(text: str) -> dict[str, Any]:
    return {"text": text}


BOUND = "triangle-up"  # the marker of a median that is only a lower bound


def band_traces(
    x: Sequence[float] | np.ndarray,
    median: np.ndarray,
    q1: np.ndarray,
    q3: np.ndarray,
    *,
    name: str,
    color: str,
    dash: str = "solid",
    value: str = "value",
    x_hover: str = "x = %{x}",
    group: str | None = None,
    band_alpha: float = 0.2,
    notes: Sequence[str] | None = None,
) -> list[go.Scatter]:
    """Q3 edge, Q1 edge filled up to it ('tonexty'), bars for points a fill cannot show
    (``_isolated_bars``), then the median line, in drawing order.

    The edges are invisible and hover-silent; the median's hover shows the median and [Q1, Q3]
    of ``value`` at ``x_hover``, and a point's ``notes`` entry where one is given. NaN points
    (an undefined curve) break the line and the band.
    """
    x = np.asarray(x)
    median, q1, q3 = (np.asarray(a, dtype=np.float64) for a in (median, q1, q3))
    legendgroup = group or name
    edge = {"mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False}
    upper = go.Scatter(x=x, y=q3, name=f"{name} Q3", legendgroup=legendgroup, **edge)
    lower = go.Scatter(
        x=x,
        y=q1,
        name=f"{name} Q1–Q3",
        legendgroup=legendgroup,
        fill="tonexty",
        fillcolor=rgba(color, band_alpha),
        **edge,
    )
    # a point whose values are partly bounds (a note starting '≥') is a triangle pointing up:
    # the score cards write '≥ 2.00', and a plain point read as the value itself
    bounds = [bool(n) and n.startswith("≥") for n in notes] if notes is not None else []
    marker = (
        {
            "size": [8 if b else 5 for b in bounds],
            "symbol": [BOUND if b else "circle" for b in bounds],
        }
        if any(bounds)
        else {"size": 5}
    )
    line = go.Scatter(
        x=x,
        y=median,
        name=name,
        legendgroup=legendgroup,
        mode="lines+markers",
        marker=marker,
        line={"color": color, "dash": dash, "width": 2},
        customdata=np.stack([q1, q3], axis=-1),
        text=[f"<br>{n}" if n else "" for n in notes] if notes is not None else None,
        hovertemplate=(
            f"{x_hover}<br>median {value} = %{{y:.4g}}<br>"
            f"Q1–Q3 = [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}}]"
            + ("%{text}" if notes is not None else "")
            + f"<extra>{name}</extra>"
        ),
    )
    bars = _isolated_bars(
        x, median, q1, q3, color=color, band_alpha=band_alpha, name=name, group=legendgroup
    )
    return [upper, lower, *bars, line]


def _isolated_bars(
    x: np.ndarray,
    median: np.ndarray,
    q1: np.ndarray,
    q3: np.ndarray,
    *,
    color: str,
    band_alpha: float,
    name: str,
    group: str,
) -> list[go.Scatter]:
    """The Q1–Q3 of points with no defined neighbour, as thick bars in the band's colour:
    a fill has no area at a lone x (one epoch cached, one λ), so the spread showed in the
    hover only. Empty when every point has a neighbour."""
    defined = np.isfinite(median) & np.isfinite(q1) & np.isfinite(q3)
    before = np.concatenate([[False], defined[:-1]])
    after = np.concatenate([defined[1:], [False]])
    alone = defined & ~before & ~after
    if not alone.any():
        return []
    return [
        go.Scatter(
            x=x[alone],
            y=median[alone],
            mode="markers",
            marker={"size": 0.1, "color": color, "opacity": 0},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (q3 - median)[alone],
                "arrayminus": (median - q1)[alone],
                "color": rgba(color, max(2 * band_alpha, 0.4)),
                "thickness": 8,
                "width": 0,
            },
            name=f"{name} Q1–Q3",
            legendgroup=group,
            hoverinfo="skip",
            showlegend=False,
        )
    ]


def epoch_axis(*epochs: Any) -> dict[str, Any]:
    """An epoch x axis of whole epochs only (plotly's own ticks read 1, 1.2, 1.4 … for two
    epochs): about six ticks, a step of at least one epoch, the range padded by half a
    step so the first and last points are not on the frame."""
    values = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in epochs])
    values = values[np.isfinite(values)]
    if not values.size:
        return {}
    lo, hi = float(values.min()), float(values.max())
    return {"range": [lo - 0.5, hi + 0.5], "tick0": 0, "dtick": max(1, math.ceil((hi - lo) / 6))}


def as_array(x: Any, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """float64 numpy view of x (torch tensors included) with the promised number of axes."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise RequestError(f"{name} is not a numeric array ({error})") from error
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in allowed:
        raise RequestError(
            f"{name} has shape {a.shape}; expected {' or '.join(map(str, allowed))} axes"
        )
    if a.size == 0:
        raise RequestError(f"{name} is empty (shape {a.shape})")
    return a


def heatmap_scale(mode: str, values: Any, n_examples: int) -> tuple[float, float, list[list[Any]]]:
    """(zmin, zmax, colorscale) of an influence heatmap for a SCALES mode over ``values``."""
    if mode == "paper":
        lo, hi = influence_range(n_examples)
        return lo, hi, COLORSCALE
    if mode == "auto":
        return (*shared_zrange(values), COLORSCALE)
    if mode == "diverging":
        return (*shared_zrange(values, symmetric=True), DIVERGING)
    raise RequestError(f"scale={mode!r}: choose one of {', '.join(SCALES)}")


# beyond a colour range by less than this share of it, a cell's clipped colour is the one it
# would have had (about one step of the scale): a −0.01 on [0, 6.93] is noise around 0, and
# counting it warned of hidden structure where there was none (a walkthrough)
UNSEEN_CLIP = 0.02


def cells_beyond(maps: Sequence[Any], zrange: Sequence[float]) -> tuple[int, int]:
    """(cells beyond ``zrange``, cells) of heatmaps drawn on that range: plotly draws them at
    its ends, so a map wholly above [0, √N] is one flat colour. The dashboard's tabs and the
    report say how many (``clipped_text``). A cell within ``UNSEEN_CLIP`` of the range's
    width beyond an end is not counted: clipping does not change its colour."""
    values = np.concatenate([np.ravel(np.asarray(m, dtype=np.float64)) for m in maps])
    values = values[np.isfinite(values)]
    lo, hi = (float(v) for v in zrange)
    slack = UNSEEN_CLIP * max(hi - lo, 1e-300)
    return int(np.count_nonzero((values < lo - slack) | (values > hi + slack))), int(values.size)


def clipped_text(maps: Sequence[Any], zrange: Sequence[float]) -> str:
    """'k of n cells lie beyond the colour range [lo, hi]', or '' when none do."""
    beyond, total = cells_beyond(maps, zrange)
    if not beyond:
        return ""
    lo, hi = (float(v) for v in zrange)
    return f"{beyond} of {total} cells lie beyond the colour range [{lo:.3g}, {hi:.3g}]"


def cell_edges(centres: Any) -> tuple[float, float]:
    """Outer edges of heatmap cells drawn at increasing ``centres`` (half a spacing beyond the
    first and last centre, as plotly draws them): the axis range that shows exactly the data."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        half = 0.5 * abs(c[0]) if c[0] != 0 else 0.5
        return float(c[0] - half), float(c[0] + half)
    return float(c[0] - (c[1] - c[0]) / 2), float(c[-1] + (c[-1] - c[-2]) / 2)


def fit_square_axes(
    fig: go.Figure, x_range: Sequence[float], y_range: Sequence[float], *, reversed_y: bool = False
) -> None:
    """Axes that span exactly the data with square cells: the plot area shrinks (constrain =
    'domain') instead of the range growing, so a wide tab shows no empty axis range.
    ``reversed_y``: rows top to bottom (a matrix; plotly's reversed autorange of categories
    is exactly y_range)."""
    fig.update_xaxes(range=list(x_range), constrain="domain")
    y = {"autorange": "reversed"} if reversed_y else {"range": list(y_range)}
    fig.update_yaxes(scaleanchor="x", constrain="domain", **y)


def square_width(fig: go.Figure, *, colorbar: int = 110) -> int:
    """The figure width at which a square plot area (``fit_square_axes``) fills the plot
    region exactly: the left margin, the plot's height, the colour bar and the right margin.
    Drawn at this width (``chart``: Streamlit's width="content") no blank band separates the
    map from its colour bar, however wide the page."""
    m = fig.layout.margin
    return int(m.l + (fig.layout.height - m.t - m.b) + colorbar + m.r)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def number_label(value: float, *, power_from: float = 1e5, digits: int = 3) -> str:
    """A short unambiguous tick label: '0.02', '5000', '2×10⁻⁵', '10⁶' (never SI 'M', never
    'e+03', never a bare mantissa digit). ``power_from``: the magnitude from which powers of
    ten are used (0: always). ``digits``: significant digits, more where ticks are close
    together."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if 1e-3 <= abs(value) < power_from:
        text = f"{value:.{digits}g}"
        return f"{value:.0f}" if "e" in text else text  # 5000, not 5e+03
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    head = f"{mantissa:.{digits}g}×" if round(mantissa, 6) != 1 else ""
    return f"{head}10{str(exponent).translate(_SUPERSCRIPT)}"


def _framing_ticks(low: float, high: float) -> tuple[list[float], int]:
    """Evenly spaced round values (a 1, 2, 2.5 or 5 × 10ᵏ step, at most three steps across
    the data) from the last one at or below ``low`` to the first one at or above ``high``,
    and the significant digits that keep their labels apart. Why framing: a narrow range
    (less than two 1-2-5 ticks inside) labelled only inside the data left its top and bottom
    values above and below the last labels."""
    if high <= low:
        return [low], 3
    span = high - low
    if not span / 3 > 0 or span < 1e-9 * high:  # below float precision: the ends, in full
        return [low, high], 17
    magnitude = 10.0 ** math.floor(math.log10(span / 3))
    nice = [m * magnitude for m in (10, 5, 2.5, 2, 1, 0.5, 0.25, 0.2, 0.1)]  # descending
    start = max(i for i, h in enumerate(nice) if span / h <= 3)  # finest with ≤ 3 steps
    # a first tick of 0 has no place on a log axis: then the next finer step without one
    step = next((h for h in nice[start:] if math.floor(low / h) > 0), nice[-1])
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = [float(f"{k * step:.12g}") for k in range(first, last + 1)]
    digits = math.floor(math.log10(ticks[-1])) - math.floor(math.log10(step)) + 1
    return ticks, digits + (1 if f"{step / magnitude:g}" in ("2.5", "0.25") else 0)


def log_axis(*arrays: Any, title: str, dense_decades: int = 4) -> dict[str, Any]:
    """Settings of a log axis over the positive finite values of ``arrays``: ticks at 1, 2, 5
    × 10ᵏ (powers of ten only beyond ``dense_decades`` decades: a narrow chart passes fewer)
    from the last one at or below the data to
    the first at or above it, or round values framing a narrow range, with the axis range set
    to the outer ticks (a value above the top label read as unlabelled),
    each labelled in full (number_label) and in one notation along the axis: powers of ten
    throughout where one tick needs one (10⁻⁹ … 10³, not 10⁻⁵ beside 0.001)."""
    settings: dict[str, Any] = {"type": "log", "title": axis_title(title)}
    values = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])
    values = values[np.isfinite(values) & (values >= np.finfo(np.float64).tiny)]  # not subnormal
    if values.size == 0:
        return settings
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    decades = range(lo, hi + 1)
    mantissas = (1,) if hi - lo > dense_decades else (1, 2, 5) if hi - lo > 1 else (1, 2, 3, 5)
    step = max(1, math.ceil((hi - lo) / 8))
    ticks = [m * 10.0**k for k in decades for m in mantissas if (k - lo) % step == 0]
    inside = [v for v in ticks if values.min() <= v <= values.max()]
    digits = 3
    framed = True
    if len(inside) < 2:  # a narrow range: round values framing it, as precise as needed
        ticks, digits = _framing_ticks(float(values.min()), float(values.max()))
    else:  # from the last tick at or below the data to the first at or above it
        below = [v for v in ticks if v <= values.min()]
        above = [v for v in ticks if v >= values.max()]
        framed = bool(below and above)  # not when the decade step skips the one above
        low = max(below) if below else values.min() / 1.5
        high = min(above) if above else values.max() * 1.5
        ticks = [v for v in ticks if low <= v <= high]
    if framed and ticks[0] < ticks[-1]:  # the axis spans the outer ticks, a 2% margin
        ends = np.log10([ticks[0], ticks[-1]])
        pad = 0.02 * (ends[1] - ends[0])
        settings["range"] = [float(ends[0] - pad), float(ends[1] + pad)]
    powers = any(not 1e-3 <= v < 1e5 for v in ticks)
    labels = [number_label(v, power_from=0 if powers else 1e5, digits=digits) for v in ticks]
    return settings | {"tickvals": ticks, "ticktext": labels}
