"""The 'Training dynamics' and 'Sensitivity' panels under AppTest: empty, partial, complete
(after the panel's own Compute button) and compare mode, on a copy of the session's small
real workspace whose UNets were trained on to 3 epochs (snapshots 1, 2, 3)."""

from __future__ import annotations

import html
import importlib
import json
import re
import shlex
import time
from dataclasses import replace
from urllib.parse import urlencode

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from coherence.analysis.scores import diagonal_dominance
from coherence.analysis.vocabulary import DEFAULT_ESTIMATOR
from coherence.cache.jobs import JobRunner
from coherence.cli import app
from coherence.dashboard import sweep_views, sweeps
from coherence.dashboard.compute import group_labels
from coherence.dashboard.selection import default_selection, group_defaults, snapshot_path_name
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.report import build_report
from coherence.surrogates import snapshots
from coherence.surrogates.training import TrainingArgs, train
from coherence.wording import shell_command
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.fixtures import (
    COMPARE,
    VIT_OVERRIDES,
    copy_workspace,
    fill_sweeps,
    train_on_with_snapshots,
)

from .test_app import assert_clean, charts, open_app, plotly_array, texts

DYNAMICS = {"panel": "Training dynamics"}
SENSITIVITY = {"panel": "Sensitivity"}


@pytest.fixture(scope="module")
def trained_on(workspace, tmp_path_factory):
    """The workspace with both UNets resumed from 1 to 3 epochs (default keep: 1, 2, 3)."""
    root = copy_workspace(workspace, tmp_path_factory.mktemp("sweeps") / "workspace")
    return train_on_with_snapshots(root)


def _intra(cell: np.ndarray) -> np.ndarray:
    """One (checkpoint, batch) cell [T, C, T, C] → its intra-class map: mean over c of
    cell[:, c, :, c], written as a loop (independent of ``summaries``)."""
    return sum(cell[:, c, :, c] for c in range(cell.shape[1])) / cell.shape[1]


def _wait_done(root, points, timeout: float = 300) -> None:
    runner = JobRunner(root)
    deadline = time.monotonic() + timeout
    while any(runner.status(p.key).state != "done" for p in points):
        failed = [
            runner.status(p.key).error for p in points if runner.status(p.key).state == "failed"
        ]
        assert not failed, failed
        assert time.monotonic() < deadline, "the sweep's jobs did not finish"
        time.sleep(0.5)


def test_without_snapshots_the_panels_explain_and_offer_compute(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch, DYNAMICS)
    assert_clean(at)
    assert "keep no snapshot of an earlier epoch" in texts(at.info)
    # the retrain it suggests lands where the dashboard lists checkpoints (it was relative)
    assert f"--keep-epochs 1,2,4,8,16 --out {workspace}/checkpoints/" in texts(at.info)
    assert charts(at), "the one cached epoch is still drawn"
    at = open_app(workspace, monkeypatch, SENSITIVITY)
    assert_clean(at)
    assert "1 of 7 sweep settings cached" in texts(at.caption)
    assert at.button(key="sens_compute")
    assert "Needs two estimators" in texts(at.info)


def test_seeds_sharing_no_snapshot_epoch_are_told_so(trained_on, monkeypatch, tmp_path):
    """Seeds that kept snapshots of different epochs were told they keep none."""
    import shutil

    root = copy_workspace(trained_on, tmp_path / "workspace")
    for name, epochs in (("unet_tiny_s1", (1, 2)), ("unet_tiny_s2", (1,))):
        for epoch in epochs:
            shutil.rmtree(snapshots.snapshot_dir(checkpoints_dir(root) / name, epoch))
    selection = default_selection(scan_workspace(trained_on))  # the UNets
    at = open_app(root, monkeypatch, DYNAMICS | selection.to_query())
    assert_clean(at)
    told = texts(at.info)
    assert "keep snapshots, but of no epoch they all share" in told
    assert "unet_tiny_s1: 3; unet_tiny_s2: 2, 3" in told
    assert "keep no snapshot" not in told


def test_snapshot_epochs_are_not_checkpoints_and_partial_cache_shows(trained_on, monkeypatch):
    catalog = scan_workspace(trained_on)
    assert [c.name for c in catalog.checkpoints] == ["unet_tiny_s1", "unet_tiny_s2", "vit_tiny_s1"]
    assert catalog.checkpoint("unet_tiny_s1").epochs == (1, 2, 3)
    selection = default_selection(catalog)
    epochs = sweeps.group_epochs(trained_on, selection.checkpoints)
    assert list(epochs) == [1, 2, 3]
    assert epochs[3] == selection.checkpoints  # the last epoch is the checkpoints themselves
    # epoch 1's snapshot holds the files the session fixture analysed: already cached
    at = open_app(trained_on, monkeypatch, DYNAMICS | selection.to_query())
    assert_clean(at)
    assert "1 of 3 epoch analyses cached" in texts(at.caption)
    assert at.button(key="dyn_compute")
    assert charts(at)


@pytest.mark.slow
def test_a_report_without_epoch_analyses_gives_the_cli_command(trained_on, tmp_path):
    """The report's advice for snapshots not analysed yet named the dashboard's tab only;
    it now gives the `coherence analyze` of a missing epoch too, which computes that one."""
    root = copy_workspace(trained_on, tmp_path / "workspace")
    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    runner = JobRunner(root)
    own = runner.key(selection.to_request(root))
    runner.run(selection.to_request(root))  # the report's own selection: the last epoch
    points, _ = sweeps.dynamics_points(root, selection, runner)
    for point in points:
        if point.key != own:
            runner.store.delete(point.key)
    dynamics = build_report(root, catalog, selection, distance=None).left_out[0]
    assert dynamics.tab == "Training dynamics"
    assert dynamics.reason.startswith("no group has two of its epochs analysed")
    assert "one `coherence analyze` per missing setting (2)" in dynamics.advice
    (command,) = re.findall(r"`(coherence analyze [^`]*)`", dynamics.advice)
    words = shlex.split(command)[1:]
    assert "unet_tiny_s1/epochs/0001" in words  # a snapshot, by its workspace name
    words[words.index("--out") + 1] = str(tmp_path / "result.npz")
    computed = CliRunner().invoke(app, [*words, "--workspace", str(root), "--yes"])
    assert computed.exit_code == 0, computed.output
    done = [p for p in points if runner.status(p.key).state == "done"]
    assert len(done) == 2 and min(p.x for p in done) == 1


@pytest.mark.slow
def test_compute_button_fills_the_dynamics_panel(trained_on, monkeypatch):
    selection = default_selection(scan_workspace(trained_on))
    at = open_app(trained_on, monkeypatch, DYNAMICS | selection.to_query())
    at.button(key="dyn_compute").click().run()
    assert not at.exception, texts(at.exception)
    # the count is the page's, the progress the fragment's: said while they can differ
    assert "cached (counted again when the running jobs end)." in texts(at.caption)
    points, _ = sweeps.dynamics_points(trained_on, selection, JobRunner(trained_on))
    _wait_done(trained_on, points)
    at = open_app(trained_on, monkeypatch, DYNAMICS | selection.to_query())
    assert_clean(at)
    assert "3 of 3 epoch analyses cached" in texts(at.caption)
    assert not [b for b in at.button if b.key == "dyn_compute"]
    scores, maps = charts(at)
    panels = [a["text"] for a in scores["layout"]["annotations"]]
    for title in ("Diagonal dominance", "Lag decay (steps)", "Validation SMSE"):
        assert title in panels
    medians = [t for t in scores["data"] if t.get("mode") == "lines+markers"]
    assert any(plotly_array(t["x"]).tolist() == [1, 2, 3] for t in medians)
    # the numbers drawn, from each epoch's cached Ĥ by hand: the first panel's median is the
    # median over seeds of each seed's batch-mean diagonal dominance; map k is epoch k's V
    runner = JobRunner(trained_on)
    ordered = sorted(points, key=lambda p: p.x)
    found = [runner.result(p.key, p.request) for p in ordered]
    h_std = [np.asarray(r.H_std[r.primary]) for r in found]
    dominance = [
        np.median(
            [
                np.mean([diagonal_dominance(_intra(h[i, j])) for j in range(h.shape[1])])
                for i in range(h.shape[0])
            ]
        )
        for h in h_std
    ]
    (first,) = [t for t in medians if t.get("yaxis", "y") == "y"]
    np.testing.assert_allclose(plotly_array(first["y"]), dominance, rtol=1e-9)
    heatmaps = [t for t in maps["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 3
    for trace, h in zip(heatmaps, h_std, strict=True):  # one colour scale, [0, √N]
        assert (trace["zmin"], trace["zmax"]) == (0.0, pytest.approx(15**0.5))
        by_hand = np.mean([_intra(cell) for row in h for cell in row], axis=0)
        np.testing.assert_allclose(plotly_array(trace["z"]), by_hand, rtol=1e-6, atol=1e-9)
    assert not np.allclose(plotly_array(heatmaps[0]["z"]), plotly_array(heatmaps[-1]["z"]))


@pytest.mark.slow
def test_a_panel_with_one_point_draws_a_filled_group_and_goes_back_on_request(
    trained_on, monkeypatch, tmp_path
):
    """The demo precomputes the ViT's sweeps while the page opens on the UNet, so both sweep
    panels showed one point on a first visit. A group whose own sweep has at most one cached
    point, more to compute and nothing computing now draws a filled group's, said in a
    banner, with a button back to its own (for this selection only); a complete one (a
    checkpoint without snapshots) keeps its own."""
    from coherence.dashboard.selection import group_defaults

    root = copy_workspace(trained_on, tmp_path / "workspace")
    common = dict(epochs=3, batch_size=8, transitions=4, device="cpu", lr=3e-3)
    args = TrainingArgs(arch="vit", seed=1, overrides=VIT_OVERRIDES, **common)
    # before: the ViT keeps no snapshot, its one epoch is cached: its own panel, no banner
    catalog = scan_workspace(root)
    unet = default_selection(catalog)
    entry = catalog.dataset(unet.dataset)
    vit_group = next(g for g in catalog.groups(entry) if g.checkpoints != unet.checkpoints)
    vit = group_defaults(entry, vit_group)
    at = open_app(root, monkeypatch, DYNAMICS | vit.to_query())
    assert "Shown below instead" not in texts(at.warning)
    train(datasets_dir(root) / "tiny_ce", checkpoints_dir(root) / "vit_tiny_s1", args)
    runner = JobRunner(root)
    points, _ = sweeps.dynamics_points(root, unet, runner)
    for point in points:  # the UNets' epochs, as the demo has the ViT's
        runner.run(point.request)
    vit = group_defaults(scan_workspace(root).dataset(unet.dataset), vit_group)
    dynamics = importlib.import_module("coherence.dashboard.panels.dynamics")
    rows, real = {}, dynamics.downloads

    def recording(key, stem, **kwargs):  # the names and headers of the panel's files
        rows[key] = (stem, kwargs["meta"])
        real(key, stem, **kwargs)

    monkeypatch.setattr(dynamics, "downloads", recording)
    # 3 epochs, the first cached (its snapshot holds the weights the fixture analysed)
    at = open_app(root, monkeypatch, DYNAMICS | vit.to_query())
    assert_clean(at)
    said = texts(at.warning)
    assert "**Not ViT's charts.** **ViT**: 1 epoch analysis cached. Shown below instead: " in said
    assert "**UNet**'s default view" in said
    assert "(3 epoch analyses cached)" in said
    scores, _maps = charts(at)
    medians = [t for t in scores["data"] if t.get("mode") == "lines+markers"]
    assert any(plotly_array(t["x"]).tolist() == [1, 2, 3] for t in medians)
    # whose view it is, said in the title and the files too (a download read as the ViT's)
    assert scores["layout"]["title"]["text"].startswith("UNet: scores across training")
    stem, meta = rows["dynamics"]
    assert "_UNet_dynamics" in stem
    assert meta["shown instead of the sidebar's selection"] == "UNet's default view"
    at.button(key="dyn_show_own").click().run()  # the ViT's own, with its compute button
    assert_clean(at)
    assert "Shown below instead" not in texts(at.warning)
    assert "1 of 3 epoch analyses cached" in texts(at.caption)
    assert at.button(key="dyn_compute")
    at = open_app(root, monkeypatch, DYNAMICS | unet.to_query())  # a filled one: itself
    assert "Shown below instead" not in texts(at.warning)


def test_a_snapshot_opens_as_the_selection_in_every_panel(trained_on, monkeypatch):
    """A snapshot was loadable everywhere but in the dashboard's selection: a link to one
    was refused. The sidebar's Weights control (a link's ``epoch=``) analyses every seed at a
    kept epoch, under the key of the Training dynamics point of that epoch."""
    from coherence.dashboard.selection import decode_query, from_request

    catalog = scan_workspace(trained_on)
    final = default_selection(catalog)
    query = final.to_query()
    selection, warnings = decode_query(query | {"epoch": "2"}, catalog)
    assert warnings == [] and selection.epoch == 2
    assert selection.to_query()["epoch"] == "2" and "epoch" not in query
    request = selection.to_request(trained_on)
    assert all(c.endswith("/epochs/0002") for c in request.checkpoints)
    runner = JobRunner(trained_on)
    points, _ = sweeps.dynamics_points(trained_on, selection, runner)  # whole training
    assert [p.x for p in points] == [1, 2, 3]
    assert runner.key(request) == next(p.key for p in points if p.x == 2)
    assert from_request(catalog, request.to_dict()) == selection  # the cached list's way back
    from coherence.report import provenance

    assert provenance(selection, ())["weights"].startswith("epoch 2 (training snapshots")
    # compare mode: the epoch must be kept by both groups (the tiny ViT keeps none)
    both, warnings = decode_query(query | {"vs": ",".join(COMPARE), "epoch": "2"}, catalog)
    assert both.compare == COMPARE and both.epoch is None
    assert len(warnings) == 1 and "epochs kept: none" in warnings[0]
    last = final.to_request(trained_on).to_dict()  # the CLI on the last epoch's snapshots
    last["checkpoints"] = [f"{c}/epochs/0003" for c in last["checkpoints"]]
    assert from_request(catalog, last) == final  # the final weights, as epoch=3 reads
    last, warnings = decode_query(query | {"epoch": "3"}, catalog)  # the last: final weights
    assert warnings == [] and last == final
    bad, warnings = decode_query(query | {"epoch": "7"}, catalog)
    assert bad == final
    assert warnings == [
        "URL parameter epoch='7': no snapshot of that epoch in every seed; epochs kept: 1, 2; "
        "using the final weights instead"
    ]
    for point in points:  # the page serves the epoch from the cache, every panel on it
        if runner.status(point.key).state != "done":
            runner.submit(point.request)
    _wait_done(trained_on, points)
    at = open_app(trained_on, monkeypatch, {"panel": "Scores"} | selection.to_query())
    assert_clean(at)
    assert at.selectbox(key="sb_epoch").value == "2"
    assert "weights of epoch 2" in texts(at.caption) and "cached result" in texts(at.caption)
    at.selectbox(key="sb_epoch").set_value("final").run()
    assert_clean(at)
    assert "weights of epoch" not in texts(at.caption)
    assert "epoch" not in at.query_params
    # Training dynamics marks the epoch the headline shows (it was drawn unmarked)
    at = open_app(trained_on, monkeypatch, DYNAMICS | selection.to_query())
    assert_clean(at)
    lines = [s for s in charts(at)[0]["layout"].get("shapes", []) if s.get("type") == "line"]
    assert lines and {s["x0"] for s in lines} == {2}
    assert "The dotted line marks epoch 2" in texts(at.caption)


def _dominance_by_hand(result) -> float:
    """Median over seeds of each seed's batch-mean diagonal dominance of the intra map."""
    h = np.asarray(result.H_std[result.primary])
    return float(
        np.median(
            [
                np.mean([diagonal_dominance(_intra(h[i, j])) for j in range(h.shape[1])])
                for i in range(h.shape[0])
            ]
        )
    )


def _assert_dominance_lines(data: list, runner, own, other) -> None:
    """The dynamics chart's diagonal-dominance lines at λ = 1e-4 and the overlaid 1e-2, each
    point checked by hand against its epoch's cached result."""
    first = {
        t["name"]: t
        for t in data
        if t.get("mode") == "lines+markers" and t.get("yaxis", "y") == "y"
    }
    assert set(first) == {"UNet · λ = 0.0001", "UNet · λ = 0.01"}
    for name, points in (("UNet · λ = 0.0001", own), ("UNet · λ = 0.01", other)):
        ordered = sorted(points, key=lambda p: p.x)
        expected = [_dominance_by_hand(runner.result(p.key, p.request)) for p in ordered]
        np.testing.assert_allclose(plotly_array(first[name]["y"]), expected, rtol=1e-9)


@pytest.mark.slow
def test_dynamics_overlay_another_lambda_from_the_link(trained_on, monkeypatch):
    """'Overlay the same epochs at another λ': the link's dyn_vs_damping adds that λ's
    epoch analyses to the count and the button; once computed, each λ is its own line
    (validation once, with the selection's), and the link keeps the choice."""
    selection = default_selection(scan_workspace(trained_on))
    runner = JobRunner(trained_on)
    own, _ = sweeps.dynamics_points(trained_on, selection, runner)
    other, _ = sweeps.dynamics_points(trained_on, replace(selection, damping=1e-2), runner)
    for point in own + other:
        runner.run(point.request)
    query = DYNAMICS | selection.to_query() | {"dyn_vs_damping": "0.01"}
    at = open_app(trained_on, monkeypatch, query)
    assert_clean(at)
    assert at.selectbox(key="dyn_vs_damping").value == "0.01"
    # beside the picker, how much of each λ is cached: a curve at once, or a button first
    # (in the options' labels the closed picker kept a stale count after a computation)
    offered = at.selectbox(key="dyn_vs_damping").options
    assert offered[:2] == ["none", "1e-06"] and "0.01" in offered
    assert "Epochs cached at each λ: 1e-06: 0 of 3 · 1e-05: 0 of 3" in texts(at.caption)
    assert "0.01: 3 of 3" in texts(at.caption)
    assert any("lies on, and hides under" in c.value for c in at.caption)  # why one line
    assert "6 of 6 epoch analyses cached" in texts(at.caption)
    assert "Not every epoch is drawn" not in texts(at.caption)
    scores = charts(at)[0]
    _assert_dominance_lines(scores["data"], runner, own, other)
    names = [t["name"] for t in scores["data"] if t.get("mode") == "lines+markers"]
    # a line per score panel for each λ, and the validation curve once (it ignores λ)
    assert names.count("UNet · λ = 0.0001") == names.count("UNet · λ = 0.01") + 1
    assert at.query_params["dyn_vs_damping"] == "0.01"
    at.selectbox(key="dyn_vs_damping").set_value("none").run()
    assert "dyn_vs_damping" not in at.query_params  # the default link stays short
    assert "3 of 3 epoch analyses cached" in texts(at.caption)
    # only the overlaid λ analysed (the sidebar's λ = 1e-3 is not): its lines, no maps
    elsewhere = replace(selection, damping=1e-3).to_query() | {"dyn_vs_damping": "0.01"}
    at = open_app(trained_on, monkeypatch, DYNAMICS | elsewhere)
    assert_clean(at)
    assert "3 of 6 epoch analyses cached" in texts(at.caption)
    # which λ lacks which epochs, under the chart (the report said it; the page did not)
    assert "Not every epoch is drawn (λ = 0.001: 0 of 3 epoch analyses computed)." in (
        texts(at.caption)
    )
    (scores,) = charts(at)
    assert {t["name"] for t in scores["data"] if t.get("mode") == "lines+markers"} == {
        "UNet · λ = 0.01"
    }
    assert "No epoch is analysed at the selection's λ = 0.001 yet" in texts(at.info)
    # euclidean's Ĥ ignores λ: no overlay (it drew one line twice and offered to compute it)
    flat = replace(selection, estimator="euclidean").to_query() | {"dyn_vs_damping": "0.01"}
    at = open_app(trained_on, monkeypatch, DYNAMICS | flat)
    assert_clean(at)
    assert not [b for b in at.selectbox if b.key == "dyn_vs_damping"]
    assert "λ does not enter euclidean's Ĥ, so there is no other λ to overlay" in texts(at.caption)
    assert "λ = 0.01" not in texts(at.caption) and "Epochs cached at each λ" not in texts(
        at.caption
    )


@pytest.mark.slow
def test_sensitivity_sweep_complete_and_extended_from_cache(trained_on, monkeypatch):
    selection = default_selection(scan_workspace(trained_on))
    runner = JobRunner(trained_on)
    small = (1e-4, 1e-2)
    points, _ = sweeps.sensitivity_points(trained_on, selection, runner, dampings=small)
    for point in points:
        runner.run(point.request)
    extended, _ = sweeps.sensitivity_points(trained_on, selection, runner)
    missing = [p for p in extended if runner.status(p.key).state != "done"]
    assert len(extended) == 7 and len(missing) == 4  # only the new λ values
    for point in missing:
        runner.run(point.request)
    at = open_app(trained_on, monkeypatch, SENSITIVITY | selection.to_query())
    assert_clean(at)
    assert "7 of 7 sweep settings cached" in texts(at.caption)
    lambdas, agreement = charts(at)
    assert lambdas["layout"]["xaxis"]["type"] == "log"
    assert "dotted line: the paper's λ = 0.0001" in lambdas["layout"]["title"]["text"]
    names = {t["name"] for t in lambdas["data"] if t.get("mode") == "lines+markers"}
    assert names == {"ekfac-krylov", "euclidean"}
    assert "median per-row Spearman" in texts(at.caption)
    assert [t["type"] for t in agreement["data"]] == ["histogram", "heatmap"]
    # the numbers drawn, by hand from the two cached results at the selection's λ
    at_damping = {p.series: p for p in extended if p.x == selection.damping}
    at_damping["euclidean"] = next(p for p in extended if p.series == "euclidean")
    a, b = (
        np.asarray(runner.result(p.key, p.request).H_std[p.request.responses[0]])
        for p in (at_damping["ekfac-krylov"], at_damping["euclidean"])
    )
    n = a.shape[2] * a.shape[3]
    rows_a, rows_b = a.reshape(*a.shape[:2], n, n), b.reshape(*b.shape[:2], n, n)
    rho = [
        spearmanr(rows_a[i, j, r], rows_b[i, j, r]).statistic
        for i in range(a.shape[0])
        for j in range(a.shape[1])
        for r in range(n)
    ]
    drawn = np.sort(plotly_array(agreement["data"][0]["x"]))
    np.testing.assert_allclose(drawn, np.sort(np.asarray(rho)[np.isfinite(rho)]), atol=1e-9)
    difference = np.mean([_intra(c) for row in a for c in row], axis=0) - np.mean(
        [_intra(c) for row in b for c in row], axis=0
    )
    np.testing.assert_allclose(
        plotly_array(agreement["data"][1]["z"]), difference, rtol=1e-6, atol=1e-9
    )
    # drawn on the maps' own scale, the Pearson correlation over all entries beside ρ
    maps_max = max(
        np.abs(np.mean([_intra(c) for row in h for c in row], axis=0)).max() for h in (a, b)
    )
    heatmap = agreement["data"][1]
    assert (heatmap["zmin"], heatmap["zmax"]) == pytest.approx((-maps_max, maps_max))
    pearson = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert f"Pearson over all entries {pearson:.3f}" in texts(at.caption)
    csv_labels = [b.proto.label for b in at.get("download_button")]
    assert csv_labels.count("Data (CSV)") == 2  # the λ chart's and the agreement's
    assert "Row correlations (CSV)" in csv_labels  # the histogram's ρ values too
    assert at.query_params["sens_pair"] == "ekfac-krylov vs euclidean"  # the link shows it
    # on demand: cg at 2 tolerances, krylov, ekfac-krylov at depth 4, ekfac, subspace and the
    # subspace at 2 more energy thresholds, × 6 λ
    at.toggle(key="sens_cg").set_value(True).run()
    assert_clean(at)
    assert "7 of 55 sweep settings cached" in texts(at.caption)
    assert at.button(key="sens_compute")
    # a slice of the grid: one estimator setting at one λ, without the rest of it
    at.multiselect(key="sens_pick_series").set_value(["cg rtol 1.5e-2"])
    at.multiselect(key="sens_pick_damping").set_value(["0.0001"]).run()
    assert_clean(at)
    assert "0 of 1 sweep setting cached" in texts(at.caption)
    assert "Compute the missing 1 sweep setting " in at.button(key="sens_compute").label
    assert "Also drawn: 7 cached settings outside the sweep" in texts(at.caption)
    at.multiselect(key="sens_pick_series").set_value([]).run()
    assert "Nothing to compute: pick at least one" in texts(at.caption)
    assert not [b for b in at.button if b.key == "sens_compute"]


def test_an_unconverged_cg_setting_is_named_above_the_charts(trained_on, monkeypatch):
    catalog = scan_workspace(trained_on)
    selection = default_selection(catalog)
    runner = JobRunner(trained_on)
    points, _ = sweeps.sensitivity_points(
        trained_on, selection, runner, dampings=(1e-4,), include_on_demand=True
    )
    default = next(p for p in points if p.request.estimator == DEFAULT_ESTIMATOR)
    cg = next(p for p in points if p.request.estimator == "cg")
    runner.run(default.request)  # cached already when an earlier test ran the sweep
    found = runner.result(default.key, default.request)
    unconverged = {"estimator": "cg", "converged": False, "worst_residual": 0.31, "rtol": 0.015}
    diagnostics = [[{**cell, **unconverged} for cell in row] for row in found.diagnostics]
    runner.store.put(cg.key, replace(found, request=cg.request, diagnostics=diagnostics))
    try:
        # the on-demand toggle is off: a cached on-demand setting is drawn all the same (it
        # only decides what the button computes), and its warning is shown
        at = open_app(trained_on, monkeypatch, SENSITIVITY | selection.to_query())
        assert not at.exception
        assert not at.toggle(key="sens_cg").value
        warning = texts(at.warning)
        assert re.search(r"cg did not reach its tolerance in 1 of the \d+ cached sweep", warning)
        assert f"{cg.series}, λ = 0.0001 (worst residual 0.31)" in warning
        assert "Also drawn: 1 cached setting outside the sweep" in texts(at.caption)
        lines = {t["name"] for t in charts(at)[0]["data"] if t.get("mode") == "lines+markers"}
        assert cg.series in lines
        rings = [t for t in charts(at)[0]["data"] if t.get("name") == "cg not converged"]
        assert rings and all(plotly_array(t["x"]).tolist() == [1e-4] for t in rings)  # marked
        assert sum(t.get("showlegend", True) for t in rings) == 1
        assert re.search(r"\d+ of 7 sweep settings cached", texts(at.caption))  # toggle off
    finally:
        runner.store.delete(cg.key)


@pytest.mark.parametrize("panel", [DYNAMICS, SENSITIVITY], ids=["dynamics", "sensitivity"])
def test_compare_mode(trained_on, monkeypatch, panel):
    selection = default_selection(scan_workspace(trained_on))
    JobRunner(trained_on).run(selection.to_request(trained_on))  # alone too: a UNet point
    at = open_app(trained_on, monkeypatch, panel | selection.to_query() | {"vs": ",".join(COMPARE)})
    assert_clean(at)
    figure = charts(at)[0]
    groups = {t.get("legendgroup") for t in figure["data"] if t.get("mode") == "lines+markers"}
    assert len(groups) >= 2, groups  # both model groups drawn
    if panel is not DYNAMICS:
        return
    # each group's line: its own cached epochs, each median computed by hand from its Ĥ
    from coherence.dashboard import compute

    both = replace(selection, compare=COMPARE)
    runner = JobRunner(trained_on)
    points, _ = sweeps.dynamics_points(trained_on, both, runner)
    medians = [
        t for t in figure["data"] if t.get("mode") == "lines+markers" and t.get("yaxis", "y") == "y"
    ]
    for g, label in enumerate(compute.group_labels(scan_workspace(trained_on), both)):
        done = [p for p in points if p.group == g and runner.status(p.key).state == "done"]
        done.sort(key=lambda p: p.x)
        (line,) = [t for t in medians if t.get("legendgroup") == label]
        assert plotly_array(line["x"]).tolist() == [p.x for p in done]
        expected = [_dominance_by_hand(runner.result(p.key, p.request)) for p in done]
        np.testing.assert_allclose(plotly_array(line["y"]), expected, rtol=1e-9)
    # whose epochs are missing, by group (the sentence named the λ only), and under a
    # group's maps which of its epochs are not drawn (a strip of one epoch said nothing):
    # a group with snapshots: its last epoch (the selection's own analysis) analysed, its
    # first not (restored afterwards)
    labels = compute.group_labels(scan_workspace(trained_on), both)
    g = max(range(len(labels)), key=lambda g: sum(p.group == g for p in points))
    first, *_, last = sorted((p for p in points if p.group == g), key=lambda p: p.x)
    runner.run(last.request)
    kept = runner.store.get(first.key)
    runner.store.delete(first.key)
    try:
        at = open_app(
            trained_on, monkeypatch, panel | selection.to_query() | {"vs": ",".join(COMPARE)}
        )
        assert_clean(at)
        for other, label in enumerate(labels):
            every = [p for p in points if p.group == other]
            drawn = sum(runner.status(p.key).state == "done" for p in every)
            said = f"{label} at λ = 0.0001: {drawn} of {len(every)} epoch analyses computed"
            assert (said in texts(at.caption)) is (drawn < len(every)), texts(at.caption)
        if [b for b in at.selectbox if b.key == "dyn_group"]:
            at.selectbox(key="dyn_group").set_value(labels[g]).run()
        assert f"{labels[g]}: 1 epoch not analysed yet ({int(first.x)})" in texts(at.caption)
    finally:
        if kept is not None:
            runner.store.put(first.key, kept)


def test_snapshot_names_resolve_inside_the_workspace(trained_on):
    name = snapshot_path_name("unet_tiny_s1", 2)
    assert (checkpoints_dir(trained_on) / name) == snapshots.snapshot_dir(
        checkpoints_dir(trained_on) / "unet_tiny_s1", 2
    )


def test_each_sweep_setting_is_listed_once_and_the_default_estimator_leads():
    """A setting listed twice would be counted twice in 'k of n cached' and drawn twice."""
    settings = [(s.estimator, s.rtol, s.energy_threshold, s.depth) for s in sweeps.SWEEP_ESTIMATORS]
    assert len(settings) == len(set(settings)), settings
    first = sweeps.SWEEP_ESTIMATORS[0]  # at the paper's λ, the main analysis itself
    assert first.estimator == DEFAULT_ESTIMATOR.value and not first.on_demand


def test_the_sidebar_depth_goes_to_its_own_estimator_only():
    """The sensitivity rows of the selection's estimator run at the sidebar's depth (so the
    main analysis is one of them, from the cache); every other estimator at its own."""
    from .test_selection import synthetic_catalog

    deep = replace(default_selection(synthetic_catalog()), depth=3)
    rows = sweeps.sensitivity_settings(deep, include_on_demand=True)
    depths = {(label, chosen.resolved_depth) for label, chosen, _ in rows}
    assert depths == {
        ("ekfac-krylov depth 3", 3),  # the sidebar's depth, named
        ("euclidean", None),
        ("subspace", None),
        ("subspace energy 1 − 1e-2", None),
        ("subspace energy 1 − 1e-6", None),
        ("cg rtol 1.5e-2", 4),
        ("cg rtol 5e-2", 4),
        ("krylov", 4),
        ("ekfac-krylov depth 4", 4),
        ("ekfac", None),
    }
    assert (replace(deep, damping=1e-4), "ekfac-krylov depth 3") in {(c, lab) for lab, c, _ in rows}
    # with the sidebar at depth 4 the on-demand depth-4 line would repeat the main one
    four = replace(deep, depth=4)
    labels = [label for label, _, _ in sweeps.sensitivity_settings(four, include_on_demand=True)]
    assert labels.count("ekfac-krylov depth 4") == len(sweeps.DAMPING_GRID)  # the main line
    assert len(labels) == len(rows) - len(sweeps.DAMPING_GRID)


def test_epoch_maps_download_as_one_long_csv():
    """The epoch maps' CSV: each epoch's map in two_time_csv's long format, epoch first."""
    import csv
    import io

    from coherence.analysis.tables import epoch_maps_csv

    maps = [np.arange(4.0).reshape(2, 2), -np.arange(4.0).reshape(2, 2)]
    rows = list(csv.DictReader(io.StringIO(epoch_maps_csv(maps, [1.0, 8.0], [0.0, 0.05]).decode())))
    assert [r["epoch"] for r in rows] == ["1"] * 4 + ["8"] * 4
    for r in rows:  # value = V[t_r, t_p] of that epoch
        i, j = int(float(r["t_r"]) / 0.05 + 0.5), int(float(r["t_p"]) / 0.05 + 0.5)
        assert float(r["value"]) == maps[0 if r["epoch"] == "1" else 1][i, j]


def test_the_progress_line_names_the_computing_job_before_the_queued_ones():
    """A job waiting for a compute slot said "queued, position 1" while another computed,
    and the line read as if nothing ran."""
    from coherence.cache.status import JobStatus
    from coherence.dashboard.panels.sweep_jobs import running_text

    computing = JobStatus("a" * 64, "running", stage="ekfac-krylov: batch JVPs")
    waiting = JobStatus("b" * 64, "running", stage="queued, position 1", queue_position=1)
    assert running_text([waiting, computing]) == (
        "1 computing (ekfac-krylov: batch JVPs), 1 queued for a free compute slot"
    )
    assert running_text([waiting]) == "1 queued for a free compute slot"
    assert running_text([]) == "starting"


def test_the_dynamics_csv_holds_the_validation_curve_of_the_figure():
    """The figure's last panel (validation SMSE per epoch) is in its CSV too, per seed."""
    import csv
    import io

    from coherence.analysis.summaries import training_curves
    from coherence.analysis.trends import Trend
    from coherence.dashboard.panels.dynamics import trends_csv, with_validation

    histories = [
        [
            {"epoch": e, "train_smse": 1.0, "valid_smse": v}
            for e, v in zip((1, 2), vals, strict=True)
        ]
        for vals in ((0.5, 0.25), (0.7, 0.35))
    ]
    dd = Trend("diagonal_dominance", np.array([2.0]), np.array([[0.8, 0.9]]))
    data = with_validation(
        {"UNet": {"diagonal_dominance": dd}}, {"UNet": training_curves(histories)}
    )
    rows = list(csv.DictReader(io.StringIO(trends_csv(data, "epoch").decode())))
    valid = [r for r in rows if r["score"] == "valid_smse"]
    assert [(r["epoch"], float(r["seed_0"]), float(r["seed_1"])) for r in valid] == [
        ("1", 0.5, 0.7),
        ("2", 0.25, 0.35),
    ]
    assert float(valid[1]["median"]) == pytest.approx(0.3)
    assert [r["score"] for r in rows if r["score"] != "valid_smse"] == ["diagonal_dominance"]
    # the seed columns named: each series' checkpoints in their order, padded to one width
    three = {
        "ViT": {"diagonal_dominance": Trend("diagonal_dominance", np.array([2.0]), np.ones((1, 3)))}
    }
    named = trends_csv(
        data | three, "epoch", {"UNet": ["u_s10", "u_s35"], "ViT": ["v1", "v2", "v3"]}
    )
    rows = list(csv.reader(io.StringIO(named.decode())))
    assert rows[0][-2:] == ["seed_2", "checkpoints (seed_0, seed_1, …)"]
    assert {len(r) for r in rows} == {len(rows[0])}
    assert rows[1][-2:] == ["", "u_s10 u_s35"] and rows[-1][-1] == "v1 v2 v3"
    # a censored lag decay length is flagged as a bound ("≥ T"), not written as a measured T
    lag = Trend(
        "lag_decay_length",
        np.array([1.0, 2.0]),
        np.array([[15.0, 15.0], [3.0, 4.0]]),
        censored=np.array([[1.0, 0.5], [0.0, 0.0]]),
    )
    flagged = trends_csv({"UNet": {"lag_decay_length": lag, "diagonal_dominance": dd}}, "epoch")
    rows = list(csv.DictReader(io.StringIO(flagged.decode())))
    assert [r["censored"] for r in rows] == ["0.75", "0.0", ""]


def test_sweep_exports_name_every_points_key_and_settings(trained_on):
    """A sweep's files named the final weights' cache key alone beside a chart of three
    epochs, and the sidebar's Krylov depth beside a krylov line computed at depth 4."""
    from coherence.dashboard.sweep_views import sweep_meta

    catalog = scan_workspace(trained_on)
    selection = default_selection(catalog)
    runner = JobRunner(trained_on)
    view = {"dataset": "tiny_ce", "UNet: cache key": "abc", "Krylov depth": 1, "weights": "final"}
    points, _ = sweeps.dynamics_points(trained_on, selection, runner)
    meta = sweep_meta(view, points, ["UNet"], "epoch")
    assert meta["dataset"] == "tiny_ce" and "UNet: cache key" not in meta
    assert "Krylov depth" not in meta and meta["weights"].startswith("epochs 1, 2, 3 (")
    assert meta["cache keys"] == {f"UNet · epoch {p.x:g}": p.key[:16] for p in points}
    sens, _ = sweeps.sensitivity_points(trained_on, selection, runner, include_on_demand=True)
    settings = sweep_meta(view, sens, ["UNet"], "λ")["settings per line"]
    assert settings["UNet · krylov"] == "krylov, depth 4"
    assert settings["UNet · ekfac-krylov"] == "ekfac-krylov, depth 1"
    assert settings["UNet · cg rtol 1.5e-2"].startswith("cg, depth 4, rtol 0.015, max-iter ")
    assert settings["UNet · subspace energy 1 − 1e-2"] == "subspace, energy threshold 0.99"
    assert settings["UNet · euclidean"] == "euclidean"


def test_a_subset_of_seeds_is_pointed_to_its_own_groups_full_sweep(
    trained_on, monkeypatch, tmp_path
):
    """One seed of the UNets was told the sweep was 'cached for another model group': the
    UNets' own default view (all seeds), which is no other group."""
    root = copy_workspace(trained_on, tmp_path / "workspace")
    selection = default_selection(scan_workspace(root))
    runner = JobRunner(root)
    points, _ = sweeps.dynamics_points(root, selection, runner)
    for point in points:
        runner.run(point.request)
    # one seed at a λ no other test of this module computes: its own sweep is not cached
    one = replace(selection, checkpoints=selection.checkpoints[:1], damping=3e-3)
    at = open_app(root, monkeypatch, DYNAMICS | one.to_query())
    assert_clean(at)
    told = texts(at.info)
    assert "Cached for this model group's default view: [UNet]" in told
    assert f"({len(points)} of {len(points)} cached, all 2 seeds)" in told
    assert "another model group" not in told


def test_a_sweep_estimate_with_an_untimed_setting_is_no_estimate(trained_on, monkeypatch):
    """While another job ran, the settings that could not be timed counted 0 s: the button
    read '≈ 3 min' for 18. Now any untimed setting leaves the whole sweep unestimated."""
    from coherence.dashboard import compute
    from coherence.dashboard.panels import sweep_jobs

    catalog = scan_workspace(trained_on)
    points, _ = sweeps.sensitivity_points(
        trained_on, default_selection(catalog), JobRunner(trained_on)
    )
    timed = {"ekfac-krylov": 10.0, "euclidean": 2.0}
    monkeypatch.setattr(compute, "job_seconds", lambda r: timed.get(r.estimator.value, 0.0))
    both = [p for p in points if p.series in timed]
    per_point = sum(timed[p.series] for p in both) / len(both)
    assert sweep_jobs._estimate(both) == pytest.approx(per_point)
    timed["euclidean"] = 0.0  # the machine busy: not timed
    assert sweep_jobs._estimate(both) == 0.0


def _figure_of(page: str, heading: str) -> tuple[list, dict]:
    """The (data, layout) that a report section's div hands to Plotly.newPlot."""
    start = page.index(f"<h2>{heading}</h2>")
    div = page[start : page.index("</section>", start)]
    decoder, values = json.JSONDecoder(), []
    rest = div[div.index("Plotly.newPlot(") + len("Plotly.newPlot(") :]
    for _ in range(3):
        rest = rest.lstrip(" \n,")
        value, end = decoder.raw_decode(rest)
        values.append(value)
        rest = rest[end:]
    return values[1], values[2]


def test_the_report_holds_the_cached_sweeps_as_the_panels_draw_them(trained_on):
    """`coherence report` and the Report button: the Training dynamics and Sensitivity
    charts of the selection (the link's overlay λ and estimator pair), from the cache, with
    every point's key in the provenance; their numbers checked by hand."""
    fill_sweeps(trained_on)  # 3 epochs; ekfac-krylov at 1e-4 and 1e-2; euclidean
    catalog = scan_workspace(trained_on)
    selection = default_selection(catalog)
    runner = JobRunner(trained_on)
    own, _ = sweeps.dynamics_points(trained_on, selection, runner)
    other, _ = sweeps.dynamics_points(trained_on, replace(selection, damping=1e-2), runner)
    every, _ = sweeps.sensitivity_points(trained_on, selection, runner, include_on_demand=True)
    ekfac = next(p for p in every if p.series == "ekfac" and p.x == selection.damping)
    for point in [*other, ekfac]:  # ekfac: a third estimator, so the link picks a pair
        runner.run(point.request)
    params = {"dyn_vs_damping": ["0.01"], "sens_pair": ["euclidean vs ekfac"]}
    built = build_report(trained_on, catalog, selection, distance=None, params=params)
    page = built.page.decode()
    assert built.left_out == () and built.link_problems == ()
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    sweep_titles = [
        "Training dynamics",
        "UNet: two-time map across epochs",
        "Sensitivity",
        "Agreement between estimators",
    ]
    at = titles.index("Training dynamics")
    assert titles[at : at + 5] == [*sweep_titles, "Scores"]  # the dashboard's tab order
    _assert_dominance_lines(_figure_of(page, "Training dynamics")[0], runner, own, other)
    # the maps across epochs: one heatmap per epoch, each the intra-class mean by hand
    maps, _ = _figure_of(page, "UNet: two-time map across epochs")
    heatmaps = [t for t in maps if t["type"] == "heatmap"]
    assert len(heatmaps) == len(own)
    for trace, point in zip(heatmaps, sorted(own, key=lambda p: p.x), strict=True):
        h = np.asarray(runner.result(point.key, point.request).H_std["smse"])
        by_hand = np.mean([_intra(c) for row in h for c in row], axis=0)
        np.testing.assert_allclose(plotly_array(trace["z"]), by_hand, rtol=1e-6, atol=1e-9)
    # the sensitivity chart draws every cached setting, as the panel does
    done = [p for p in every if runner.status(p.key).state == "done"]
    data, _ = _figure_of(page, "Sensitivity")
    assert {t["name"] for t in data if t.get("mode") == "lines+markers"} == {p.series for p in done}
    euclidean = next(p for p in done if p.series == "euclidean")
    a, b = (np.asarray(runner.result(p.key, p.request).H_std["smse"]) for p in (euclidean, ekfac))
    pearson = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert f"Pearson over all entries {pearson:.3f}" in page
    for point in [*own, *other, *done]:
        assert point.key[:16] in page  # provenance: every point drawn


def _only_own_setting(workspace, tmp_path):
    """A copy of the workspace whose default selection (the UNets) has its own analysis
    cached and no other sensitivity setting: (root, catalog, selection, runner, its key,
    every sensitivity point)."""
    root = copy_workspace(workspace, tmp_path / "workspace")
    catalog = scan_workspace(root)
    selection = default_selection(catalog)
    runner = JobRunner(root)
    own = runner.key(selection.to_request(root))
    every, _ = sweeps.sensitivity_points(root, selection, runner, include_on_demand=True)
    for point in every:
        if point.key != own:
            runner.store.delete(point.key)
    return root, catalog, selection, runner, own, every


@pytest.mark.slow
def test_the_own_sweep_view_is_in_the_link_and_drops_the_other_views_pair(
    workspace, monkeypatch, tmp_path
):
    """Shown the ViT's sweep in place of the UNet's, then the UNet's own: the link kept the
    ViT view's estimator pair (which `coherence report` refuses for the UNet) and did not
    say the own view was chosen, so a reload or a shared link opened the ViT's again."""
    root, catalog, unet, runner, _, _ = _only_own_setting(workspace, tmp_path)
    vit_group = next(g for g in catalog.groups(unet.dataset) if g.label == "ViT")
    vit = group_defaults(catalog.dataset(unet.dataset), vit_group)
    for point in sweeps.sensitivity_points(root, vit, runner)[0]:
        if point.series == "euclidean" or point.x == vit.damping:
            runner.run(point.request)
    at = open_app(root, monkeypatch, SENSITIVITY | unet.to_query())
    assert_clean(at)
    assert "Shown below instead: **ViT**'s default view" in texts(at.warning)
    assert at.query_params["sens_pair"] and "sens_view" not in at.query_params
    at.button(key="sens_show_own").click().run()
    assert_clean(at)
    assert "Shown below instead" not in texts(at.warning)
    assert "sens_pair" not in at.query_params  # no pair in this view
    assert at.query_params["sens_view"] == "own"
    link = {key: at.query_params[key] for key in at.query_params}
    again = open_app(root, monkeypatch, link)  # a reload, or the link shared
    assert_clean(again)
    assert "Shown below instead" not in texts(again.warning)
    assert "1 of 7 sweep settings cached" in texts(again.caption)
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--workspace",
            str(root),
            "--out",
            str(tmp_path / "r.html"),
            "--link",
            "?" + urlencode(link),
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_report_without_sweeps_says_why_and_what_to_compute(workspace, tmp_path):
    """Without snapshots or a second setting cached, the report leaves the sweeps out and
    says why under its headline; `coherence report` prints what to compute, names the
    other model group whose sweep is cached (a link whose report holds it), and warns when
    the link opens a left-out tab."""
    root, catalog, selection, runner, own, every = _only_own_setting(workspace, tmp_path)
    built = build_report(root, catalog, selection, distance=None)
    dynamics, sensitivity = built.left_out
    assert dynamics.tab == "Training dynamics" and sensitivity.tab == "Sensitivity"
    assert dynamics.reason == "these checkpoints keep no snapshot of an earlier epoch"
    assert "--keep-epochs 1,2,4,8,16" in dynamics.advice
    assert sensitivity.reason == "no group has a second setting computed (1 of 7 default settings)"
    assert sensitivity.advice.startswith("Compute the sweep in the dashboard's Sensitivity tab.")
    # the CLI's route too: its first command computes one of the sweep's missing settings
    assert "one `coherence analyze` per missing setting (6)" in sensitivity.advice
    (command,) = re.findall(r"`(coherence analyze [^`]*)`", sensitivity.advice)
    words = shlex.split(command)[1:]
    words[words.index("--out") + 1] = str(tmp_path / "result.npz")
    computed = CliRunner().invoke(app, [*words, "--workspace", str(root), "--yes"])
    assert computed.exit_code == 0, computed.output
    now = [p for p in every if runner.status(p.key).state == "done" and p.key != own]
    assert len(now) == 1 and not now[0].on_demand  # exactly one setting of the sweep
    runner.store.delete(now[0].key)
    page = built.page.decode()
    top = page.index("Not in this report:")
    assert top < page.index("<h2>Two-time influence")  # read before the figures
    assert html.escape(dynamics.page_text) in page and "--keep-epochs" not in page
    assert "<h2>Sensitivity</h2>" not in page
    # the ViT group's default view gets two settings: its report holds the sweep, and the
    # UNet's report points to it
    vit = next(g for g in catalog.groups(selection.dataset) if g.label == "ViT")
    theirs = group_defaults(catalog.dataset(selection.dataset), vit)
    for point in sweeps.sensitivity_points(root, theirs, runner)[0]:
        if point.series == "euclidean" or point.x == theirs.damping:
            runner.run(point.request)
    (_, sensitivity) = build_report(root, catalog, selection, distance=None).left_out
    link = f"'?{urlencode(theirs.to_query())}'"
    assert "ViT's default view has 2 of 7 cached" in sensitivity.advice
    # with the workspace, as every suggested command: pasted elsewhere it looked in ./workspace
    query = f"?{urlencode(theirs.to_query())}"
    said = shell_command("coherence", "report", "--workspace", str(catalog.root), "--link", query)
    assert said in sensitivity.advice and f"--link {link}" in said
    out = tmp_path / "report.html"
    base = ["report", "--workspace", str(root), "--out", str(out)]
    result = CliRunner().invoke(app, [*base, "--link", link.strip("'")])
    assert result.exit_code == 0, result.output
    assert "<h2>Sensitivity</h2>" in out.read_text()
    result = CliRunner().invoke(app, [*base, "--param", "panel=Training dynamics"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"Training dynamics: not in this report: {dynamics.reason}." in said
    assert "opens the Training dynamics panel, which this report leaves out" in said
    result = CliRunner().invoke(app, [*base, "--param", "panel=Rollout"])
    said = " ".join(result.output.split())
    assert "opens the Rollout panel, which the report does not hold" in said
    result = CliRunner().invoke(app, [*base, "--param", "sens_pair=ekfac-krylov vs euclidean"])
    said = " ".join(result.output.split())  # the UNet's sweep holds one setting: no pair
    assert result.exit_code == 2 and "no two estimators are cached at λ = 0.0001" in said
    # an estimator pair the report cannot draw is refused, as the dashboard would replace it
    before = out.read_bytes()
    pair = ["--link", link.strip("'"), "--param", "sens_pair=subspace vs euclidean"]
    result = CliRunner().invoke(app, [*base, *pair])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "sens_pair='subspace vs euclidean': not a pair of estimators cached" in said
    assert "(the dashboard would show 'ekfac-krylov vs euclidean')" in said
    assert out.read_bytes() == before
    # compare mode names each pair with its group: a pair named without one says how
    both = "?" + urlencode(selection.to_query() | {"vs": ",".join(COMPARE)})
    pair = ["--link", both, "--param", "sens_pair=ekfac-krylov vs euclidean"]
    result = CliRunner().invoke(app, [*base, *pair])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "in compare mode name its group: 'ViT: ekfac-krylov vs euclidean'" in said


def test_a_missing_training_history_is_said_not_dropped(trained_on):
    """The dynamics caption promises a validation curve: a seed without history.json
    gives a problem line instead of a silently missing panel."""
    from coherence.analysis.trends import point_scores
    from coherence.dashboard import sweep_views
    from coherence.surrogates.checkpoint import read_history

    selection = default_selection(scan_workspace(trained_on))
    runner = JobRunner(trained_on)
    points, _ = sweeps.dynamics_points(trained_on, selection, runner)
    for point in points:
        runner.run(point.request)

    def history_of(path):
        return [] if path.name == "unet_tiny_s2" else read_history(path)

    lines = sweep_views.dynamics_lines(
        points,
        ["UNet"],
        selection.groups,
        checkpoints_dir(trained_on),
        lambda p: point_scores(runner.result(p.key, p.request)),
        history_of,
    )
    assert lines.validation == {} and list(lines.trends) == ["UNet"]
    assert lines.problems == [
        "UNet: no validation curve (unet_tiny_s2 recorded no training history, history.json)"
    ]
    whole = sweep_views.dynamics_lines(
        points,
        ["UNet"],
        selection.groups,
        checkpoints_dir(trained_on),
        lambda p: point_scores(runner.result(p.key, p.request)),
        read_history,
    )
    assert list(whole.validation) == ["UNet"] and whole.problems == []


def test_the_report_button_keeps_both_sweep_tabs_choices():
    """The link holds the open tab's choices only; the session keeps the other tab's."""
    from coherence.dashboard.panels.scores import report_params

    query = {"data": "tiny_ce", "panel": "Sensitivity", "sens_pair": "a vs b"}
    state = {"dyn_vs_damping": "0.01", "sens_pair": "a vs b", "other": 1}
    assert report_params(query, state) == query | {"dyn_vs_damping": "0.01"}
    assert report_params(query, {"dyn_vs_damping": None}) == query
    # the Conservation pair too: a report built from another tab had dropped it
    two_time = {"data": "tiny_ce", "panel": "Two-time influence", "two_time_pair": "intra"}
    kept = report_params(two_time, {"cons_pair": "CE-RP ← CE-CRP"})
    assert kept == two_time | {"cons_pair": "CE-RP ← CE-CRP"}


def test_a_point_evicted_before_its_read_is_not_drawn_nor_cited(trained_on, monkeypatch):
    """A result the cache loses between its status and its read (eviction) is left out of
    the report's chart and provenance alike: no gap drawn, no key cited for it."""
    fill_sweeps(trained_on)
    catalog = scan_workspace(trained_on)
    selection = default_selection(catalog)
    own, _ = sweeps.dynamics_points(trained_on, selection, JobRunner(trained_on))
    gone = min(own, key=lambda p: p.x)
    read = JobRunner.result

    def evicted(self, key, request=None):
        return None if key == gone.key else read(self, key, request)

    monkeypatch.setattr(JobRunner, "result", evicted)
    page = build_report(trained_on, catalog, selection, distance=None).page.decode()
    assert gone.key not in page
    data, _ = _figure_of(page, "Training dynamics")
    (line,) = [t for t in data if t.get("mode") == "lines+markers" and t.get("yaxis", "y") == "y"]
    drawn = plotly_array(line["x"]).tolist()
    assert drawn == sorted(p.x for p in own if p is not gone)


# ---- the report's sweep sections: what a mutation campaign found no test to check ----
# The report's sweep sections (``coherence.report_sweeps``): what a mutation campaign found no
# test to check. The page's own words for a left-out sweep (the tests compared the page with
# ``LeftOut.page_text``, which cannot fail), and an overlay λ equal to the selection's own, which
# the Report button can hand over (the session keeps the overlay when the sidebar's λ moves
# onto it) or for an estimator whose Ĥ ignores λ, neither of which may draw a second set of
# lines; and in compare mode, which group's maps are left out and whose pair the agreement
# chart draws.


def test_the_page_names_the_left_out_sweep_and_why(workspace):
    """Under the headline, each left-out sweep is named with its reason, in these words."""
    catalog = scan_workspace(workspace)
    built = build_report(workspace, catalog, default_selection(catalog), distance=None)
    page = built.page.decode()
    said = "Training dynamics: these checkpoints keep no snapshot of an earlier epoch."
    assert html.escape(said) in page
    assert page.index(html.escape(said)) > page.index("Not in this report:")


@pytest.mark.slow
def test_an_overlay_at_the_selections_own_lambda_draws_no_second_lines(trained_on):
    """dyn_vs_damping naming the selection's own λ is no overlay: the chart is the one
    without it (no '· λ =' lines, no note on the λ-free panels, no other λ's keys)."""
    fill_sweeps(trained_on)
    catalog = scan_workspace(trained_on)
    selection = default_selection(catalog)
    runner = JobRunner(trained_on)
    other, _ = sweeps.dynamics_points(trained_on, replace(selection, damping=1e-2), runner)
    for point in other:  # another λ's epochs cached too: an overlay would find them
        runner.run(point.request)

    def names(params) -> tuple[set[str], str]:
        page = build_report(trained_on, catalog, selection, distance=None, params=params)
        text = page.page.decode()
        data, _ = _figure_of(text, "Training dynamics")
        return {t.get("name", "") for t in data}, text

    plain, plain_page = names(None)
    own = f"{selection.damping:g}"
    same, same_page = names({"dyn_vs_damping": [own]})
    assert same == plain and not [n for n in same if "λ =" in n]
    assert html.escape(sweep_views.SAME_AT_ANY_DAMPING) not in same_page
    assert all(p.key[:16] not in same_page for p in other if p.key[:16] not in plain_page)
    overlaid, overlaid_page = names({"dyn_vs_damping": ["0.01"]})  # a real overlay: drawn
    assert [n for n in overlaid if "λ =" in n]
    assert html.escape(sweep_views.SAME_AT_ANY_DAMPING) in overlaid_page


def test_a_compare_report_says_which_groups_maps_it_leaves_out_and_names_the_pair_group(
    trained_on,
):
    """Compare mode: the UNets have three epochs analysed, the ViT (no snapshots) one; the
    ViT's maps across epochs are said left out (a strip of one epoch is no comparison), and
    the agreement chart's title names the group whose pair it draws."""
    catalog = scan_workspace(trained_on)
    both = replace(default_selection(catalog), compare=COMPARE)
    runner = JobRunner(trained_on)
    epochs, _ = sweeps.dynamics_points(trained_on, both, runner)
    settings, _ = sweeps.sensitivity_points(trained_on, both, runner)
    pair = [p for p in settings if p.series == "euclidean" or p.x == both.damping]
    for point in [*epochs, *pair]:
        runner.run(point.request)
    labels = group_labels(catalog, both)
    counts = {label: sum(p.group == g for p in epochs) for g, label in enumerate(labels)}
    assert counts == {"UNet": 3, "ViT": 1}, counts
    page = build_report(trained_on, catalog, both, distance=None).page.decode()
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert "UNet: two-time map across epochs" in titles
    assert "ViT: two-time map across epochs" not in titles
    said = "ViT&#x27;s two-time maps across epochs are left out: 1 epoch analysed at λ = 0.0001."
    assert said in page
    (agreement,) = [t for t in titles if t.startswith("Agreement between estimators")]
    assert agreement in (
        "Agreement between estimators (UNet)",
        "Agreement between estimators (ViT)",
    )


def test_an_estimator_that_ignores_lambda_gets_no_overlay(trained_on):
    """euclidean's Ĥ ignores λ (its tab offers no overlay): a link's dyn_vs_damping, kept
    from another estimator's view, draws no second set of lines at another λ."""
    catalog = scan_workspace(trained_on)
    flat = replace(default_selection(catalog), estimator="euclidean")
    runner = JobRunner(trained_on)
    for point in sweeps.dynamics_points(trained_on, flat, runner)[0]:
        runner.run(point.request)
    built = build_report(
        trained_on, catalog, flat, distance=None, params={"dyn_vs_damping": ["0.01"]}
    )
    page = built.page.decode()
    data, _ = _figure_of(page, "Training dynamics")
    assert not [t for t in data if "λ =" in t.get("name", "")]
    assert html.escape(sweep_views.SAME_AT_ANY_DAMPING) not in page
