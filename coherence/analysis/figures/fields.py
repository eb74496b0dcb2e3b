"""Physical-field panels: prediction vs truth viewer and an animated snapshot player.

Fields live on the periodic unit square; an array [H, W] is indexed [y, x] (meshgrid
indexing="ij" in coherence.simulation.classes), drawn with y up at pixel centres (j + ½)/W.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from coherence.analysis.figures.theme import (
    DIVERGING,
    as_array,
    axis_title,
    field_scale,
    shared_zrange,
    styled,
)
from coherence.errors import RequestError


def _channel(channel_names: Sequence[str], channel: int | str, n_channels: int) -> int:
    names = [str(c) for c in channel_names]
    if len(names) != n_channels:
        raise RequestError(
            f"channel_names has {len(names)} names for {n_channels} channels; name each channel"
        )
    if isinstance(channel, str):
        if channel not in names:
            raise RequestError(f"channel {channel!r} is not one of {names}")
        return names.index(channel)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise RequestError(f"channel={channel!r}: give a channel name or an index")
    if not 0 <= channel < n_channels:
        raise RequestError(f"channel={channel}: choose 0..{n_channels - 1} ({names})")
    return int(channel)


def _centres(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


STRAY_SPAN = 2.0  # a prediction's range this many times the truth's: drawn on the truth's


def field_viewer(
    prediction: Any,
    truth: Any,
    channel_names: Sequence[str],
    channel: int | str = 0,
    *,
    title: str = "",
) -> go.Figure:
    """Read: truth, prediction (one shared colour range, the truth's alone where the
    prediction strays more than twice as wide, the prediction's title then saying what share
    of it is off that scale; a signed field such as momentum or velocity on the diverging
    scale, zero white)
    and prediction − truth (symmetric diverging range, red = over-prediction) of one
    channel; structure in the difference panel shows where the surrogate misses the physics.

    prediction, truth: [F, H, W] states of one example.
    """
    p = as_array(prediction, "prediction", 3)
    y = as_array(truth, "truth", 3)
    if p.shape != y.shape:
        raise RequestError(f"prediction {p.shape} and truth {y.shape} must share [F, H, W]")
    c = _channel(channel_names, channel, p.shape[0])
    name = str(channel_names[c])
    diff = p[c] - y[c]
    lo, hi, colors = field_scale(p[c], y[c])
    predicted = f"prediction: {name}"
    own = field_scale(y[c])  # a diverging prediction made the truth one flat colour
    if own[1] > own[0] and hi - lo > STRAY_SPAN * (own[1] - own[0]):
        lo, hi, colors = own
        beyond = float(np.mean((p[c] < lo) | (p[c] > hi)))
        predicted += f" ({beyond:.0%} off scale)"
    dmin, dmax = shared_zrange(diff, symmetric=True)
    xs, ys = _centres(p.shape[2]), _centres(p.shape[1])
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(f"truth: {name}", predicted, "prediction − truth"),
        horizontal_spacing=0.14,  # room for the shared colour bar (and y title) before 3
    )
    panels = (
        (y[c], "truth", "coloraxis"),
        (p[c], "prediction", "coloraxis"),
        (diff, "diff", "coloraxis2"),
    )
    _add_field_panels(fig, panels, name, xs, ys)
    _field_colorbars(fig, name, (lo, hi), (dmin, dmax), colors)
    styled(fig, title, height=420)
    fig.update_layout(margin={"r": 80})
    return fig


def _add_field_panels(
    fig: go.Figure,
    panels: Sequence[tuple[np.ndarray, str, str]],
    name: str,
    xs: np.ndarray,
    ys: np.ndarray,
) -> None:
    """One heatmap per (field, label, colour axis) in columns 1, 2, ... on square axes."""
    for col, (z, label, axis) in enumerate(panels, start=1):
        symbol = f"{name} {label}" if label != "diff" else f"Δ{name} (prediction − truth)"
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=xs,
                y=ys,
                coloraxis=axis,
                hovertemplate=f"x = %{{x:.3f}}<br>y = %{{y:.3f}}<br>{symbol} = %{{z:.4g}}"
                "<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title=axis_title("x"), constrain="domain", row=1, col=col)
        anchor = "x" if col == 1 else f"x{col}"
        fig.update_yaxes(
            title=axis_title("y"),
            title_standoff=2 if col > 1 else None,  # no tick labels there: hug the map
            scaleanchor=anchor,
            constrain="domain",
            showticklabels=col == 1,  # same grid in every panel: ticks once, on the left
            row=1,
            col=col,
        )


def _field_colorbars(
    fig: go.Figure,
    name: str,
    zrange: tuple[float, float],
    drange: tuple[float, float],
    colors: list[list[Any]],
) -> None:
    """Vertical bars: the shared one in the gap right of the prediction, the diff one at the
    end."""
    # half the plot height, centred as the maps are: three square maps across a 1024 px page
    # fill about half of it (a longer bar overhung them there); at 1600 px they fill it all
    bar = {"thickness": 12, "len": 0.5, "xanchor": "left", "xpad": 4}
    shared_x = fig.layout.xaxis2.domain[1] + 0.005
    fig.update_layout(
        coloraxis={
            "colorscale": colors,
            "cmin": zrange[0],
            "cmax": zrange[1],
            "colorbar": {**bar, "x": shared_x, "title": {"text": name}},
        },
        coloraxis2={
            "colorscale": DIVERGING,
            "cmin": drange[0],
            "cmax": drange[1],
            "colorbar": {**bar, "x": 1.005, "title": {"text": f"Δ{name}"}},
        },
    )


def snapshot_animation(
    states: Any,
    times: Any,
    channel_names: Sequence[str],
    channel: int | str = 0,
    *,
    title: str = "",
) -> go.Figure:
    """Read: one channel of a trajectory over time (play, or drag the slider); the colour
    range is fixed over all frames so brightness compares across time (a signed field, such
    as momentum or velocity, on the diverging scale: zero white, red positive, blue negative).

    states [T, F, H, W], times [T] physical times. Cost: T frames of H·W values in the figure.
    """
    s = as_array(states, "states", 4)
    t = as_array(times, "times", 1)
    if len(t) != s.shape[0]:
        raise RequestError(f"states has {s.shape[0]} snapshots but times has {len(t)} entries")
    c = _channel(channel_names, channel, s.shape[1])
    name = str(channel_names[c])
    field = s[:, c]  # (T, H, W)
    lo, hi, colors = field_scale(field)
    xs, ys = _centres(s.shape[3]), _centres(s.shape[2])
    hover = f"x = %{{x:.3f}}<br>y = %{{y:.3f}}<br>{name} = %{{z:.4g}}<extra></extra>"

    def heatmap(k: int) -> go.Heatmap:
        return go.Heatmap(
            z=field[k],
            x=xs,
            y=ys,
            zmin=lo,
            zmax=hi,
            colorscale=colors,
            colorbar={"title": {"text": name}, "thickness": 14},
            hovertemplate=hover,
        )

    labels = [f"t = {time:.3g}" for time in t]
    frames = [
        go.Frame(
            data=[heatmap(k)],
            name=str(k),
            layout={"title": {"text": f"{title} {labels[k]}".strip()}},
        )
        for k in range(len(t))
    ]
    fig = go.Figure(data=[heatmap(0)], frames=frames)
    styled(fig, f"{title} {labels[0]}".strip(), height=520)
    fig.update_layout(**_player_controls(labels), margin={"b": 140})
    fig.update_xaxes(title=axis_title("x"), constrain="domain")
    fig.update_yaxes(title=axis_title("y"), scaleanchor="x", constrain="domain")
    return fig


def _player_controls(labels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Layout of the animation's play/pause buttons and time slider, one step per frame."""
    play = {"frame": {"duration": 300, "redraw": True}, "fromcurrent": True, "mode": "immediate"}
    pause = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}
    buttons = {
        "type": "buttons",
        "direction": "left",
        "x": 0.1,
        "y": 0,
        "xanchor": "right",
        "yanchor": "top",
        "pad": {"r": 10, "t": 70},
        "showactive": False,
        "buttons": [
            {"label": "▶", "method": "animate", "args": [None, play]},
            {"label": "❚❚", "method": "animate", "args": [[None], pause]},
        ],
    }
    slider = {
        "active": 0,
        "x": 0.1,
        "y": 0,
        "len": 0.9,
        "xanchor": "left",
        "yanchor": "top",
        "pad": {"b": 10, "t": 50},
        "currentvalue": {"prefix": "time: "},
        "steps": [
            {
                "label": label,
                "method": "animate",
                "args": [[str(k)], {**pause, "frame": {"duration": 0, "redraw": True}}],
            }
            for k, label in enumerate(labels)
        ],
    }
    return {"updatemenus": [buttons], "sliders": [slider]}


def input_pair_figure(
    state_r: Any,
    state_p: Any,
    channel_names: Sequence[str],
    channel: int | str = 0,
    *,
    labels: Sequence[str] = ("response r", "perturbation p"),
    title: str = "",
) -> go.Figure:
    """Read: the input states of the two examples of a heatmap cell, one channel each, on
    one colour range: how different are the states whose influence the cell measures?

    state_r, state_p: [F, H, W] input states of the response and perturbation examples.
    """
    r = as_array(state_r, "state_r", 3)
    p = as_array(state_p, "state_p", 3)
    if r.shape != p.shape:
        raise RequestError(f"state_r {r.shape} and state_p {p.shape} must share [F, H, W]")
    c = _channel(channel_names, channel, r.shape[0])
    name = str(channel_names[c])
    lo, hi, colors = field_scale(r[c], p[c])
    xs, ys = _centres(r.shape[2]), _centres(r.shape[1])
    fig = make_subplots(rows=1, cols=2, subplot_titles=[str(x) for x in labels])
    for col, z in enumerate((r[c], p[c]), start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=xs,
                y=ys,
                coloraxis="coloraxis",
                hovertemplate=f"x = %{{x:.3f}}<br>y = %{{y:.3f}}<br>{name} = %{{z:.3g}}"
                "<extra></extra>",
            ),
            row=1,
            col=col,
        )
        anchor = "x" if col == 1 else f"x{col}"
        fig.update_xaxes(title=axis_title("x"), constrain="domain", range=[0, 1], row=1, col=col)
        fig.update_yaxes(
            title=axis_title("y"),
            scaleanchor=anchor,
            constrain="domain",
            range=[0, 1],
            row=1,
            col=col,
        )
    fig.update_layout(
        coloraxis={
            "colorscale": colors,
            "cmin": lo,
            "cmax": hi,
            "colorbar": {"title": {"text": name}, "thickness": 12},
        }
    )
    return styled(fig, title, height=360)
