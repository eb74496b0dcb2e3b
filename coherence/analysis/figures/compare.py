"""Compare mode: two figures from the same builder side by side on one colour scale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from coherence.analysis.figures.theme import COLORSCALE, shared_zrange, styled
from coherence.errors import RequestError

_AXIS_KEYS = (
    "title",
    "type",
    "autorange",
    "range",
    "tickvals",
    "ticktext",
    "tickformat",
    "exponentformat",
    "dtick",
    "side",
    "constrain",
)
LONG_TITLE = 30  # characters: longer x titles collide in half a page, so they break in two


def _ref(ref: Any, col: int) -> Any:
    """Map the single-plot axis reference 'x' / 'y domain' to subplot column ``col``."""
    if col == 1 or not isinstance(ref, str) or ref[0] not in "xy":
        return ref
    axis, _, rest = ref.partition(" ")
    return f"{axis[0]}{col}" + (f" {rest}" if rest else "")


def _heatmap_range(figs: Sequence[go.Figure]) -> tuple[float, float]:
    lows, highs, arrays = [], [], []
    for fig in figs:
        for trace in fig.data:
            if isinstance(trace, go.Heatmap):
                if trace.zmin is not None and trace.zmax is not None:
                    lows.append(trace.zmin)
                    highs.append(trace.zmax)
                else:
                    arrays.append(trace.z)
    if arrays:
        lo, hi = shared_zrange(*arrays)
        lows.append(lo)
        highs.append(hi)
    return min(lows), max(highs)


SQUARE_BAR_LEN = 0.66  # of the plot height: a pair of square maps at a 1024 px window


def side_by_side(
    fig_a: go.Figure,
    fig_b: go.Figure,
    titles: Sequence[str] = ("A", "B"),
    *,
    zrange: tuple[float, float] | None = None,
    title: str = "",
) -> go.Figure:
    """Read: two groups (e.g. UNet | ViT) in one figure; every heatmap shares one colour axis
    (``zrange``, else the union of the inputs' ranges), so equal colours mean equal values.

    Made for two figures of the same builder: axis titles, types and reference lines are
    copied per column; legend entries already shown on the left are hidden on the right. A
    right heatmap on the left one's rows repeats no y tick labels (they pushed its y title
    over the left panel) and long x titles break onto two lines.
    """
    if len(titles) != 2:
        raise RequestError(f"titles={titles!r}: give two panel titles")
    figs = (fig_a, fig_b)
    has_heatmap = any(isinstance(t, go.Heatmap) for f in figs for t in f.data)
    out = make_subplots(rows=1, cols=2, subplot_titles=list(titles), horizontal_spacing=0.1)
    shown: set[str] = set()
    colorscale = COLORSCALE
    for col, fig in enumerate(figs, start=1):
        for trace in fig.data:
            trace = go.Figure(trace).data[0]  # a copy: the inputs stay unchanged
            if isinstance(trace, go.Heatmap):
                colorscale = trace.colorscale or colorscale
                trace.update(zmin=None, zmax=None, colorscale=None, coloraxis="coloraxis")
            elif trace.name is not None and trace.showlegend is not False:
                if col == 2 and trace.name in shown:
                    trace.showlegend = False
                shown.add(trace.name)
            out.add_trace(trace, row=1, col=col)
        for axis in ("xaxis", "yaxis"):
            source = fig.layout[axis].to_plotly_json()
            settings = {k: source[k] for k in _AXIS_KEYS if k in source}
            if "scaleanchor" in source:  # a square map: in a half-width column the
                # plot shrinks; it keeps its top under its title, the space goes below
                settings |= {"scaleanchor": _ref(source["scaleanchor"], col)}
                settings |= {"constraintoward": "top"}
            out.update_layout({axis if col == 1 else f"{axis}{col}": settings})
        for shape in fig.layout.shapes:
            spec = shape.to_plotly_json()
            spec["xref"], spec["yref"] = _ref(spec.get("xref"), col), _ref(spec.get("yref"), col)
            out.add_shape(spec)
    if has_heatmap:
        lo, hi = zrange if zrange is not None else _heatmap_range(figs)
        out.update_layout(coloraxis={"colorscale": colorscale, "cmin": lo, "cmax": hi})
        bar = next((t.colorbar for f in figs for t in f.data if isinstance(t, go.Heatmap)), None)
        if bar is not None and bar.title.text:
            out.update_layout(coloraxis_colorbar={"title": {"text": bar.title.text}})
        if any("scaleanchor" in f.layout.yaxis.to_plotly_json() for f in figs):
            # square maps in half-width columns keep their top under the titles and are often
            # shorter than the plot area: a bar from the top, 2/3 of it, never overhangs them
            out.update_layout(coloraxis_colorbar={"len": SQUARE_BAR_LEN, "yanchor": "top", "y": 1})
    height = max(f.layout.height or 420 for f in figs)
    styled(out, title or (fig_a.layout.title.text or ""), height=height)
    _dedupe_titles(out, figs)
    return out


def _dedupe_titles(out: go.Figure, figs: Sequence[go.Figure]) -> None:
    """Titles that fit half a page. Heatmap pairs on the same rows: the right panel repeats
    no y tick labels, times or classes (they pushed its y title over the left panel), and
    long x titles break onto two lines. Curve pairs: one shared x title under both panels,
    the y title once (left), and the legend in a row below, so the two plots keep their
    width."""
    heatmaps = [t for f in figs for t in f.data if isinstance(t, go.Heatmap)]
    if heatmaps:
        rows = [list(t.y) for t in heatmaps if t.y is not None]
        if rows and all(y == rows[0] for y in rows):  # numeric (times) or categorical
            out.update_layout(yaxis2_showticklabels=False, yaxis2_title_standoff=4)
        wrapped = False
        for axis in ("xaxis", "xaxis2"):
            text = out.layout[axis].title.text or ""
            if len(text) > LONG_TITLE and "<br>" not in text:
                out.layout[axis].title.text = _two_lines(text)
                wrapped = True
        if wrapped:
            out.update_layout(margin_b=90)
        return
    left, right = (f.layout for f in figs)
    if left.yaxis.title.text and left.yaxis.title.text == right.yaxis.title.text:
        out.update_layout(yaxis2_title_text="")
    text = left.xaxis.title.text or ""
    if text and text == right.xaxis.title.text:
        out.update_layout(xaxis_title_text="", xaxis2_title_text="")
        out.add_annotation(
            text=text,
            x=0.5,
            y=0,
            xref="paper",
            yref="paper",
            yshift=-36,
            yanchor="top",
            showarrow=False,
            font={"size": 14},
        )
    legend = {"orientation": "h", "x": 0, "xanchor": "left", "yref": "container", "y": 0}
    out.update_layout(legend=legend | {"yanchor": "bottom"}, margin_b=140)


def _two_lines(text: str) -> str:
    """Break at the space nearest the middle (before a parenthesis when there is one)."""
    if " (" in text:
        head, _, tail = text.partition(" (")
        return f"{head}<br>({tail}"
    middle = len(text) // 2
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - middle))
    return f"{text[:cut]}<br>{text[cut + 1 :]}"
