"""Figure builders on small synthetic data: trace layout, orientation, ranges, axes, hovers.

References are the input arrays themselves (what a trace must carry) and numpy recomputations
(medians, ranges); orientation is pinned with single hot cells pushed through summaries.py.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import plotly.graph_objects as go
import pytest

from coherence.analysis import figures as F
from coherence.analysis.figures.theme import COLORSCALE, group_color
from coherence.analysis.scores import compute_scores
from coherence.analysis.summaries import (
    class_transfer_matrix,
    influence_vs_distance,
    lag_curves,
    rollout_summary,
    training_curves,
    two_time_map,
)
from coherence.errors import RequestError

S, B, T, C = 3, 2, 5, 3
N = T * C
TIMES = np.array([0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.fixture(scope="module")
def h_std() -> np.ndarray:
    rng = np.random.default_rng(0)
    h = rng.normal(size=(S, B, T, C, T, C))
    for t in range(T):
        for c in range(C):
            h[:, :, t, c, t, c] += 3.0
    return h


@pytest.fixture(scope="module")
def distance_curve(h_std):
    inputs = np.random.default_rng(1).normal(size=(B, N, 2, 4, 4))
    return influence_vs_distance(h_std, inputs, bins=8)


def _colorscale(value) -> list[list]:
    return [[float(p), str(c)] for p, c in value]


def _axis_titles(fig: go.Figure) -> dict[str, str]:
    layout = fig.layout.to_plotly_json()
    return {
        k: (v.get("title") or {}).get("text", "")
        for k, v in layout.items()
        if k.startswith(("xaxis", "yaxis"))
    }


def all_figures(h_std, distance_curve) -> dict[str, go.Figure]:
    rng = np.random.default_rng(2)
    curves = lag_curves(h_std)
    hist = [
        [{"epoch": e, "train_smse": 1 / (e + 1 + s), "valid_smse": 2 / (e + 1)} for e in range(6)]
        for s in range(3)
    ]
    one = rng.uniform(0.01, 0.02, (4, 5))
    eps = np.logspace(-5, -1, 5)
    scatter, curve = F.counterfactual_figures(
        eps, rng.normal(size=(5, 7)), rng.normal(size=(5, 7)), eps * 3
    )
    return {
        "two_time": F.two_time_heatmap(two_time_map(h_std), TIMES, N, steps=np.arange(T)),
        "class": F.class_transfer_heatmap(class_transfer_matrix(h_std), ["a", "b", "c"], N),
        "lag": F.lag_curves_figure([("UNet", curves), ("ViT", curves)]),
        "distance": F.distance_figure(distance_curve),
        "box": F.top_eigenvalue_figure({"UNet": rng.uniform(1, 9, (S, B))}),
        "spectrum": F.subspace_spectrum_figure({"UNet": rng.uniform(0.1, 2, (S, B, N))}),
        "training": F.training_curves_figure({"UNet": training_curves(hist)}),
        "rollout": F.rollout_figure({"UNet": rollout_summary(one, np.cumsum(one, axis=1))}),
        "field": F.field_viewer(rng.normal(size=(2, 6, 6)), rng.normal(size=(2, 6, 6)), "uv"),
        "animation": F.snapshot_animation(rng.normal(size=(T, 2, 6, 6)), TIMES, ["u", "v"]),
        "cf_scatter": scatter,
        "cf_curve": curve,
        "compare": F.side_by_side(
            F.two_time_heatmap(two_time_map(h_std), TIMES, N),
            F.two_time_heatmap(-two_time_map(h_std), TIMES, N),
            ("UNet", "ViT"),
        ),
    }


# ------------------------------------------------------------------ shared promises -------


def test_every_axis_titled_and_every_hover_explicit(h_std, distance_curve):
    for name, fig in all_figures(h_std, distance_curve).items():
        titles = _axis_titles(fig)
        assert titles, name
        for axis, text in titles.items():
            assert text.strip(), f"{name}: {axis} has no title"
        for trace in fig.data:
            if trace.hoverinfo == "skip":
                continue
            assert trace.hovertemplate and "%{" in trace.hovertemplate, (name, trace.name)
        assert fig.layout.template.layout.paper_bgcolor is not None, name  # theme applied
        if fig.layout.title.text and fig.layout.title.xanchor == "left":
            # an exported PNG has no page margin: the title stands clear of the left edge
            assert fig.layout.title.x > 0 or fig.layout.title.pad.l >= 8, name


def test_builders_import_neither_streamlit_nor_torch():
    code = (
        "import sys, coherence.analysis.figures, coherence.analysis.exports; "
        "print(sorted(m for m in ('streamlit', 'torch', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_influence_range_and_shared_zrange():
    assert F.influence_range(48) == (0.0, math.sqrt(48))
    for bad in (0, 2.5, True):
        with pytest.raises(RequestError, match="n_examples"):
            F.influence_range(bad)
    a, b = np.array([[0.5, np.nan], [2.0, -1.0]]), np.array([3.0, np.inf])
    assert F.shared_zrange(a, b) == (-1.0, 3.0)
    assert F.shared_zrange(a, b, symmetric=True) == (-3.0, 3.0)
    assert F.shared_zrange(np.full(3, 2.0)) == (1.0, 3.0)  # constant: widened, never empty
    with pytest.raises(RequestError, match="finite"):
        F.shared_zrange(np.array([np.nan]))


# --------------------------------------------------------------------- heatmaps -----------


def test_two_time_heatmap_orientation_range_and_hover():
    v = np.zeros((4, 4))
    v[2, 0] = 5.0  # response time index 2, perturbation time index 0
    times = TIMES[:4]
    fig = F.two_time_heatmap(v, times, 16, steps=[3, 4, 5, 6])
    (trace,) = fig.data
    assert isinstance(trace, go.Heatmap)
    z = np.asarray(trace.z)
    assert z[2][0] == 5.0 and z.sum() == 5.0
    np.testing.assert_array_equal(trace.x, times)  # columns = perturbation time
    np.testing.assert_array_equal(trace.y, times)  # rows = response time
    assert (trace.zmin, trace.zmax) == (0.0, 4.0)  # [0, √N], N = 16
    assert _colorscale(trace.colorscale) == COLORSCALE
    assert fig.layout.xaxis.title.text == "perturbation time t_p"
    assert fig.layout.yaxis.title.text == "response time t_r"
    assert fig.layout.yaxis.autorange in (None, True)  # y increases upward
    assert list(fig.layout.xaxis.ticktext) == ["0", "0.05", "0.1", "0.15"]
    for token in ("t_p = %{x", "t_r = %{y", "Ĥ = %{z"):
        assert token in trace.hovertemplate
    assert trace.text[2][0] == "step_p = 3, step_r = 5"
    zoomed = F.two_time_heatmap(v, times, 16, zrange=(-1.0, 2.0))
    assert (zoomed.data[0].zmin, zoomed.data[0].zmax) == (-1.0, 2.0)


def test_two_time_heatmap_follows_summaries_layout():
    h = np.zeros((1, 1, T, C, T, C))
    h[0, 0, 3, :, 1, :] = np.eye(C)  # Ĥ[t_r = 3, b, t_p = 1, b] = 1 for every class b
    z = np.asarray(F.two_time_heatmap(two_time_map(h), TIMES, N).data[0].z)
    expected = np.zeros((T, T))
    expected[3, 1] = 1.0
    np.testing.assert_array_equal(z, expected)


def test_two_time_heatmap_rejects_bad_input():
    with pytest.raises(RequestError, match="times"):
        F.two_time_heatmap(np.zeros((3, 3)), TIMES, 9)
    with pytest.raises(RequestError, match="increase"):
        F.two_time_heatmap(np.zeros((3, 3)), [0.0, 0.2, 0.1], 9)
    with pytest.raises(RequestError, match="zrange"):
        F.two_time_heatmap(np.zeros((3, 3)), [0.0, 0.1, 0.2], 9, zrange=(1.0, 1.0))


def test_class_transfer_heatmap_labels_and_cells():
    m = np.arange(9.0).reshape(3, 3)
    h = np.zeros((1, 1, 2, 3, 2, 3))
    h[0, 0, :, 1, :, 0] = 7.0  # response class 1, perturbation class 0
    fig = F.class_transfer_heatmap(class_transfer_matrix(h), ["RP", "CRP", "RPUI"], 6)
    (trace,) = fig.data
    assert np.asarray(trace.z)[1][0] == 7.0 and np.asarray(trace.z).sum() == 7.0
    assert list(trace.x) == list(trace.y) == ["RP", "CRP", "RPUI"]
    assert fig.layout.xaxis.title.text == "perturbation class (column)"
    assert fig.layout.yaxis.title.text == "response class (row)"
    assert fig.layout.yaxis.autorange == "reversed"  # matrix reading: first row on top
    assert trace.texttemplate == "%{z:.2f}"
    assert (trace.zmin, trace.zmax) == (0.0, math.sqrt(6))
    assert "perturbation class = %{x}" in trace.hovertemplate
    assert "response class = %{y}" in trace.hovertemplate
    with pytest.raises(RequestError, match="classes"):
        F.class_transfer_heatmap(m, ["a", "b"], 6)


def test_side_by_side_shares_one_colour_axis():
    v = np.random.default_rng(3).uniform(0, 1, (3, 3))
    a = F.two_time_heatmap(v, [0, 1, 2], 9, zrange=(0.0, 1.0))
    b = F.two_time_heatmap(3 * v, [0, 1, 2], 9, zrange=(0.0, 3.0))
    fig = F.side_by_side(a, b, ("UNet", "ViT"))
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 3.0)
    assert fig.layout.xaxis2.title.text == "perturbation time t_p"
    assert fig.layout.yaxis2.scaleanchor == "x2"
    assert [x.text for x in fig.layout.annotations] == ["UNet", "ViT"]
    assert a.data[0].zmax == 1.0  # inputs untouched
    fixed = F.side_by_side(a, b, ("UNet", "ViT"), zrange=(0.0, 2.0))
    assert (fixed.layout.coloraxis.cmin, fixed.layout.coloraxis.cmax) == (0.0, 2.0)


# ------------------------------------------------------------------------ curves ----------


def _check_band(traces, band, x):
    upper, lower, line = traces
    np.testing.assert_array_equal(upper.y, band.q3)
    np.testing.assert_array_equal(lower.y, band.q1)
    np.testing.assert_array_equal(line.y, band.median)
    np.testing.assert_array_equal(line.x, x)
    assert lower.fill == "tonexty" and upper.fill in (None, "none")
    np.testing.assert_array_equal(np.asarray(line.customdata), np.stack([band.q1, band.q3], -1))


def test_lag_curves_figure_bands_groups_and_zero_line(h_std):
    curves = lag_curves(h_std)
    fig = F.lag_curves_figure([("UNet", curves), ("ViT", curves)])
    assert len(fig.data) == 12  # 2 groups × (intra, inter) × (Q3 edge, Q1 fill, median)
    _check_band(fig.data[0:3], curves.intra, curves.lags)
    _check_band(fig.data[3:6], curves.inter, curves.lags)
    assert fig.data[2].line.dash == "solid" and fig.data[5].line.dash == "dash"
    assert fig.data[2].line.color == group_color(0) != fig.data[8].line.color
    assert fig.data[8].name == "ViT: intra-class"
    assert any(s.type == "line" and s.y0 == 0 and s.y1 == 0 for s in fig.layout.shapes)
    assert "Δ" in fig.layout.xaxis.title.text and "steps" in fig.layout.xaxis.title.text
    assert "Δ = t_r − t_p = %{x} steps" in fig.data[2].hovertemplate
    single = lag_curves(h_std[:, :, :, :1, :, :1])  # one class: no inter-class curve
    assert len(F.lag_curves_figure(single, label="UNet").data) == 3
    with pytest.raises(RequestError, match="LagCurves"):
        F.lag_curves_figure([curves])


def test_lag_chart_zoomed_to_the_tails_frames_every_lag_but_zero(h_std):
    """The y axis spans every median and band edge at Δ ≠ 0 (and 0), not the Δ = 0 peak,
    whose medians are written above the plot; the whole curve sets no range."""
    curves = lag_curves(h_std)
    fig = F.lag_curves_figure([("UNet", curves)], axis="tails")
    lo, hi = fig.layout.yaxis.range
    off = curves.lags != 0
    tails = np.concatenate(
        [np.stack([b.median, b.q1, b.q3])[:, off].ravel() for b in (curves.intra, curves.inter)]
    )
    assert lo <= min(tails.min(), 0) and hi >= max(tails.max(), 0)
    peak = curves.intra.median[~off][0]
    assert peak > hi  # the +3 diagonal: off the zoomed axis
    (note,) = fig.layout.annotations
    assert note.text.startswith("at Δ = 0: UNet intra ") and f"{peak:.3g}" in note.text
    assert hi - lo < 1.2 * (max(tails.max(), 0) - min(tails.min(), 0))  # the 8 % margins
    whole = F.lag_curves_figure([("UNet", curves)])
    assert whole.layout.yaxis.range is None and not whole.layout.annotations
    with pytest.raises(RequestError, match="axis='log'"):
        F.lag_curves_figure(curves, axis="log")


def test_distance_figure_markers_band_and_log_x(distance_curve):
    fig = F.distance_figure(distance_curve, seed_labels=["s10", "s35", "s42"])
    assert len(fig.data) == S + 3
    for i in range(S):
        assert fig.data[i].mode == "markers"
        np.testing.assert_array_equal(fig.data[i].y, distance_curve.window_means[i])
        assert "s" in fig.data[i].hovertemplate and "pairs" in fig.data[i].hovertemplate
    assert [t.showlegend for t in fig.data[:S]] == [True, False, False]
    _check_band(fig.data[S:], distance_curve.band, distance_curve.centers)
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(RequestError, match="seed_labels"):
        F.distance_figure(distance_curve, seed_labels=["one"])


def test_top_eigenvalue_figure_drops_nan_and_uses_log_y():
    """A box from five values on; fewer (three seeds) are points and a bar at their median,
    since their quartiles would be drawn from one or two points each."""
    unet = np.array([[1.0, 2.0, 8.0], [np.nan, 4.0, 16.0]])
    fig = F.top_eigenvalue_figure({"UNet": unet, "ViT": [10.0, 20.0, 40.0]})
    assert [type(t) for t in fig.data] == [go.Box, go.Scatter, go.Scatter]
    np.testing.assert_array_equal(fig.data[0].y, [1.0, 2.0, 8.0, 4.0, 16.0])
    points, median = fig.data[1:]
    np.testing.assert_array_equal(points.y, [10.0, 20.0, 40.0])
    assert list(points.x) == ["ViT"] * 3 and list(median.x) == ["ViT"]
    assert list(median.y) == [20.0]
    assert [t.name for t in fig.data] == ["UNet", "ViT", "ViT median"]
    assert fig.layout.yaxis.type == "log"
    with pytest.raises(RequestError, match="no finite positive"):
        F.top_eigenvalue_figure({"UNet": [np.nan]})


def test_subspace_spectrum_figure_rows_median_and_padding():
    spectra = np.array([[[4.0, 2.0, 1.0, np.nan], [8.0, 2.0, 0.5, 0.25]]])  # [S=1, B=2, N=4]
    fig = F.subspace_spectrum_figure({"UNet": spectra, "ViT": [3.0, 1.0, 0.0]})
    assert len(fig.data) == 2 + 1 + 1  # UNet rows, UNet median, ViT single line
    np.testing.assert_array_equal(fig.data[0].y, [4.0, 2.0, 1.0, np.nan])
    # the median stops at the smaller rank: 0.25 alone at k = 4 is not a median of two
    np.testing.assert_allclose(fig.data[2].y, [6.0, 2.0, 0.75, np.nan])
    np.testing.assert_array_equal(fig.data[3].y, [3.0, 1.0, np.nan])  # 0 is off the log axis
    np.testing.assert_array_equal(fig.data[3].x, [1, 2, 3])
    assert fig.layout.yaxis.type == "log"
    assert tuple(fig.layout.xaxis.range) == (0.5, 4.5)  # k = 1 … 4, fitted
    assert "(series 1)" in fig.data[1].hovertemplate
    named = F.subspace_spectrum_figure(
        {"UNet": spectra},
        series_labels={"UNet": ["unet_s1, trajectory 0", "unet_s1, trajectory 3"]},
    )
    assert "(unet_s1, trajectory 3)" in named.data[1].hovertemplate
    assert "(median of 2)" in named.data[2].hovertemplate
    with pytest.raises(RequestError, match="1 series labels for 2 series"):
        F.subspace_spectrum_figure({"UNet": spectra}, series_labels={"UNet": ["one"]})
    # where one seed's rank ends, the other seeds' median rose above every descending line
    ranks = np.array([[[9.0, 8.0, 7.0]], [[9.5, 6.0, np.nan]], [[9.2, 7.5, 7.8]]])
    rising = F.subspace_spectrum_figure({"UNet": ranks}).data[-1].y
    np.testing.assert_array_equal(rising, [9.2, 7.5, np.nan])
    # a solve with no eigenvalue at all is left out of the median, not blanking it
    empty = np.array([[[5.0, 3.0, 1.0]], [[np.nan, np.nan, np.nan]], [[4.0, 2.0, 2.0]]])
    median = F.subspace_spectrum_figure({"UNet": empty}).data[-1]
    np.testing.assert_array_equal(median.y, [4.5, 2.5, 1.5])
    assert "(median of 2 of 3)" in median.hovertemplate
    single = F.subspace_spectrum_figure({"ViT": [3.0, 1.0, 0.0, np.nan]})
    assert tuple(single.layout.xaxis.range) == (0.5, 2.5)  # only positive λ_k are drawn


def test_training_and_rollout_figures():
    hist = [
        [
            {"epoch": e, "train_smse": (s + 1) / (e + 1), "valid_smse": 2 * (s + 1) / (e + 1)}
            for e in range(1, 5)
        ]
        for s in range(3)
    ]
    summary = training_curves(hist)
    fig = F.training_curves_figure({"UNet": summary, "ViT": summary})
    assert len(fig.data) == 12
    _check_band(fig.data[0:3], _band_of(summary["valid_smse"]), [1, 2, 3, 4])
    assert fig.data[5].line.dash == "dash" and fig.data[5].name == "UNet train"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.title.text == "epoch"
    # whole epochs only: two epochs were ticked 1, 1.2, 1.4, … 2
    two = F.training_curves_figure({"UNet": training_curves([row[:2] for row in hist])})
    assert (two.layout.xaxis.dtick, two.layout.xaxis.tick0) == (1, 0)
    assert tuple(two.layout.xaxis.range) == (0.5, 2.5)

    rng = np.random.default_rng(4)
    one = rng.uniform(0.01, 0.02, (6, 4))
    roll = rollout_summary(one, np.cumsum(one, axis=1))
    fig = F.rollout_figure({"UNet": roll})
    assert len(fig.data) == 6
    _check_band(fig.data[0:3], _band_of(roll["rollout"]), [1, 2, 3, 4])
    _check_band(fig.data[3:6], _band_of(roll["one_step"]), [1, 2, 3, 4])
    assert fig.layout.yaxis.type == "log" and "horizon" in fig.layout.xaxis.title.text
    assert tuple(fig.layout.xaxis.range) == (0.5, 4.5)  # h = 1 … 4, fitted
    with pytest.raises(RequestError, match="rollout"):
        F.rollout_figure({"UNet": {"horizons": [1, 2]}})
    assert not fig.layout.shapes  # no training horizon given, none marked


def test_the_rollout_figure_marks_where_training_stopped():
    one = np.full((3, 6), 0.01)
    roll = rollout_summary(one, np.cumsum(one, axis=1))
    same = F.rollout_figure({"UNet": roll, "ViT": roll}, trained_horizons={"UNet": 4, "ViT": 4})
    assert [(s.x0, s.line.dash) for s in same.layout.shapes] == [(4, "dot")]
    (said,) = [a for a in same.layout.annotations if "trained" in a.text]
    luminance = float(np.array([0.2126, 0.7152, 0.0722]) @ _relative_luminance(said.font.color))
    assert 1.05 / (luminance + 0.05) >= 4.5  # 13 px text (plotly's gray read 3.9:1)
    assert [a.text for a in same.layout.annotations if "trained" in a.text] == [
        "trained up to h = 4"
    ]
    apart = F.rollout_figure({"UNet": roll, "ViT": roll}, trained_horizons={"UNet": 2, "ViT": 5})
    assert [s.x0 for s in apart.layout.shapes] == [2, 5]
    labels = [a.text for a in apart.layout.annotations if "trained" in a.text]
    assert labels == ["trained up to h = 2 (UNet)", "trained up to h = 5 (ViT)"]
    # each label on its line's wider side: h = 2 near the axis's start reads to its right
    # (to its left it ran over the y axis's tick labels)
    sides = [a.xanchor for a in apart.layout.annotations if "trained" in a.text]
    assert sides == ["left", "right"]
    assert [s.line.color for s in apart.layout.shapes] == [group_color(0), group_color(1)]
    # a group whose horizon is unknown (converted checkpoints): the line names its group
    partial = F.rollout_figure({"UNet": roll, "ViT": roll}, trained_horizons={"ViT": 4})
    assert [a.text for a in partial.layout.annotations if "trained" in a.text] == [
        "trained up to h = 4 (ViT)"
    ]
    assert [s.line.color for s in partial.layout.shapes] == [group_color(1)]


def _band_of(d):
    from coherence.analysis.summaries import Band

    return Band(median=d["median"], q1=d["q1"], q3=d["q3"])


# ------------------------------------------------------------------------ fields ----------


def test_field_viewer_ranges_and_difference():
    rng = np.random.default_rng(5)
    truth, prediction = rng.normal(size=(3, 5, 6)), rng.normal(size=(3, 5, 6))
    fig = F.field_viewer(prediction, truth, ["rho", "mx", "E"], "mx")
    assert [type(t) for t in fig.data] == [go.Heatmap] * 3
    np.testing.assert_array_equal(fig.data[0].z, truth[1])
    np.testing.assert_array_equal(fig.data[1].z, prediction[1])
    np.testing.assert_allclose(fig.data[2].z, prediction[1] - truth[1])
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis", "coloraxis2"]
    # a signed field (momentum): diverging around zero, symmetric (a walk-through read it in
    # cividis, its zero anywhere); a positive one (density) keeps the sequential scale
    both = np.concatenate([truth[1].ravel(), prediction[1].ravel()])
    bound = np.abs(both).max()
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-bound, bound)
    assert _colorscale(fig.layout.coloraxis.colorscale) == _colorscale(F.DIVERGING)
    positive = F.field_viewer(np.abs(prediction), np.abs(truth) + 1, ["rho", "mx", "E"], 0)
    seen = np.concatenate([np.abs(truth[0]).ravel() + 1, np.abs(prediction[0]).ravel()])
    assert (positive.layout.coloraxis.cmin, positive.layout.coloraxis.cmax) == (
        seen.min(),
        seen.max(),
    )
    assert _colorscale(positive.layout.coloraxis.colorscale) == _colorscale(F.FIELD_COLORSCALE)
    undershoot = np.abs(truth) + 1
    undershoot[0, 0, 0] = -0.01  # a pixel just below zero at a shock: still a density
    dipped = F.field_viewer(np.abs(prediction) + 1, undershoot, ["rho", "mx", "E"], 0)
    assert _colorscale(dipped.layout.coloraxis.colorscale) == _colorscale(F.FIELD_COLORSCALE)
    assert dipped.layout.coloraxis.cmin == -0.01
    m = np.abs(prediction[1] - truth[1]).max()
    assert (fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax) == (-m, m)
    assert [fig.layout[f"yaxis{k}"].scaleanchor for k in ("", "2", "3")] == ["x", "x2", "x3"]
    bar_x = fig.layout.coloraxis.colorbar.x  # the shared bar sits between prediction and diff
    assert fig.layout.xaxis2.domain[1] < bar_x < fig.layout.xaxis3.domain[0]
    np.testing.assert_allclose(fig.data[0].x, (np.arange(6) + 0.5) / 6)
    same = F.field_viewer(prediction, truth, ["rho", "mx", "E"], 1)
    np.testing.assert_array_equal(same.data[2].z, fig.data[2].z)
    # a prediction that strays far (a one-epoch model at h = 20: ±20 against a density of
    # 0.9–1.5) is drawn on the truth's range, which it no longer flattens to one colour
    density = 1.2 + 0.3 * np.tanh(truth)
    stray = F.field_viewer(density * 20, density, ["rho", "mx", "E"], 0)
    assert (stray.layout.coloraxis.cmin, stray.layout.coloraxis.cmax) == (
        density[0].min(),
        density[0].max(),
    )
    assert stray.layout.annotations[1].text == "prediction: rho (100% off scale)"
    near = F.field_viewer(density * 1.1, density, ["rho", "mx", "E"], 0)  # within 2×: shared
    assert near.layout.coloraxis.cmax == pytest.approx((density[0] * 1.1).max())
    assert near.layout.annotations[1].text == "prediction: rho"
    with pytest.raises(RequestError, match="not one of"):
        F.field_viewer(prediction, truth, ["rho", "mx", "E"], "p")
    with pytest.raises(RequestError, match="share"):
        F.field_viewer(prediction[:2], truth, ["rho", "mx", "E"], 0)


def test_snapshot_animation_frames_fixed_range():
    rng = np.random.default_rng(6)
    states = rng.normal(size=(T, 2, 4, 5))
    fig = F.snapshot_animation(states, TIMES, ["u", "v"], "v", title="NS-Sines")
    assert len(fig.frames) == T
    hi = np.abs(states[:, 1]).max()  # a velocity: signed, so symmetric around zero
    lo = -hi
    for k, frame in enumerate(fig.frames):
        (trace,) = frame.data
        np.testing.assert_array_equal(trace.z, states[k, 1])
        assert (trace.zmin, trace.zmax) == (lo, hi)
        assert frame.name == str(k)
    assert (fig.data[0].zmin, fig.data[0].zmax) == (lo, hi)
    (slider,) = fig.layout.sliders
    assert [list(s.args[0]) for s in slider.steps] == [[str(k)] for k in range(T)]
    assert slider.steps[2].label == "t = 0.1"
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.method for b in buttons] == ["animate", "animate"]
    assert fig.frames[3].layout.title.text == "NS-Sines t = 0.15"
    with pytest.raises(RequestError, match="snapshots"):
        F.snapshot_animation(states, TIMES[:3], ["u", "v"], 0)


# -------------------------------------------------------------------- validation ----------


def test_counterfactual_figures_pick_smallest_eps_and_log_axes():
    eps = np.array([1e-2, 1e-4, 1e-3])  # unsorted on purpose
    predicted = np.arange(12.0).reshape(3, 4)
    measured = predicted + 0.5
    rel = np.array([2e-2, 2e-4, 2e-3])
    scatter, curve = F.counterfactual_figures(eps, predicted, measured, rel)
    np.testing.assert_array_equal(scatter.data[0].x, predicted[1])  # ε = 1e-4
    np.testing.assert_array_equal(scatter.data[0].y, measured[1])
    identity = scatter.data[1]
    assert list(identity.x) == list(identity.y) == [4.0, 7.5]
    assert "ε = 1.0e-04" in scatter.layout.title.text
    np.testing.assert_array_equal(curve.data[0].x, [1e-4, 1e-3, 1e-2])
    np.testing.assert_array_equal(curve.data[0].y, [2e-4, 2e-3, 2e-2])
    reference = curve.data[1]
    np.testing.assert_allclose(np.asarray(reference.y) / np.asarray(reference.x), 2.0)
    assert curve.layout.xaxis.type == curve.layout.yaxis.type == "log"
    banded = F.counterfactual_figures(eps, predicted[1], measured[1], np.ones((3, 4)))[1]
    assert len(banded.data) == 3 + 1 and banded.data[1].fill == "tonexty"
    # half a page wide: powers of ten only over four decades of ε (1, 2, 5 × 10ᵏ wrote
    # eleven labels into each other), and the y axis spans the band, not every pair
    wide = np.logspace(-2, np.log10(5e-6), 11)
    errors = np.outer(wide, [1e-3, 1.0, 2.0, 3.0, 1e3])  # one pair far below, one far above
    _, spread = F.counterfactual_figures(wide, wide, wide, errors)
    ticks = np.log10(spread.layout.xaxis.tickvals)
    np.testing.assert_allclose(ticks, np.round(ticks))
    lo, hi = spread.layout.yaxis.range
    assert 10**lo > 1e-3 * wide.min() and 10**hi < 1e3 * wide.max()
    assert spread.layout.legend.orientation == "h"
    with pytest.raises(RequestError, match="leading axis"):
        F.counterfactual_figures(eps, np.zeros((2, 4)), np.zeros((2, 4)), rel)


def test_scores_table_rows_and_censoring(h_std):
    scores = compute_scores(h_std)
    fig = F.scores_table({"UNet": scores, "ViT": scores})
    (table,) = fig.data
    assert isinstance(table, go.Table)
    header, rows = F.score_rows({"UNet": scores, "ViT": scores})
    assert header == ["score", "definition", "UNet: median [Q1, Q3]", "ViT: median [Q1, Q3]"]
    assert [r[0] for r in rows] == [F.score_title(s.name) for s in scores.as_list()]
    assert not any("_" in r[0] for r in rows)  # readable names, not ids
    dd = scores.diagonal_dominance
    digits = len(rows[0][2].split()[0].split(".")[1])  # one precision for the three
    assert rows[0][2] == f"{dd.median:.{digits}f} [{dd.q1:.{digits}f}, {dd.q3:.{digits}f}]"
    assert list(table.cells.values[0]) == [r[0] for r in rows]
    flat = np.zeros((1, 1, 3, 1, 3, 1))
    flat[..., :, 0, :, 0] = 1.0  # constant map: decay never reached, censored at T − 1
    _, censored_rows = F.score_rows({"flat": compute_scores(flat)})
    decay = next(r for r in censored_rows if r[0].startswith("lag decay length"))
    assert decay[2] == "≥ 2.00 [≥ 2.00, ≥ 2.00] (1 of 1 lower bounds)"
    with pytest.raises(RequestError, match="Scores"):
        F.scores_table({})


def test_score_table_cells_share_the_other_groups_precision_as_the_page_header_does(h_std):
    """The header wrote ViT's 0.038 beside UNet's 0.9324 while the Scores tab's table said
    0.04: a group's cell is now as wide as the other groups', as ``format_score`` with peers
    writes it on the page."""
    from coherence.analysis.verdict import format_score, quartile_band, score_peers

    coarse = compute_scores(h_std)
    # seeds that nearly agree: quartiles a few 1e-3 apart need more decimals
    jitter = 2e-2 * np.random.default_rng(5).normal(size=h_std.shape)
    fine = compute_scores(np.broadcast_to(h_std[:1], h_std.shape) + jitter)
    by_group = {"UNet": fine, "ViT": coarse}
    _, rows = F.score_rows(by_group)
    widened = 0
    for g, (label, scores) in enumerate(by_group.items()):
        peers = score_peers(by_group, label)
        for ref_name, others in peers.items():
            score = getattr(scores, ref_name)
            row = next(r for r in rows if r[0] == F.score_title(ref_name))
            cell = row[2 + g].split(" (")[0]  # censoring note aside
            assert cell == f"{format_score(score, others)} {quartile_band(score, others)}"
            widened += format_score(score, others) != format_score(score)
    assert widened  # the case arises here: some cell took its peer's precision


# ------------------------------------------------------------- issue 16: fit and scales ---


def test_heatmap_axes_span_exactly_the_cells():
    fig = F.two_time_heatmap(np.ones((5, 5)), TIMES, N)
    half = 0.025  # half the 0.05 spacing: plotly draws cells centred on the times
    assert fig.layout.xaxis.range == pytest.approx((-half, 0.2 + half))
    assert fig.layout.yaxis.range == pytest.approx((-half, 0.2 + half))
    assert fig.layout.xaxis.constrain == fig.layout.yaxis.constrain == "domain"
    assert fig.layout.yaxis.scaleanchor == "x"  # square cells: the domain shrinks instead
    m = F.class_transfer_heatmap(np.eye(3), ["a", "b", "c"], 9)
    assert m.layout.xaxis.range == (-0.5, 2.5) and m.layout.xaxis.constrain == "domain"
    both = F.side_by_side(fig, fig, ("A", "B"))
    assert both.layout.xaxis2.range == pytest.approx((-half, 0.2 + half))
    assert both.layout.xaxis2.constrain == "domain"


def test_colour_scale_modes():
    v = np.array([[2.0, -1.0], [0.5, 3.0]])
    paper = F.two_time_heatmap(v, [0, 1], 4).data[0]
    assert (paper.zmin, paper.zmax) == (0.0, 2.0)  # [0, √N], N = 4
    auto = F.two_time_heatmap(v, [0, 1], 4, scale="auto").data[0]
    assert (auto.zmin, auto.zmax) == (-1.0, 3.0)
    div = F.two_time_heatmap(v, [0, 1], 4, scale="diverging").data[0]
    assert (div.zmin, div.zmax) == (-3.0, 3.0)
    assert _colorscale(div.colorscale) == _colorscale(F.DIVERGING)
    m = F.class_transfer_heatmap(v, ["a", "b"], 4, scale="diverging").data[0]
    assert (m.zmin, m.zmax) == (-3.0, 3.0)
    with pytest.raises(RequestError, match="scale='rainbow'"):
        F.two_time_heatmap(v, [0, 1], 4, scale="rainbow")


def test_difference_heatmap_is_a_minus_b_on_a_symmetric_scale():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[0.5, 0.2], [0.0, 2.0]])
    trace = F.difference_heatmap(a, b, [0.0, 0.1], ("UNet", "ViT")).data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), a - b)
    assert (trace.zmin, trace.zmax) == (-1.0, 1.0)
    assert "UNet" in trace.hovertemplate and "ViT" in trace.hovertemplate
    with pytest.raises(RequestError, match="share"):
        F.difference_heatmap(a, np.ones((3, 3)), [0.0, 0.1])


def test_log_axes_label_every_tick_in_full():
    settings = F.log_axis(np.array([0.004, 0.3]), title="SMSE")
    assert settings["type"] == "log"
    assert settings["ticktext"] == [F.number_label(v) for v in settings["tickvals"]]
    assert "0.005" in settings["ticktext"] and "0.2" in settings["ticktext"]
    assert all(len(t) > 1 for t in settings["ticktext"])  # never a bare mantissa digit
    big = F.log_axis(np.array([2.9e6, 3e6, 3.1e6]), title="λ")  # narrow: round values
    assert big["ticktext"] == ["2.9×10⁶", "3×10⁶", "3.1×10⁶"]
    assert big["tickvals"] == [2.9e6, 3e6, 3.1e6]
    mixed = F.log_axis(np.array([2e4, 3e6]), title="λ")["ticktext"]  # one notation
    assert "2×10⁴" in mixed and "5×10⁴" in mixed and not any(t.isascii() for t in mixed)
    for data in ([0.9131, 0.9135], [2.93e6, 2.96e6], [41.2, 41.9], [2310, 2470]):  # narrow
        axis = F.log_axis(np.array(data), title="λ")
        ticks = axis["tickvals"]
        inside = [v for v in ticks if data[0] <= v <= data[1]]
        assert len(inside) >= 2 or len(ticks) >= 3, (data, ticks)
        assert len(set(axis["ticktext"])) == len(axis["ticktext"]), axis["ticktext"]
        # the first and last labels frame the data, and the axis spans exactly them: no value
        # lies above the top label or below the bottom one
        assert ticks[0] <= data[0] and ticks[-1] >= data[-1], (data, ticks)
        low, high = axis["range"]
        assert low <= np.log10(ticks[0]) < np.log10(ticks[-1]) <= high
        assert high - low < 1.1 * (np.log10(ticks[-1]) - np.log10(ticks[0]))
        assert np.allclose(np.diff(ticks), ticks[1] - ticks[0])  # evenly spaced round values
    # any range, any magnitude: the outer labels frame the data and the axis spans them (the
    # NTK spectrum's top value sat above its last label, 2×10⁶ under 2.9×10⁶)
    spectrum = F.log_axis(np.array([6e3, 2.9e6]), title="λ")
    assert spectrum["tickvals"][0] == 5e3 and spectrum["tickvals"][-1] == 5e6
    rng = np.random.default_rng(1)
    for _ in range(3000):
        low = 10 ** rng.uniform(-300, 300)
        high = low * (1 + 10 ** rng.uniform(-14, 1.5))
        axis = F.log_axis(np.array([low, high]), title="λ")
        ticks = axis["tickvals"]
        assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 9, (low, high)
        assert np.log10(ticks[0]) >= axis["range"][0] and np.log10(ticks[-1]) <= axis["range"][1]
        assert len(set(axis["ticktext"])) == len(ticks), (low, high, axis["ticktext"])
    assert F.log_axis(np.array([5e-324, 1e-323]), title="λ") == {  # subnormal: nothing to draw
        "type": "log",
        "title": {"text": "λ"},
    }
    small_and_large = F.log_axis(np.array([1e-9, 1e3]), title="λ")["ticktext"]
    assert not any(t.isascii() for t in small_and_large)  # 10⁻³, not 0.001 beside 10⁻⁵
    wide = F.log_axis(np.array([1e-9, 1e3]), title="λ")["ticktext"]
    assert wide[0] == "10⁻⁹" and all("×" not in t for t in wide)
    assert F.number_label(2e-5) == "2×10⁻⁵" and F.number_label(0.02) == "0.02"
    assert F.number_label(1e6) == "10⁶" and F.number_label(5000) == "5000"
    assert all("e" not in t for t in F.log_axis([200, 2e4], title="λ")["ticktext"])


def test_compare_mode_titles_do_not_overlap(distance_curve):
    m = F.class_transfer_heatmap(np.eye(3), ["a", "b", "c"], 9)
    both = F.side_by_side(m, m, ("UNet", "ViT"))
    assert both.layout.yaxis2.showticklabels is False  # the labels are on the left already
    assert both.layout.yaxis2.title.text == "response class (row)"
    long_x = F.side_by_side(
        F.two_time_heatmap(np.eye(2), [0, 1], 4), F.two_time_heatmap(np.eye(2), [0, 1], 4)
    )
    assert long_x.layout.xaxis.title.text == "perturbation time t_p"  # short: kept per panel
    assert long_x.layout.yaxis2.showticklabels is False  # numeric rows: the times are left
    other_rows = F.side_by_side(
        F.two_time_heatmap(np.eye(2), [0, 1], 4), F.two_time_heatmap(np.eye(2), [0, 2], 4)
    )
    assert other_rows.layout.yaxis2.showticklabels is not False  # different times: shown
    d = F.distance_figure(distance_curve)
    pair = F.side_by_side(d, d, ("UNet", "ViT"))
    shared = [a.text for a in pair.layout.annotations if a.text not in ("UNet", "ViT")]
    assert shared == [d.layout.xaxis.title.text]  # one x title under both panels
    assert not pair.layout.xaxis.title.text and not pair.layout.xaxis2.title.text
    assert pair.layout.yaxis.title.text and not pair.layout.yaxis2.title.text
    assert pair.layout.legend.orientation == "h"  # below: the panels keep their width
    assert pair.layout.xaxis.type == "log"


def test_heatmap_hover_has_three_significant_digits():
    trace = F.two_time_heatmap(np.full((2, 2), 0.4), [0.0, 0.1], 4).data[0]
    assert "%{z:.3~g}" in trace.hovertemplate and ".4f" not in trace.hovertemplate  # 0.4


def test_click_targets_cover_every_cell_with_the_cells_hover():
    v = np.arange(9.0).reshape(3, 3)
    fig = F.two_time_heatmap(v, [0.0, 0.1, 0.2], 9, steps=[3, 4, 5])
    clickable = F.with_click_targets(fig)
    heatmap, targets = clickable.data
    assert fig.data[0].hoverinfo is None  # the input stays unchanged
    assert heatmap.hoverinfo == "skip" and clickable.layout.hoverdistance == -1
    np.testing.assert_array_equal(targets.x, np.tile([0.0, 0.1, 0.2], 3))
    np.testing.assert_array_equal(targets.y, np.repeat([0.0, 0.1, 0.2], 3))
    custom = np.asarray(targets.customdata)
    np.testing.assert_array_equal(custom[:, 0].astype(float), v.ravel())  # z at (t_r, t_p)
    assert custom[5, 1] == "step_p = 5, step_r = 4"  # row 1 (t_r), column 2 (t_p)
    assert "%{customdata[0]:.3~g}" in targets.hovertemplate


def test_the_drill_down_cell_is_outlined_on_its_cell_alone():
    """Row i is t_r (y) and column j is t_p (x); the outline spans the cell's own width,
    also at the map's edges and on an uneven time axis; the input figure stays unmarked."""
    times = [0.0, 0.1, 0.3]
    fig = F.two_time_heatmap(np.arange(9.0).reshape(3, 3), times, 9)
    marked = F.with_cell_marked(F.with_click_targets(fig), 2, 1)
    (rect,) = marked.layout.shapes
    assert (rect.x0, rect.x1) == pytest.approx((0.05, 0.2))  # column 1: t_p = 0.1
    assert (rect.y0, rect.y1) == pytest.approx((0.2, 0.4))  # row 2: t_r = 0.3, the last
    corner = F.with_cell_marked(fig, 0, 0).layout.shapes[0]
    assert (corner.x0, corner.x1, corner.y0, corner.y1) == pytest.approx((-0.05, 0.05) * 2)
    assert not fig.layout.shapes
    assert not F.with_cell_marked(fig, 3, 0).layout.shapes  # a stale pick: no outline


def test_the_drill_down_cell_is_outlined_on_both_maps_of_a_comparison():
    from coherence.analysis.figures.compare import side_by_side

    times = [0.0, 0.1, 0.3]
    maps = [F.two_time_heatmap(np.full((3, 3), v), times, 9) for v in (1.0, 2.0)]
    pair = F.with_cell_marked(F.with_click_targets(side_by_side(*maps)), 2, 1)
    rects = sorted(pair.layout.shapes, key=lambda r: r.xref)
    assert [(r.xref, r.yref) for r in rects] == [("x", "y"), ("x2", "y2")]
    for rect in rects:
        assert (rect.x0, rect.x1, rect.y0, rect.y1) == pytest.approx((0.05, 0.2, 0.2, 0.4))


def test_training_dynamics_validation_axis_has_labelled_log_ticks():
    from coherence.analysis.figures.dynamics import dynamics_figure
    from coherence.analysis.trends import Trend

    x = np.array([1.0, 2.0, 4.0])
    trend = Trend("diagonal_dominance", x, np.array([[0.6, 0.62], [0.7, 0.71], [0.8, 0.82]]))
    band = {"median": [0.3, 0.05, 0.01], "q1": [0.28, 0.04, 0.009], "q3": [0.32, 0.06, 0.012]}
    fig = dynamics_figure(
        {"UNet": {"diagonal_dominance": trend}}, {"UNet": {"epochs": x, "valid_smse": band}}
    )
    axis = fig.layout.yaxis2  # the second panel: validation SMSE
    assert axis.type == "log"
    assert list(axis.ticktext) == [F.number_label(v) for v in axis.tickvals]
    assert "0.01" in axis.ticktext and "0.1" in axis.ticktext  # every tick in full


def test_training_dynamics_panels_share_one_whole_epoch_axis():
    """One cached epoch (12) beside a validation curve over 1…12: every panel spans the same
    epochs, with whole-epoch ticks (an axis of its own read 11, 11.5, … 13)."""
    from coherence.analysis.figures.dynamics import dynamics_figure
    from coherence.analysis.trends import Trend

    trend = Trend("diagonal_dominance", np.array([12.0]), np.array([[0.6, 0.62]]))
    epochs = np.arange(1.0, 13.0)
    band = {q: np.linspace(0.3, 0.01, 12) for q in ("median", "q1", "q3")}
    fig = dynamics_figure(
        {"UNet": {"diagonal_dominance": trend, "decay_length": trend}},
        {"UNet": {"epochs": epochs, "valid_smse": band}},
    )
    axes = {name: fig.layout[name] for name in fig.layout if name.startswith("xaxis")}
    assert sorted(axes) == ["xaxis", "xaxis2", "xaxis3", "xaxis4"]  # a 2 × 2 grid
    for axis in axes.values():
        assert tuple(axis.range) == (0.5, 12.5)
        assert axis.dtick == 2 and axis.tick0 == 0  # ticks 2, 4, … 12: whole epochs
    assert axes.pop("xaxis").matches is None  # the others follow the first
    assert all(axis.matches == "x" for axis in axes.values())


def test_sweep_figures_put_the_top_eigenvalue_on_a_labelled_log_axis():
    """λ_max spans decades over training and λ: its panel is a log axis whose ticks read in
    full (a linear axis wrote '2.9M')."""
    from coherence.analysis.figures.dynamics import dynamics_figure, sensitivity_figure
    from coherence.analysis.trends import Trend

    x = np.array([1.0, 2.0, 4.0])
    tops = Trend("top_eigenvalue", x, np.array([[2.9e6, 3.1e6], [4e5, 5e5], [2e4, 3e4]]))
    dd = Trend("diagonal_dominance", x, np.array([[0.6, 0.62], [0.7, 0.71], [0.8, 0.82]]))
    for fig in (
        dynamics_figure({"UNet": {"diagonal_dominance": dd, "top_eigenvalue": tops}}),
        sensitivity_figure(
            {"UNet": {"diagonal_dominance": dd, "top_eigenvalue": tops}}, paper_damping=1e-4
        ),
    ):
        assert fig.layout.title.text.startswith("Scores a")  # not a panel's title
        axis = fig.layout.yaxis2  # the second panel: top eigenvalue
        assert axis.type == "log"
        assert "2×10⁴" in axis.ticktext and all("M" not in t for t in axis.ticktext)
        assert fig.layout.yaxis.type != "log"  # the dominance panel stays linear


def _dd_trend(x, values):
    from coherence.analysis.trends import Trend

    return Trend("diagonal_dominance", np.asarray(x, dtype=float), np.asarray(values, dtype=float))


def test_sensitivity_flat_series_spans_the_whole_axis_and_marks_both_lambdas():
    """euclidean ignores λ: computed at one λ, it is a line across the whole axis (a dot
    where the other series had one λ), its hover says so; the sidebar's λ gets its own mark
    where it differs from the paper's, and the marks sit behind the data."""
    from coherence.analysis.figures.dynamics import sensitivity_figure

    series = {
        "ekfac-krylov": {"diagonal_dominance": _dd_trend([1e-4], [[0.9, 0.92]])},
        "euclidean": {"diagonal_dominance": _dd_trend([1e-4], [[0.7, 0.72]])},
    }
    fig = sensitivity_figure(
        series,
        paper_damping=1e-4,
        flat=["euclidean"],
        x_span=(1e-6, 1e-1),
        selected_damping=1e-2,
    )
    low, high = fig.layout.xaxis.range
    assert (low, high) == (-6.5, -0.5)
    # six decades: a label every other one (upright in narrow panels), a grid line at each
    assert (fig.layout.xaxis.dtick, fig.layout.xaxis.minor.dtick) == (2, 1)
    (flat,) = [t for t in fig.data if t.name == "euclidean" and t.mode == "lines+markers"]
    np.testing.assert_allclose(np.log10(np.asarray(flat.x)), [low, -4, high])
    np.testing.assert_allclose(flat.y, [0.71, 0.71, 0.71])
    assert list(flat.marker.size) == [0, 7, 0]  # one marker: the λ it was computed at
    assert "computed at λ 1e-4, independent of λ" in flat.hovertemplate  # as d3 writes 1e-4
    assert flat.line.dash == "dash"
    (point,) = [t for t in fig.data if t.name == "ekfac-krylov" and t.mode == "lines+markers"]
    assert list(point.x) == [1e-4] and "median Diagonal dominance" in point.hovertemplate
    marks = {(s.x0, s.line.dash, s.layer) for s in fig.layout.shapes}
    # behind the data, not "between" (plotly.js throws on it and draws no hover layer)
    assert marks == {(1e-4, "dot", "below"), (1e-2, "dash", "below")}
    assert {s.line.width for s in fig.layout.shapes} == {2}  # wider than the grid line
    assert fig.layout.legend.itemsizing == "constant"  # the flat line's symbol is shown
    assert "dashed: the sidebar's λ = 0.01" in fig.layout.title.text
    # the top eigenvalue of η + λI depends on λ whatever the estimator: a point where it was
    # computed, not a line across the axis (a walk-through read it at λ = 1e6 off the line)
    from coherence.analysis.trends import Trend

    top = {"top_eigenvalue": Trend("top_eigenvalue", np.array([1e-4]), np.array([[3e6, 3.1e6]]))}
    fig = sensitivity_figure({"euclidean": top}, paper_damping=1e-4, flat=["euclidean"])
    (drawn,) = [t for t in fig.data if t.name == "euclidean" and t.mode == "lines+markers"]
    assert list(drawn.x) == [1e-4] and "independent of λ" not in drawn.hovertemplate
    same = sensitivity_figure(series, paper_damping=1e-4, selected_damping=1e-4)
    assert {s.line.dash for s in same.layout.shapes} == {"dot"}  # one mark when they agree


def test_sensitivity_compare_mode_colours_by_group_and_styles_by_estimator():
    """Compare mode: a group keeps its colour across the panels (its estimators differ by
    line style), where a single group's estimators each get a colour."""
    from coherence.analysis.figures.dynamics import sensitivity_figure
    from coherence.analysis.figures.theme import group_color

    trend = {"diagonal_dominance": _dd_trend([1e-4, 1e-2], [[0.9, 0.92], [0.8, 0.82]])}
    labels = ["UNet · ekfac-krylov", "UNet · krylov", "ViT · ekfac-krylov", "ViT · euclidean"]
    colors = {"UNet · ekfac-krylov": 0, "UNet · krylov": 0, "ViT · ekfac-krylov": 1}
    colors["ViT · euclidean"] = 1
    order = ("ekfac-krylov", "euclidean", "krylov", "cg rtol 1.5e-2")
    fig = sensitivity_figure(
        dict.fromkeys(labels, trend),
        paper_damping=1e-4,
        flat=["ViT · euclidean"],
        colors=colors,
        estimators={label: label.split(" · ")[1] for label in labels},
        order=order,
    )
    lines = {t.name: t.line for t in fig.data if t.mode == "lines+markers"}
    assert {name: line.color for name, line in lines.items()} == {
        name: group_color(colors[name]) for name in labels
    }
    assert [lines[n].dash for n in labels] == ["solid", "dashdot", "solid", "dash"]
    symbols = {t.name: t.marker.symbol for t in fig.data if t.mode == "lines+markers"}
    assert [symbols[n] for n in labels[:3]] == ["circle", "square", "circle"]
    # styles follow the estimator, not its place in a group: here the groups list
    # different estimators, and krylov is drawn alike in both
    groups = {
        "UNet · ekfac-krylov": ("ekfac-krylov", 0),
        "UNet · krylov": ("krylov", 0),
        "ViT · ekfac-krylov": ("ekfac-krylov", 1),
        "ViT · cg rtol 1.5e-2": ("cg rtol 1.5e-2", 1),
        "ViT · krylov": ("krylov", 1),
    }
    mixed = sensitivity_figure(
        dict.fromkeys(groups, trend),
        paper_damping=1e-4,
        colors={k: g for k, (_, g) in groups.items()},
        estimators={k: e for k, (e, _) in groups.items()},
        order=order,
    )
    style = {
        t.name: (t.line.dash, t.marker.symbol) for t in mixed.data if t.mode == "lines+markers"
    }
    assert style["UNet · krylov"] == style["ViT · krylov"] == ("dashdot", "square")
    assert style["ViT · cg rtol 1.5e-2"] == ("longdash", "triangle-up")
    assert style["UNet · ekfac-krylov"] == style["ViT · ekfac-krylov"] == ("solid", "circle")
    single = sensitivity_figure(dict.fromkeys(labels[:2], trend), paper_damping=1e-4)
    assert len({t.line.color for t in single.data if t.mode == "lines+markers"}) == 2


def test_a_settings_style_is_fixed_by_the_sweeps_table_whatever_is_drawn():
    """A setting keeps its line style and symbol whatever else is cached (styles by place
    among the drawn settings changed between views), the table's settings never share a
    symbol (five symbols made ekfac-krylov and a subspace threshold both circles), and a
    setting outside the table (a sidebar's depth) gets an open symbol of its own."""
    from coherence.analysis.figures.dynamics import sensitivity_figure, setting_style
    from coherence.dashboard.sweeps import SETTING_ORDER

    styles = [setting_style(name, SETTING_ORDER) for name in SETTING_ORDER]
    assert len({symbol for _, symbol in styles}) == len(SETTING_ORDER)
    assert len(set(styles)) == len(SETTING_ORDER)
    extra = setting_style("ekfac-krylov depth 2", SETTING_ORDER)
    assert extra[1].endswith("-open") and extra == setting_style("ekfac-krylov depth 2")
    trend = {"diagonal_dominance": _dd_trend([1e-4, 1e-2], [[0.9, 0.92], [0.8, 0.82]])}

    def drawn(names: list[str]) -> dict[str, tuple[str, str]]:
        fig = sensitivity_figure(
            dict.fromkeys(names, trend), paper_damping=1e-4, order=SETTING_ORDER
        )
        return {
            t.name: (t.line.dash, t.marker.symbol) for t in fig.data if t.mode == "lines+markers"
        }

    alone = drawn(["cg rtol 1.5e-2"])
    beside = drawn(["ekfac-krylov", "subspace", "cg rtol 1.5e-2"])
    assert alone["cg rtol 1.5e-2"] == beside["cg rtol 1.5e-2"]
    assert beside["ekfac-krylov"] != drawn(["subspace energy 1 − 1e-2"])["subspace energy 1 − 1e-2"]


def test_agreement_map_is_drawn_on_the_maps_own_scale():
    """A small difference stays pale: the colour range is ±max|V| of the two maps (not
    ±max|ΔV|, which painted any difference at full strength), and the titles give both
    correlations and the largest difference as a share of the maps."""
    from coherence.analysis.figures.dynamics import agreement_figure
    from coherence.analysis.trends import agreement

    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(1, 1, 4, 2, 4, 2))) * 3
    b = a + 0.01 * rng.normal(size=a.shape)
    found = agreement(a, b)
    fig = agreement_figure(found, ("x", "y"), damping=1e-2)
    (heatmap,) = [t for t in fig.data if t.type == "heatmap"]
    assert (heatmap.zmin, heatmap.zmax) == (-found.scale, found.scale)
    assert found.max_difference < 0.05 * found.scale
    titles = " ".join(a.text for a in fig.layout.annotations)
    assert f"Pearson over all entries {found.pearson:.2f}" in titles
    assert f"{found.max_difference / found.scale:.0%} of the maps'" in titles
    assert fig.layout.title.text.startswith("Agreement at λ = 0.01: x vs y")
    grouped = agreement_figure(found, ("x", "y"), group="ViT", color_index=1)  # compare mode
    assert grouped.layout.title.text.startswith("Agreement: ViT · x vs y")  # names it, in its
    assert grouped.data[0].marker.color == group_color(1) != fig.data[0].marker.color  # colour
    # the largest difference with the caption's three digits (4.02 read "4" in the title)
    assert f"max |ΔĤ| {found.max_difference:.3g} = " in titles
    # the histogram counts every seed's and batch's rows, and says so (3 seeds of N = 48
    # gave bars of up to 144 under "rows")
    assert fig.layout.yaxis.title.text == "rows"  # one seed, one batch: rows as they are
    pooled = agreement(np.concatenate([a] * 3), np.concatenate([b] * 3))
    fig = agreement_figure(pooled, ("x", "y"))
    assert fig.layout.yaxis.title.text == "rows (of 3 seeds)"
    assert fig.data[0].hovertemplate == "ρ %{x}<br>%{y} rows (of 3 seeds)<extra></extra>"


def test_epoch_maps_share_one_scale_and_label_times_on_the_first_column_only():
    """Small multiples across epochs: one colour range [0, √N] (a ridge's change reads across
    maps), square cells, and time ticks on the first column only (at 1024 px a map's labels
    touched its left neighbour)."""
    from coherence.analysis.figures.dynamics import epoch_heatmaps
    from coherence.analysis.figures.theme import square_width

    maps = [np.full((3, 3), float(k)) for k in range(5)]
    fig = epoch_heatmaps(maps, [1, 2, 4, 8, 12], 16, times=[0.0, 0.05, 0.1])
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert {(t.zmin, t.zmax) for t in heatmaps} == {(0.0, 4.0)}
    assert [t.showscale for t in heatmaps] == [True] + [False] * 4
    shown = [fig.layout[f"yaxis{'' if i == 0 else i + 1}"].showticklabels for i in range(5)]
    assert shown == [True, False, False, False, True]  # 4 per row: maps 1 and 5 start rows
    assert [a.text for a in fig.layout.annotations][:5] == [f"epoch {e}" for e in (1, 2, 4, 8, 12)]
    assert fig.layout.width is None  # several maps fill the tab
    one = epoch_heatmaps(maps[:1], [12], 16, times=[0.0, 0.05, 0.1])
    assert one.layout.width == square_width(one)  # one map keeps its colour bar beside it


def test_dynamics_lines_at_another_lambda_keep_their_groups_colour_dashed():
    from coherence.analysis.figures.dynamics import dynamics_figure
    from coherence.analysis.figures.theme import group_color

    line = {"diagonal_dominance": _dd_trend([1.0, 2.0], [[0.9, 0.91], [0.8, 0.82]])}
    labels = ["UNet · λ = 0.0001", "ViT · λ = 0.0001", "UNet · λ = 0.01", "ViT · λ = 0.01"]
    colors = dict(zip(labels, (0, 1, 0, 1), strict=True))
    fig = dynamics_figure(dict.fromkeys(labels, line), colors=colors, dashed=labels[2:])
    drawn = {t.name: t.line for t in fig.data if t.mode == "lines+markers"}
    assert {n: (ln.color, ln.dash) for n, ln in drawn.items()} == {
        n: (group_color(colors[n]), "dash" if n in labels[2:] else "solid") for n in labels
    }
    # the validation curve, drawn once with the selection's lines, says it has no λ
    band = {"median": [0.3, 0.2], "q1": [0.25, 0.15], "q3": [0.35, 0.25]}
    valid = {labels[0]: {"epochs": [1.0, 2.0], "valid_smse": band}}
    fig = dynamics_figure(dict.fromkeys(labels, line), valid, colors=colors, dashed=labels[2:])
    (curve,) = [
        t for t in fig.data if t.mode == "lines+markers" and "validation" in t.hovertemplate
    ]
    assert list(curve.text) == ["<br>training's validation error, independent of λ"] * 2
    alone = dynamics_figure({labels[0]: line}, valid)  # no overlay: nothing to say
    (curve,) = [
        t for t in alone.data if t.mode == "lines+markers" and "validation" in t.hovertemplate
    ]
    assert curve.text is None


def test_a_censored_decay_length_says_so_on_hover():
    from coherence.analysis.figures.dynamics import dynamics_figure, sensitivity_figure
    from coherence.analysis.trends import Trend

    x = np.array([1.0, 2.0])
    decay = Trend(
        "decay_length", x, np.array([[16.0, 16.0], [3.0, 4.0]]), np.array([[1, 1], [0, 0]])
    )
    for fig in (
        dynamics_figure({"ViT": {"decay_length": decay}}),
        sensitivity_figure({"ViT": {"decay_length": decay}}, paper_damping=1e-4),
    ):
        (line,) = [t for t in fig.data if t.mode == "lines+markers"]
        assert list(line.text) == [
            "<br>≥: 100% of the (seed, batch) values censored at the window",
            "",
        ]
        assert "%{text}" in line.hovertemplate
    # and on the chart: the censored epoch's median is a triangle pointing up (the score
    # cards write '≥'; a plain point read as the value itself); the sensitivity chart keeps
    # its one symbol per estimator setting
    drawn = dynamics_figure({"ViT": {"decay_length": decay}}).data
    (line,) = [t for t in drawn if t.mode == "lines+markers"]
    assert list(line.marker.symbol) == ["triangle-up", "circle"]
    # the sensitivity chart marks it with an arrow up from a bar instead (its markers are the
    # settings' symbols: a flat euclidean line at T − 1 read as a measured value)
    drawn = sensitivity_figure({"ViT": {"decay_length": decay}}, paper_damping=1e-4).data
    (bound,) = [t for t in drawn if t.name == "≥: median only a lower bound"]
    assert list(bound.x) == [1.0] and list(bound.y) == [16.0]
    assert bound.marker.symbol == "arrow-bar-up-open" and "≥ %{y:.4g}" in bound.hovertemplate


def test_a_median_above_every_censored_seed_is_exact():
    """Censored seeds above the median leave it exact: no '≥' (and no triangle), but the
    hover still counts them; below or at it, the median is a bound."""
    from coherence.analysis.figures.dynamics import dynamics_figure, sensitivity_figure
    from coherence.analysis.trends import Trend

    per_seed = np.array([[2.0, 3.0, 15.0], [2.0, 15.0, 15.0]])
    shares = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    decay = Trend("decay_length", np.array([1e-4, 1e-2]), per_seed, shares)
    assert decay.median_bounds() == [False, True]
    assert decay.notes() == [
        "33% of the (seed, batch) values censored at the window, above the median, which is exact",
        "≥: 67% of the (seed, batch) values censored at the window",
    ]
    (line,) = [
        t
        for t in dynamics_figure({"ViT": {"decay_length": decay}}).data
        if t.mode == "lines+markers"
    ]
    assert list(line.marker.symbol) == ["circle", "triangle-up"]
    drawn = sensitivity_figure({"ViT": {"decay_length": decay}}, paper_damping=1e-4).data
    (bound,) = [t for t in drawn if t.name == "≥: median only a lower bound"]
    assert list(bound.x) == [1e-2]


def test_a_lone_point_shows_its_quartiles_as_a_bar():
    """A fill has no area at a lone x (one epoch cached, one λ): its Q1–Q3 is drawn as a
    bar from Q1 to Q3 there, and nowhere a band can show it."""
    from coherence.analysis.figures.theme import band_traces

    x = np.array([1.0, 2.0, 4.0, 8.0])
    median = np.array([0.5, np.nan, 0.6, 0.7])
    q1, q3 = median - 0.1, median + np.array([0.2, 0.2, 0.3, 0.3])
    traces = band_traces(x, median, q1, q3, name="ViT", color=group_color(0))
    assert [t.name for t in traces] == ["ViT Q3", "ViT Q1–Q3", "ViT Q1–Q3", "ViT"]
    (bars,) = [t for t in traces if t.error_y.array is not None]
    np.testing.assert_array_equal(bars.x, [1.0])  # epoch 1 only: 4 and 8 form a band
    np.testing.assert_allclose(bars.y, [0.5])
    np.testing.assert_allclose(bars.error_y.array, [0.2])  # up to Q3
    np.testing.assert_allclose(bars.error_y.arrayminus, [0.1])  # down to Q1
    assert bars.legendgroup == "ViT" and bars.hoverinfo == "skip"
    assert traces[-1].mode == "lines+markers"  # the median on top, its hover intact
    one = band_traces([12.0], [0.3], [0.29], [0.31], name="UNet", color=group_color(1))
    assert len(one) == 4 and one[2].error_y.array is not None
    full = band_traces(x[2:], median[2:], q1[2:], q3[2:], name="ViT", color=group_color(0))
    assert len(full) == 3  # every point has a neighbour: the band alone


def test_a_near_constant_score_is_not_stretched_over_its_whole_panel():
    """A share that moved 0.457 → 0.473 filled its panel under autorange and read as a large
    change: a linear panel spans at least 20% of its values' magnitude; a score that moves
    more keeps autorange, and the log panels their own range."""
    from coherence.analysis.figures.dynamics import sensitivity_figure
    from coherence.analysis.trends import Trend

    x = np.array([1e-4, 1e-2])
    flat = Trend("dominant_share", x, np.array([[0.457, 0.46, 0.465], [0.47, 0.473, 0.468]]))
    moving = _dd_trend(x, [[0.3, 0.32], [0.8, 0.82]])
    tops = Trend("top_eigenvalue", x, np.array([[2.9e6, 3.0e6], [2.95e6, 3.0e6]]))
    fig = sensitivity_figure(
        {"ViT": {"diagonal_dominance": moving, "dominant_share": flat, "top_eigenvalue": tops}},
        paper_damping=1e-4,
    )
    titles = [a.text for a in fig.layout.annotations]
    axes = {t: fig.layout["yaxis" + (str(i + 1) if i else "")] for i, t in enumerate(titles[:3])}
    share = next(a for t, a in axes.items() if "share" in t.lower())
    lo, hi = share.range
    assert hi - lo == pytest.approx(0.2 * (0.457 + 0.473) / 2)  # the data's middle ± 10%
    assert lo < 0.457 and hi > 0.473  # every value inside
    dominance = next(a for t, a in axes.items() if "dominance" in t.lower())
    assert dominance.range is None  # it moves 0.3 → 0.8: autorange
    assert next(a for t, a in axes.items() if "eigenvalue" in t.lower()).type == "log"


def test_share_panels_stop_at_one_and_a_flat_eigenvalue_reads_flat():
    """The diagonal dominance's axis ran to 1.05 (a score that cannot pass 1), and a top
    eigenvalue constant to 8 digits got ticks "2.82527635×10⁵": a flat line read as a jump."""
    from coherence.analysis.figures.dynamics import dynamics_figure, sensitivity_figure
    from coherence.analysis.trends import Trend

    x = np.array([1e-4, 1e-2])
    trends = {
        "diagonal_dominance": Trend(
            "diagonal_dominance", x, np.array([[0.93, 0.95], [0.92, 0.96]])
        ),
        "top_eigenvalue": Trend(
            "top_eigenvalue", x, np.array([[282527.63, 282527.64], [282527.64, 282527.65]])
        ),
    }
    for fig in (
        sensitivity_figure({"a": trends}, paper_damping=1e-4),
        dynamics_figure({"a": trends}),
    ):
        dominance, eigen = fig.layout.yaxis, fig.layout.yaxis2
        assert dominance.autorangeoptions.maxallowed == 1.0
        assert dominance.range is None or dominance.range[1] <= 1.0
        assert all(len(text) <= 8 for text in eigen.ticktext), eigen.ticktext
        low, high = (10**v for v in eigen.range)
        assert high / low >= 1.2


def _relative_luminance(color: str) -> np.ndarray:
    rgb = np.array([int(color.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)]) / 255
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def test_group_colours_read_on_white_and_under_colour_blindness():
    """Lines and markers need 3:1 against the white plot (WCAG 1.4.11): plotly's D3 put
    orange (2.5:1) second, the ViT's colour in every compare chart, and its third and fourth
    colours (green, red) fell together under deuteranopia. Machado et al. (2009) severity-1
    matrices simulate the three dichromacies; CIE76 ΔE over 15 tells two lines apart."""
    from itertools import combinations

    from coherence.analysis.figures.theme import GROUP_COLORS

    simulations = {
        "normal": np.eye(3),
        "deuteranopia": np.array(
            [[0.367, 0.861, -0.228], [0.280, 0.673, 0.047], [-0.012, 0.043, 0.969]]
        ),
        "protanopia": np.array(
            [[0.152, 1.053, -0.205], [0.115, 0.786, 0.099], [-0.004, -0.048, 1.052]]
        ),
        "tritanopia": np.array(
            [[1.256, -0.077, -0.179], [-0.078, 0.931, 0.148], [0.005, 0.691, 0.304]]
        ),
    }
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )

    def lab(linear: np.ndarray) -> np.ndarray:
        t = to_xyz @ np.clip(linear, 0, 1) / np.array([0.9505, 1.0, 1.089])
        f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    for color in GROUP_COLORS:
        luminance = float(np.array([0.2126, 0.7152, 0.0722]) @ _relative_luminance(color))
        assert 1.05 / (luminance + 0.05) >= 3.0, color
    for name, matrix in simulations.items():
        for a, b in combinations(GROUP_COLORS, 2):
            seen = [lab(matrix @ _relative_luminance(c)) for c in (a, b)]
            assert np.linalg.norm(seen[0] - seen[1]) > 15, (name, a, b)
