"""Issue 16 under AppTest: the first-visit tour, the verdict with reference marks, colour-scale
control, drill-down into one cell, the difference map, and export names and contents.

Drives the real app.py on the session's small real workspace (tests/dashboard/conftest.py);
references are the cached result's own arrays (H_std, distances) and numpy recomputations.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace

import numpy as np
import pytest

from coherence.analysis.names import selection_tag
from coherence.analysis.scores import compute_scores
from coherence.analysis.summaries import two_time_map
from coherence.analysis.verdict import caveat_line, format_score, result_caveats, verdict
from coherence.cache.jobs import JobRunner
from coherence.dashboard import compute
from coherence.dashboard.panels.common import PanelContext
from coherence.dashboard.selection import default_selection
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.report import provenance
from tests.fixtures import COMPARE

from .test_app import assert_clean, charts, open_app, plotly_array, texts


def cached_result(workspace):
    selection = default_selection(workspace)
    runner = JobRunner(workspace)
    request = selection.to_request(workspace)
    return selection, runner.result(runner.key(request), request)


def test_tour_and_verdict_with_reference_marks(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    markdown = texts(at.markdown)
    assert "What am I looking at?" in markdown and "diagonal ridge" in markdown
    _, result = cached_result(workspace)
    scores = compute_scores(result.H_std[result.primary])
    assert verdict(scores) in markdown  # the plain-language reading of these scores
    care = caveat_line(result_caveats(result))  # what the reading rests on: the line's help
    line = next(m for m in at.markdown if verdict(scores) in m.value.replace("\\", ""))
    assert care.startswith("Read with care:") and "read with care" in line.value
    assert line.proto.help.replace("\\", "") == care
    captions = texts(at.caption)
    assert "0.5 flat · 1 local" in captions and "0 none · 1 full" in captions
    decay = next(m for m in at.metric if m.label == "Lag decay (steps)")  # the unit
    # the cached scores' own reading ('≥' when censored: tests/analysis/test_verdict.py)
    assert decay.value == format_score(scores.decay_length)
    dd = next(m for m in at.metric if m.label == "Diagonal dominance")
    assert "0.5 flat · 1 perfectly local" in dd.proto.help.replace("\\", "")
    at.button(key="tour_dismiss").click().run()
    assert_clean(at)
    assert "What am I looking at?" not in texts(at.markdown)
    assert "Diagonal dominance" in [m.label for m in at.metric]  # the scores stay


@pytest.mark.parametrize("panel", ["Two-time influence", "Overview", "Class transfer"])
def test_the_tour_is_shown_once_on_any_first_panel(workspace, monkeypatch, panel):
    """Beside the two-time map (its panel shows it), at the top of the sidebar on any other
    panel; once either way, and gone for good when dismissed."""
    at = open_app(workspace, monkeypatch, {"panel": panel})
    assert_clean(at)
    assert texts(at.markdown).count("What am I looking at?") == 1
    # beside the map on its tab; elsewhere at the top of the sidebar (a box above the scores
    # spanned the page and pushed the maps below the fold)
    in_sidebar = texts(at.sidebar.markdown).count("What am I looking at?")
    assert in_sidebar == (0 if panel == "Two-time influence" else 1)
    at.button(key="tour_dismiss").click().run()
    at.run()
    assert "What am I looking at?" not in texts(at.markdown)


def test_colour_scale_control_paper_auto_diverging(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    (paper,) = charts(at)
    _, result = cached_result(workspace)
    V = two_time_map(result.H_std[result.primary])
    np.testing.assert_allclose(plotly_array(paper["data"][0]["z"]), V, rtol=1e-6)
    assert paper["data"][0]["zmin"] == 0  # the paper's [0, √N]
    top = paper["data"][0]["zmax"]  # √N of this workspace's batch
    assert f"Colour range [0, √N] = [0, {top:.2f}], the paper's" in texts(at.caption)
    at.selectbox(key="zscale_two_time").set_value("auto").run()
    assert_clean(at)
    (auto,) = charts(at)
    assert auto["data"][0]["zmin"] == pytest.approx(V.min())
    assert auto["data"][0]["zmax"] == pytest.approx(V.max())
    # the caption names the range on screen, not the default one
    assert f"Colour range from the data: [{V.min():.3g}, {V.max():.3g}]" in texts(at.caption)
    assert "√N] = [0" not in texts(at.caption)
    at.selectbox(key="zscale_two_time").set_value("diverging").run()
    (div,) = charts(at)
    trace = div["data"][0]
    assert trace["zmin"] == pytest.approx(-np.abs(V).max())
    assert trace["zmax"] == pytest.approx(np.abs(V).max())
    m = np.abs(V).max()
    assert f"Diverging colour range [−{m:.3g}, {m:.3g}]" in texts(at.caption)
    seed = result.checkpoints[0]  # one seed's map is titled with it
    at.selectbox(key="two_time_seed").set_value(seed).run()
    (one,) = charts(at)
    assert one["layout"]["title"]["text"].endswith(f"intra-class mean, {seed}")
    assert trace["colorscale"][0][1] != paper["data"][0]["colorscale"][0][1]
    np.testing.assert_allclose(plotly_array(trace["z"]), V, rtol=1e-6)  # the same map
    # the class-transfer panel has its own control
    at = open_app(workspace, monkeypatch, {"panel": "Class transfer"})
    at.selectbox(key="zscale_transfer").set_value("diverging").run()
    assert_clean(at)
    (matrix,) = charts(at)
    assert matrix["data"][0]["zmin"] == pytest.approx(-matrix["data"][0]["zmax"])


def test_drill_down_shows_inputs_distance_and_every_seed(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    assert len(charts(at)) == 1  # no cell picked yet: only the map
    at.selectbox(key="two_time_cell").set_value("1,3").run()
    at.selectbox(key="two_time_cell_class").set_value("CE-CRP").run()
    assert_clean(at)
    _, pair = charts(at)
    selection, result = cached_result(workspace)
    c = selection.classes.index("CE-CRP")
    C = len(selection.classes)
    n_r, n_p = 1 * C + c, 3 * C + c
    expected = result.distances[0, n_r, n_p]
    match = re.search(r"input distance d\(r, p\) = \*\*([^*]+)\*\*", texts(at.markdown))
    assert match and float(match.group(1)) == pytest.approx(expected, rel=1e-2)
    assert len(pair["data"]) == 2 and pair["layout"]["coloraxis"]["cmin"] is not None
    (table,) = at.dataframe
    rows = table.value
    assert list(rows["seed"]) == list(result.checkpoints)
    H = result.H_std[result.primary]
    np.testing.assert_allclose(
        rows["mean"].to_numpy(), H[:, :, 1, c, 3, c].mean(axis=1), rtol=2e-3, atol=1e-6
    )
    # the intra-class map's cell averages the classes too: its value and each class's mean
    (line,) = [t for t in texts(at.caption).split("\n") if "Intra-class mean at this cell" in t]
    cell = re.search(r"the map's cell is ([-0-9.e]+), the mean of the classes' (.*)\.$", line)
    assert cell, line
    per_class = [np.mean([H[:, :, 1, k, 3, k]]) for k in range(C)]
    assert float(cell.group(1)) == pytest.approx(np.mean(per_class), rel=2e-3, abs=1e-6)
    shown = re.findall(r"(\S+) ([-0-9.e]+)", cell.group(2))
    assert [name for name, _ in shown] == list(selection.classes)
    np.testing.assert_allclose([float(v) for _, v in shown], per_class, rtol=2e-3, atol=1e-6)
    assert float(cell.group(1)) == pytest.approx(two_time_map(H)[1, 3], rel=2e-3, abs=1e-6)


def test_compare_offers_the_difference_map_and_keeps_one_colour_axis(workspace, monkeypatch):
    two_time = importlib.import_module("coherence.dashboard.panels.two_time")  # the module
    rows: dict[str, list] = {}
    real = two_time.downloads

    def recording(key, stem, **kwargs):
        rows[key] = list(kwargs.get("files", ()))
        real(key, stem, **kwargs)

    monkeypatch.setattr(two_time, "downloads", recording)
    at = open_app(workspace, monkeypatch, {"vs": ",".join(COMPARE)})
    assert_clean(at)
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Difference map: UNet − ViT") for label in labels), labels
    assert "two_time_seed" not in [box.key for box in at.selectbox]  # one option: not drawn
    (pair,) = charts(at)  # closed: not drawn
    heatmaps = [t for t in pair["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 2 and {t.get("coloraxis") for t in heatmaps} == {"coloraxis"}
    at.session_state["two_time_diff_open"] = True  # open the expander
    at.run()
    assert_clean(at)
    _, difference = charts(at)
    selection = replace(default_selection(workspace), compare=COMPARE)
    runner = JobRunner(workspace)
    V = []
    for request in selection.to_requests(workspace):
        result = runner.result(runner.key(request), request)
        V.append(two_time_map(result.H_std[result.primary]))
    (trace,) = [t for t in difference["data"] if t["type"] == "heatmap"]
    np.testing.assert_allclose(plotly_array(trace["z"]), V[0] - V[1], rtol=1e-5, atol=1e-6)
    top = np.abs(V[0] - V[1]).max()  # diverging, symmetric around 0
    assert trace["zmin"] == pytest.approx(-trace["zmax"]) and trace["zmax"] >= top * (1 - 1e-6)
    # its values download as a CSV too, like every other chart's
    ((label, name, data, mime),) = rows["two_time_diff"]
    assert label == "Data UNet − ViT (CSV)" and mime == "text/csv"
    assert name.endswith("_two_time_difference.csv")
    text = data().decode()
    assert "# class pair: intra-class mean" in text and "# values of: UNet − ViT" in text
    assert "# colour scale: diverging" in text  # the difference map's own, not the maps'
    values = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    header, body = values[0], values[1:]
    assert len(body) == V[0].size, header
    column = header.index("value")
    np.testing.assert_allclose(
        sorted(float(r[column]) for r in body), np.sort((V[0] - V[1]).ravel()), rtol=1e-5, atol=1e-6
    )


def test_export_names_encode_the_selection(workspace):
    selection = default_selection(workspace)
    other = replace(selection, t_start=selection.t_start + 1, n_steps=selection.n_steps - 1)
    assert selection_tag(selection) != selection_tag(other)
    # the window as the sidebar's slider shows it: from snapshot start to snapshot end
    start, end = selection.t_start, selection.t_start + selection.n_steps
    assert selection_tag(selection).startswith(f"{selection.dataset}_w{start}-{end}_")
    assert selection_tag(other).startswith(f"{selection.dataset}_w{start + 1}-{end}_")
    assert "ekfac-krylov" in selection_tag(selection)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", selection_tag(selection))
    assert "_lam1e-4_" in selection_tag(selection)
    # euclidean (M = I) uses no λ: neither its names nor its provenance give one
    euclidean = replace(selection, estimator="euclidean")
    assert "_lam" not in selection_tag(euclidean) and "_euclidean_" in selection_tag(euclidean)
    assert provenance(euclidean, ())["damping λ"] == "not used (euclidean: M = I)"
    assert provenance(selection, ())["damping λ"] == selection.damping
    # panels that read no analysis: another window, estimator or λ named one file two ways
    catalog = scan_workspace(workspace)
    states = compute.group_states(workspace, catalog, selection)
    ctx = PanelContext(workspace, catalog, selection, catalog.dataset(selection.dataset), states)
    cg = replace(other, estimator="cg", damping=1e-2, rtol=1.5e-2)
    moved = PanelContext(workspace, catalog, cg, catalog.dataset(selection.dataset), states)
    for panel in ("training", "rollout", "fields", "snapshots"):
        assert ctx.stem(panel) == moved.stem(panel) and "lam" not in ctx.stem(panel)
        assert ctx.stem(panel).startswith(f"{selection.dataset}_") and "_w" not in ctx.stem(panel)
        # nor in their files' headers (a training curve's CSV named the estimator and key)
        assert ctx.meta(panel) == moved.meta(panel)
        assert not {"estimator", "damping λ", "window"} & set(ctx.meta(panel))
        assert not any(key.endswith(": cache key") for key in ctx.meta(panel))
    assert ctx.meta("snapshots") == {"dataset": selection.dataset}
    assert ctx.meta("rollout")[f"{states[0].label}: checkpoints"] == list(states[0].checkpoints)
    assert "classes" in ctx.meta("rollout") and "classes" not in ctx.meta("training")  # as read
    assert "estimator" in ctx.meta() and "estimator" in ctx.meta("scores")
    assert ctx.stem("scores") != moved.stem("scores")
    fewer = replace(
        selection, trajectories=selection.trajectories[:1], classes=selection.classes[:1]
    )
    fewer_ctx = PanelContext(workspace, catalog, fewer, catalog.dataset(selection.dataset), states)
    assert fewer_ctx.stem("rollout") != ctx.stem("rollout")  # what rollouts read: in the name
    assert fewer_ctx.stem("training") == ctx.stem("training")  # curves read no class
    assert fewer_ctx.meta("training") == ctx.meta("training")  # one name, one header


def test_the_overview_trajectory_downloads_under_a_name_per_channel(workspace, monkeypatch):
    """Two channels of one trajectory downloaded under one name, with the analysis's window,
    estimator and λ in it, and the title did not name the channel (a walk-through)."""
    overview = importlib.import_module("coherence.dashboard.panels.overview")
    stems: list[tuple[str, str]] = []
    real = overview.downloads

    npz: list[str] = []

    def recording(key, stem, **kwargs):
        stems.append((stem, kwargs["figure"].layout.title.text))
        npz.extend(f[1] for f in kwargs.get("files", ()) if f[0] == "States (npz)")
        real(key, stem, **kwargs)

    monkeypatch.setattr(overview, "downloads", recording)
    at = open_app(workspace, monkeypatch, {"panel": "Overview"})
    assert_clean(at)
    (first, title), *_ = [s for s in stems if "_snapshots_" in s[0]]
    channels = at.selectbox(key="ov_channel").options
    at.selectbox(key="ov_channel").set_value(channels[1]).run()
    assert_clean(at)
    second, second_title = [s for s in stems if "_snapshots_" in s[0]][-1]
    assert first != second and first.endswith(channels[0]) and second.endswith(channels[1])
    assert "_lam" not in first and "_w" not in first
    assert channels[0] in title and channels[1] in second_title
    # the states file holds every channel: one name for both views (it took the channel's)
    assert npz[0] == npz[-1] == f"{first.removesuffix('_' + channels[0])}.npz"


def test_two_views_of_one_panel_export_under_two_names(workspace, monkeypatch):
    two_time = importlib.import_module("coherence.dashboard.panels.two_time")  # the module
    stems: list[str] = []
    real = two_time.downloads

    def recording(key, stem, **kwargs):  # the names the panel gives its download row
        stems.append(stem)
        real(key, stem, **kwargs)

    monkeypatch.setattr(two_time, "downloads", recording)
    at = open_app(workspace, monkeypatch)
    default = stems[-1]
    assert default.endswith("_UNet_two_time")  # the group: two groups' files differ by it
    at.selectbox(key="two_time_pair").set_value("CE-CRP ← CE-RP").run()
    at.selectbox(key="zscale_two_time").set_value("diverging").run()
    assert_clean(at)
    assert stems[-1] == f"{default}_CE-CRP-from-CE-RP_diverging"


def test_the_fields_of_one_checkpoint_are_named_after_its_group(workspace, monkeypatch):
    """Compare mode's field viewer shows one checkpoint: its files named both groups
    ("UNet-vs-ViT") although they hold one group's fields; they end with that group."""
    models = importlib.import_module("coherence.dashboard.panels.models")
    names = []
    real = models.downloads

    def recording(key, stem, **kwargs):
        if key == "fields":
            names.extend([stem, *(name for _, name, _, _ in kwargs["files"])])
        real(key, stem, **kwargs)

    monkeypatch.setattr(models, "downloads", recording)
    at = open_app(workspace, monkeypatch, {"panel": "Rollout", "vs": ",".join(COMPARE)})
    assert_clean(at)
    vit = next(n for n in at.selectbox(key="field_ckpt").options if n in COMPARE)
    at.selectbox(key="field_ckpt").set_value(vit).run()
    assert_clean(at)
    stem, npz = names[-2:]
    assert "-vs-" not in stem and stem.endswith("_ViT") and f"_{vit}_" in stem
    assert npz.endswith("_ViT_all_times.npz") and "-vs-" not in npz


def test_a_panels_choices_enter_its_export_names_and_provenance(workspace):
    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    states = compute.group_states(workspace, catalog, selection)
    ctx = PanelContext(workspace, catalog, selection, catalog.dataset(selection.dataset), states)
    view = ctx.with_choices(class_pair="CE-CRP ← CE-RP", seed=None, colour_scale="auto")
    assert view.stem("two_time") == f"{ctx.stem('two_time')}_CE-CRP-from-CE-RP_auto"
    both = replace(selection, compare=COMPARE)  # compare mode names both groups
    pair = PanelContext(
        workspace,
        catalog,
        both,
        catalog.dataset(both.dataset),
        compute.group_states(workspace, catalog, both),
    )
    assert "_UNet-vs-ViT_two_time" in pair.stem("two_time")
    assert pair.stem("two_time", pair.groups[1]).endswith("_two_time_ViT")  # a group's file
    meta = view.meta()
    assert meta["class pair"] == "CE-CRP ← CE-RP" and meta["colour scale"] == "auto"
    assert "seed" not in meta  # a default the panel does not name is left out
    assert {k: v for k, v in meta.items() if k in ctx.meta()} == ctx.meta()  # nothing lost
    # a default the panel names: out of the file name, in the provenance (the CSV header)
    named = ctx.with_choices({"seed": "mean over seeds"}, seed=None, colour_scale=None)
    assert named.stem("two_time") == ctx.stem("two_time")
    assert named.meta()["seed"] == "mean over seeds" and named.meta()["colour scale"] == "paper"


def test_the_default_two_time_csv_says_which_view_it_holds(workspace, monkeypatch):
    """The intra-class mean over seeds on the paper's scale: its CSV names the class pair,
    seed and colour scale although its file name (the common view) leaves them out."""
    two_time = importlib.import_module("coherence.dashboard.panels.two_time")  # the module

    files = []
    real = two_time.downloads

    def recording(key, stem, **kwargs):
        files.extend(kwargs["files"])
        real(key, stem, **kwargs)

    monkeypatch.setattr(two_time, "downloads", recording)
    open_app(workspace, monkeypatch)
    (_, name, data, _) = files[-1]
    header = [line for line in data().decode().splitlines() if line.startswith("#")]
    assert "# class pair: intra-class mean" in header
    assert "# seed: mean over seeds" in header and "# colour scale: paper" in header
    # the window as the slider and the file name give it (snapshots 0–5 of the tiny data)
    assert "_w0-5_" in name and "# window: snapshots 0–5: transitions 0…4 (T = 5, N = 15)" in header
    assert not re.search(r"intra|mean|paper", name)


def test_settle_imports_waits_for_another_threads_import(tmp_path, monkeypatch):
    """A tab click starts the new run while the old one may still import pandas: the panels
    wait for that import instead of reading a half-initialized module."""
    import sys
    import threading
    import time

    from coherence.dashboard.panels.common import settle_imports

    (tmp_path / "slow_module_16.py").write_text("import time\ntime.sleep(1.0)\nREADY = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    worker = threading.Thread(target=__import__, args=("slow_module_16",))
    worker.start()
    while "slow_module_16" not in sys.modules:
        time.sleep(0.01)
    assert not hasattr(sys.modules["slow_module_16"], "READY")  # half-initialized
    settle_imports(("slow_module_16",))
    assert sys.modules["slow_module_16"].READY
    worker.join()
    settle_imports(("a_module_nobody_imports",))  # nothing started: nothing imported
    assert "a_module_nobody_imports" not in sys.modules


def _intra_by_hand(h: np.ndarray) -> np.ndarray:
    """[S, B, T, C, T, C] → mean over seeds, batches and classes c of h[..., c, :, c]."""
    return np.mean([h[:, :, :, c, :, c] for c in range(h.shape[3])], axis=(0, 1, 2))


def test_each_panel_draws_its_own_numbers(workspace, monkeypatch):
    """The panels' charts hold the numbers of the view they name, recomputed here by hand
    from the cached Ĥ: the chosen class pair and the single seed of the two-time map, the
    class-transfer matrix, the intra-class lag curve and the mass response's map (a panel
    wired to another response, class pair, seed or the raw H would fail)."""
    selection, result = cached_result(workspace)
    h = np.asarray(result.H_std[result.primary])  # [S, B, T, C, T, C]
    classes = list(selection.classes)
    at = open_app(workspace, monkeypatch)
    at.selectbox(key="two_time_pair").set_value("CE-CRP ← CE-RP").run()
    assert_clean(at)
    (cross,) = charts(at)
    r, p = classes.index("CE-CRP"), classes.index("CE-RP")
    pair = h[:, :, :, r, :, p].mean(axis=(0, 1))
    np.testing.assert_allclose(plotly_array(cross["data"][0]["z"]), pair, rtol=1e-6)
    seed = at.selectbox(key="two_time_seed")
    chosen = seed.options[2]  # the second checkpoint alone
    seed.set_value(chosen).run()
    (single,) = charts(at)
    s = list(result.checkpoints).index(chosen)
    alone = h[s, :, :, r, :, p].mean(axis=0)
    np.testing.assert_allclose(plotly_array(single["data"][0]["z"]), alone, rtol=1e-6)
    assert not np.allclose(alone, pair)

    at = open_app(workspace, monkeypatch, {"panel": "Class transfer"})
    transfer = charts(at)[0]["data"][0]
    by_hand = [
        [h[:, :, :, i, :, j].mean() for j in range(len(classes))] for i in range(len(classes))
    ]
    np.testing.assert_allclose(plotly_array(transfer["z"]), by_hand, rtol=1e-6)

    at = open_app(workspace, monkeypatch, {"panel": "Time lag"})
    lags = charts(at)[0]
    (intra,) = [t for t in lags["data"] if str(t.get("name", "")).endswith("intra-class")]
    t = h.shape[2]
    per_seed = [  # each seed: mean over batches and classes of Ĥ at lag Δ = t_r − t_p
        [
            np.mean(
                [
                    h[s, :, i, c, i - lag, c]
                    for i in range(t)
                    if 0 <= i - lag < t
                    for c in range(len(classes))
                ]
            )
            for lag in range(1 - t, t)
        ]
        for s in range(h.shape[0])
    ]
    np.testing.assert_allclose(plotly_array(intra["y"]), np.median(per_seed, axis=0), rtol=1e-6)

    at = open_app(workspace, monkeypatch, {"panel": "Conservation"})
    mass = np.asarray(result.H_std["mass"])
    (mass_map,) = [c for c in charts(at) if c["data"][0]["type"] == "heatmap"][:1]
    np.testing.assert_allclose(
        plotly_array(mass_map["data"][0]["z"]), _intra_by_hand(mass), rtol=1e-6
    )
    assert not np.allclose(_intra_by_hand(mass), _intra_by_hand(h))


def test_the_overview_line_names_the_dataset_as_the_catalog_reads_it(workspace, monkeypatch):
    """Family, grid, snapshots and classes in one line that no narrow column cuts."""
    from coherence.dashboard.workspace_scan import scan_workspace

    at = open_app(workspace, monkeypatch, {"panel": "Overview"})
    assert_clean(at)
    entry = scan_workspace(workspace).datasets[0]
    h, w = entry.resolution
    line = (
        f"**Compressible Euler** · grid {h} × {w} · {len(entry.times)} snapshots "
        f"(t ≤ {entry.times[-1]:.3g}) · {len(entry.classes)} classes"
    )
    assert entry.family == "euler" and line in texts(at.markdown)
