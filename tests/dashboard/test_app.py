"""The app under Streamlit's AppTest: state, URL, errors, empty states, compute and cancel.

Each test drives the real app.py on the session's small real workspace (tests/dashboard/
conftest.py), whose default analysis and its UNet-vs-ViT comparison are already cached.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import os
import re
import time
import zipfile
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from coherence.analysis.verdict import REFERENCES
from coherence.cache import slots
from coherence.cache.jobs import TEST_DELAY_ENV, JobRunner
from coherence.dashboard import loaders
from coherence.dashboard.panels import PANELS
from coherence.dashboard.selection import default_selection
from coherence.report_panels import pair_label
from coherence.workspace import ENV_VAR, datasets_dir
from tests.fixtures import COMPARE, REPO, busy_core, copy_workspace, simulate

TIMEOUT = 120  # seconds per script run: the first one imports torch and plotly


def open_app(root, monkeypatch, params: dict[str, str] | None = None) -> AppTest:
    monkeypatch.setenv(ENV_VAR, str(root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    return at.run()


def texts(elements) -> str:
    """The elements' text as the visitor reads it: markdown escapes (CommonMark: a backslash
    before ASCII punctuation) removed, since the page escapes every value it quotes."""
    return "\n".join(re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(e.value)) for e in elements)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def plotly_array(value) -> np.ndarray:
    """A plotly JSON array as numpy: a (nested) list, or typed base64 data {dtype, bdata,
    shape} (how plotly 7 writes numpy arrays)."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


def test_default_view_shows_the_cached_analysis_without_a_click(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    assert "cached result" in texts(at.caption)
    # the default (ekfac-krylov) reports its full-system residuals against the paper's rtol
    assert "full-system residual" in texts(at.caption) and "within the paper's rtol" in texts(
        at.caption
    )
    # its numbers on the caption, their definition and the caveat in the caption's help
    (line,) = [c for c in at.caption if "full-system residual median" in texts([c])]
    help_text = texts([SimpleNamespace(value=line.proto.help)])
    assert "Full-system residual ‖g − (η + λI)y‖/‖g‖" in help_text
    assert "not how close Ĥ is" in help_text
    assert not [b for b in at.button if b.key == "compute"]
    (figure,) = charts(at)  # the landing tab: the two-time heatmap, on [0, √N]
    heatmap = figure["data"][0]
    assert heatmap["type"] == "heatmap"
    assert heatmap["zmin"] == 0 and heatmap["zmax"] == pytest.approx(math.sqrt(15))
    assert "Diagonal dominance" in [m.label for m in at.metric]
    expected = default_selection(workspace).to_query()
    assert {k: at.query_params[k] for k in expected} == expected


def test_a_bad_link_is_explained_and_replaced(workspace, monkeypatch):
    at = open_app(
        workspace,
        monkeypatch,
        {"data": "../../etc", "traj": "7", "est": "newton", "damping": "-1", "window": "2:9"},
    )
    assert not at.exception
    warnings = texts(at.warning)
    assert "data='../../etc': no such dataset" in warnings
    assert "traj='7': index 7 does not exist: there is 1 test trajectory" in warnings
    assert "est='newton'" in warnings and "damping='-1'" in warnings
    assert "window='2:9': window 2:9 needs snapshots 2..11" in warnings
    assert "cached result" in texts(at.caption)  # the defaults took their place
    assert at.query_params["data"] == "tiny_ce" and at.query_params["traj"] == "0"
    assert at.query_params["window"] == "0:5" and at.query_params["est"] == "ekfac-krylov"


def test_a_shared_link_reproduces_its_selection(workspace, monkeypatch):
    query = default_selection(workspace).to_query()
    query |= {"classes": "CE-RPUI,CE-RP", "est": "cg", "rtol": "0.02", "window": "1:3"}
    at = open_app(workspace, monkeypatch, query)
    assert_clean(at)
    assert at.multiselect(key="sb_classes").value == ["CE-RP", "CE-RPUI"]
    assert at.selectbox(key="sb_est").value == "cg"
    assert at.number_input(key="sb_rtol").value == pytest.approx(0.02)
    assert at.slider(key="sb_window").value == (1, 4)
    assert "not computed yet" in texts(at.info)
    assert at.button(key="compute")
    assert at.query_params["classes"] == "CE-RP,CE-RPUI"  # canonical order


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("absent", "coherence demo"),
        ("empty", "has no datasets"),
        ("ns_only", "No model fits the datasets yet"),
    ],
)
def test_empty_workspaces_say_what_to_run(tmp_path, monkeypatch, layout, message):
    """Each names the command that fixes it, for the workspace served and quoted for the
    shell (a path with a space split the suggested train command in two)."""
    root = tmp_path / "my ws"
    if layout != "absent":
        root.mkdir()
    if layout == "ns_only":
        simulate(datasets_dir(root), "tiny_ns", "ns", ("NS-Sines", "NS-Gauss"))
    at = open_app(root, monkeypatch, {"data": "tiny_ns"})
    assert not at.exception
    assert message in texts(at.info)
    shown = texts(at.info)
    if layout != "empty":  # the demo for this workspace, not the default one
        assert f"coherence demo --workspace '{root}'" in shown
    if layout == "ns_only":
        assert f"coherence train --data '{root}/datasets/tiny_ns' --out '{root}/ch" in shown


def test_invalid_combinations_are_explained_not_computed(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    at.multiselect(key="sb_classes").set_value(["CE-RP"]).run()
    assert not at.exception
    assert "pick at least 2 classes" in texts(at.error)
    assert not [b for b in at.button if b.key == "compute"]
    at.multiselect(key="sb_classes").set_value(["CE-RP", "CE-CRP"])
    at.selectbox(key="sb_device").set_value("cuda").run()
    assert not at.exception
    if not __import__("torch").cuda.is_available():
        assert "no CUDA GPU is visible" in texts(at.error)


def test_switching_the_model_group_selects_its_seeds(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    at.selectbox(key="sb_group").set_value("ViT").run()
    assert_clean(at)
    assert at.multiselect(key="sb_ckpts").value == ["vit_tiny_s1"]
    assert at.query_params["ckpt"] == "vit_tiny_s1"
    assert "**ViT**: cached result" in texts(at.caption)  # the fixture computed it
    at.selectbox(key="sb_group").set_value("UNet").run()
    at.toggle(key="sb_compare").set_value(True).run()
    assert_clean(at)
    assert at.selectbox(key="sb_group_b").value == "ViT"  # the other group by default
    assert at.query_params["vs"] == "vit_tiny_s1"
    assert texts(at.caption).count("cached result") == 2
    # one table of scores for both groups (a row each), not a row of metric cards per group
    assert not at.metric
    cells = [texts([m]) for m in at.markdown]
    assert all(f"**{ref.title}**" in cells for ref in REFERENCES)
    value = r"\*\*(≥ )?(-?[\d.]+|—)\*\* :gray\[(\[.+\]|undefined)\]"  # median [Q1, Q3]
    bands = [c for c in cells if re.fullmatch(value, c)]
    assert len(bands) == 2 * len(REFERENCES), cells
    assert "**UNet**" in cells and "**ViT**" in cells


def test_two_time_selectors_drive_the_chart_drawn_before_them(workspace, monkeypatch):
    """The heatmap is sent before its selectors (first paint); it must still follow them."""
    at = open_app(workspace, monkeypatch)
    (intra,) = charts(at)
    pair = at.selectbox(key="two_time_pair")
    assert pair.value == "intra"
    pair.set_value("CE-CRP ← CE-RP").run()
    assert_clean(at)
    (cross,) = charts(at)
    assert "perturbation CE-RP" in cross["layout"]["title"]["text"]
    assert cross["data"][0]["z"] != intra["data"][0]["z"]
    seed = at.selectbox(key="two_time_seed")
    seed.set_value(seed.options[1]).run()  # one checkpoint instead of the mean
    assert_clean(at)
    (single,) = charts(at)
    assert at.selectbox(key="two_time_pair").value == "CE-CRP ← CE-RP"  # kept
    assert single["data"][0]["z"] != cross["data"][0]["z"]
    # a pair and a seed: two lines with room for them (one was cut off at the map's width)
    title = single["layout"]["title"]["text"]
    assert title == f"Two-time influence (SMSE)<br>{pair_label('CE-CRP ← CE-RP')}, {seed.value}"
    assert single["layout"]["margin"]["t"] > 60


def test_a_two_time_seed_choice_gives_way_to_the_mean_in_compare_mode(workspace, monkeypatch):
    """A seed picked alone is not offered in compare mode: the chart shows each group's seed
    mean and the selector, which would have had one option, is not drawn; back in single
    mode it offers the seeds again from the mean (a stale choice is not sent back)."""
    at = open_app(workspace, monkeypatch)
    seed = at.selectbox(key="two_time_seed")
    seed.set_value(seed.options[1]).run()
    at.toggle(key="sb_compare").set_value(True).run()
    assert_clean(at)
    assert "two_time_seed" not in [box.key for box in at.selectbox]
    (figure,) = charts(at)
    assert figure["layout"]["title"]["text"].startswith("Two-time influence, intra-class")
    at.toggle(key="sb_compare").set_value(False).run()
    assert_clean(at)
    seed = at.selectbox(key="two_time_seed")
    assert seed.value == "mean" and len(seed.options) > 1
    (figure,) = charts(at)
    assert figure["layout"]["title"]["text"].endswith("intra-class mean")


def test_compare_mode_outlines_the_drill_down_cell_on_both_maps(workspace, monkeypatch):
    """The picked cell is outlined on each group's map (it was on neither), on that map's
    own axes, and either map takes clicks as the single map does."""
    at = open_app(workspace, monkeypatch, {"vs": ",".join(COMPARE)})
    at.selectbox(key="two_time_cell").set_value("1,3").run()
    assert_clean(at)
    figure = charts(at)[0]
    outlines = [s for s in figure["layout"]["shapes"] if s.get("name") == "drill-down cell"]
    assert sorted((s["xref"], s["yref"]) for s in outlines) == [("x", "y"), ("x2", "y2")]
    first, second = outlines
    assert (first["x0"], first["y0"]) == (second["x0"], second["y0"])  # the same cell
    assert list(at.get("plotly_chart")[0].proto.selection_mode)  # clicks pick cells
    rows = at.dataframe[0].value
    assert len(set(rows["group"])) == 2  # the values of both groups below


@pytest.mark.parametrize("compare", [False, True], ids=["single", "compare"])
@pytest.mark.parametrize("panel", [label for label, _ in PANELS])
def test_every_panel_renders(workspace, monkeypatch, panel, compare):
    params = {"panel": panel} | ({"vs": ",".join(COMPARE)} if compare else {})
    at = open_app(workspace, monkeypatch, params)
    assert_clean(at)
    if panel not in ("Validation", "Scores"):
        assert charts(at), f"{panel} drew no figure"
    if panel == "Rollout":
        # every checkpoint here was trained on 4 transitions: pairs up to snapshot 4
        shapes = charts(at)[0]["layout"]["shapes"]
        assert [(s["x0"], s["line"]["dash"]) for s in shapes] == [(4, "dot")]
        notes = [a["text"] for a in charts(at)[0]["layout"]["annotations"]]
        assert "trained up to h = 4" in notes
    if compare and panel == "Two-time influence":
        (figure,) = charts(at)
        # both groups on one colour axis, [0, √N]
        assert figure["layout"]["coloraxis"]["cmin"] == 0
        assert figure["layout"]["coloraxis"]["cmax"] == pytest.approx(math.sqrt(15))
        maps = [t for t in figure["data"] if t["type"] == "heatmap"]
        assert [t["coloraxis"] for t in maps] == ["coloraxis", "coloraxis"]
        assert len(figure["data"]) == 4  # and each map's invisible click targets
        # the two groups' rows of the score table line up: each score with the same decimals
        medians = [
            found.group(1)
            for m in at.markdown
            if (found := re.fullmatch(r"\*\*(?:≥ )?(-?\d+\.\d+)\*\* :gray\[.*", texts([m])))
        ]
        assert len(medians) == 2 * len(REFERENCES), medians  # a row per group, in order
        by_column: dict[int, set[int]] = {}
        for i, median in enumerate(medians):
            by_column.setdefault(i % len(REFERENCES), set()).add(len(median.split(".")[1]))
        assert all(len(d) == 1 for d in by_column.values()), medians


def test_compute_shows_progress_reattaches_and_cancels(workspace, monkeypatch):
    monkeypatch.setenv(TEST_DELAY_ENV, "0.5")  # the worker inherits it: a job of seconds
    query = default_selection(workspace).to_query() | {"classes": "CE-CRP,CE-RPUI"}
    first = open_app(workspace, monkeypatch, query)
    first.button(key="compute").click().run()
    assert not first.exception
    assert first.get("progress"), "no progress bar after Compute"
    assert first.button(key="cancel_jobs")
    second = open_app(workspace, monkeypatch, query)  # a reload or another tab
    assert second.get("progress") and not [b for b in second.button if b.key == "compute"]
    runner = JobRunner(workspace)
    selection = replace(default_selection(workspace), classes=("CE-CRP", "CE-RPUI"))
    key = runner.key(selection.to_request(workspace))
    first.button(key="cancel_jobs").click().run()
    deadline = time.monotonic() + 150
    while runner.status(key).active:
        assert time.monotonic() < deadline, "the job did not stop after Cancel"
        time.sleep(0.25)
    assert runner.status(key).state == "cancelled"
    second.run()
    assert "was cancelled" in texts(second.warning)
    assert second.button(key="compute")


@pytest.mark.slow  # 9 s or more on 2 cores: in make test, not test-fast
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_job_beside_a_busy_process_says_why_under_its_progress_bar(
    workspace, tmp_path, monkeypatch
):
    """Other programs' work leaves the job fewer threads than its share, so it runs slower
    than a quiet machine's estimate: the page says why, as the command line's log does."""
    moved = copy_workspace(workspace, tmp_path / "ws")
    monkeypatch.setenv(TEST_DELAY_ENV, "0.5")
    monkeypatch.delenv(slots.THREADS_ENV, raising=False)  # the load decides (the suite fixes it)
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    query = default_selection(moved).to_query() | {"classes": "CE-CRP,CE-RPUI"}
    selection = replace(default_selection(moved), classes=("CE-CRP", "CE-RPUI"))
    runner = JobRunner(moved)
    key = runner.key(selection.to_request(moved))
    with busy_core():  # the worker inherits the two CPUs, one of them busy
        app = open_app(moved, monkeypatch, query)
        app.button(key="compute").click().run()
        deadline = time.monotonic() + 150
        while (status := runner.status(key)).note is None:
            assert status.active and time.monotonic() < deadline, status
            time.sleep(0.25)
        assert status.note.startswith("other processes keep")
        app.run()
        assert f"{status.note}" in texts(app.caption), texts(app.caption)
        app.button(key="cancel_jobs").click().run()
        while runner.status(key).active:
            assert time.monotonic() < deadline, "the job did not stop after Cancel"
            time.sleep(0.25)
    assert runner.status(key).note is None  # a job that ended says nothing of its threads


def test_whole_analysis_download_is_the_result_file_pair(workspace, tmp_path):
    """The zip holds what `coherence analyze` writes, the arrays' digest included (a
    walk-through found it missing), so ``load_result`` checks and reads it the same way."""
    import hashlib

    from coherence.analysis.results import load_result

    selection = default_selection(workspace)
    runner = JobRunner(workspace)
    request = selection.to_request(workspace)
    result = runner.result(runner.key(request), request)
    payload = loaders.analysis_zip(result, "tiny_ce_analysis")
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        assert sorted(archive.namelist()) == ["tiny_ce_analysis.json", "tiny_ce_analysis.npz"]
        with np.load(io.BytesIO(archive.read("tiny_ce_analysis.npz")), allow_pickle=False) as npz:
            np.testing.assert_array_equal(npz["H_std__smse"], result.H_std["smse"])
            np.testing.assert_array_equal(npz["H"], result.H["smse"])
            assert list(npz["classes"]) == list(selection.classes)
        metadata = json.loads(archive.read("tiny_ce_analysis.json"))
        digest = hashlib.sha256(archive.read("tiny_ce_analysis.npz")).hexdigest()
        archive.extractall(tmp_path)
    assert metadata["request"] == request.to_dict()
    assert set(metadata["provenance"]["checkpoint_fingerprints"]) == set(selection.checkpoints)
    assert metadata["npz_sha256"] == digest
    loaded = load_result(tmp_path / "tiny_ce_analysis.npz")
    np.testing.assert_array_equal(loaded.H_std["smse"], result.H_std["smse"])


def test_the_scores_tab_exports_a_table_not_a_figure(workspace, monkeypatch):
    """The Scores tab has no chart: its downloads say "Table", where other tabs say
    "Figure" (a first-time user looked for the figure the buttons named)."""
    labels = {
        panel: [
            b.proto.label
            for b in open_app(workspace, monkeypatch, {"panel": panel}).get("download_button")
        ]
        for panel in ("Scores", "Time lag")
    }
    assert "Table (HTML)" in labels["Scores"]
    assert not any(label.startswith("Figure") for label in labels["Scores"])
    assert "Figure (HTML)" in labels["Time lag"]


def test_compare_mode_with_one_group_computed_names_that_group(workspace, tmp_path, monkeypatch):
    """With group B not computed, group A's lone map had no group in its title, and its
    files were named "UNet-vs-ViT" though they held UNet's alone."""
    from coherence.cache.keys import unit_keys
    from coherence.dashboard.panels import common

    moved = copy_workspace(workspace, tmp_path / "ws")
    selection = replace(default_selection(moved), compare=COMPARE)
    runner = JobRunner(moved)
    request = selection.to_request(moved, selection.groups[1])
    runner.store.delete(runner.key(request))
    for key in [k for row in unit_keys(request) for k in row]:
        runner.store.delete_unit(key)
    stems = []
    real = common.downloads
    two_time = importlib.import_module("coherence.dashboard.panels.two_time")  # the module
    monkeypatch.setattr(
        two_time, "downloads", lambda key, stem, **kw: (stems.append(stem), real(key, stem, **kw))
    )
    at = open_app(moved, monkeypatch, selection.to_query())
    assert_clean(at)
    assert "**ViT** is not computed yet; only **UNet** is shown." in [i.value for i in at.info]
    (figure,) = charts(at)
    assert figure["layout"]["title"]["text"].startswith("UNet: Two-time influence")
    assert stems[-1].endswith("_UNet_two_time") and "-vs-" not in stems[-1]


def test_compare_mode_opens_on_another_group_after_group_a_moved(workspace, monkeypatch):
    """Switching group A to the ViT and then turning compare on showed ViT (A) beside an
    identical ViT (B): the second group, set when the page opened, still named the model
    A had moved to (a walk-through)."""
    at = open_app(workspace, monkeypatch)
    first = at.selectbox(key="sb_group").value
    other = next(label for label in at.selectbox(key="sb_group").options if label != first)
    at.selectbox(key="sb_group").set_value(other).run()
    at.toggle(key="sb_compare").set_value(True).run()
    assert not at.exception
    assert at.selectbox(key="sb_group").value == other
    assert at.selectbox(key="sb_group_b").value == first  # not the group beside itself
    # chosen by hand, the same group is refused with the fix (it drew one group twice)
    at.selectbox(key="sb_group_b").set_value(other).run()
    assert not at.exception
    assert "the second model group holds the same checkpoints as the first" in texts(at.error)
    assert not [b for b in at.button if b.key == "compute"]
