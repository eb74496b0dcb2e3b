"""Issue 16's dashboard items under AppTest, on the session's real workspace (conftest.py):
subsets of a cached selection drawn without computing, stale figures kept with a banner, the
counterfactual check as a background job, panel choices in the link, the rtol range, the
CUDA message, the cached-analyses switch, plural and seed chips."""

from __future__ import annotations

import importlib
import io
import os
import re
import time
from dataclasses import replace

import numpy as np
import pytest

from coherence.cache import slots
from coherence.cache.jobs import TEST_DELAY_ENV, JobRunner
from coherence.cache.keys import unit_keys
from coherence.cache.tasks import COUNTERFACTUAL, counterfactual_spec
from coherence.dashboard import compute, watchers
from coherence.dashboard.selection import default_selection, plural
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.workspace import checkpoints_dir, datasets_dir
from tests.fixtures import copy_workspace, wait_for

from .test_app import assert_clean, charts, open_app, plotly_array, texts


def _key(workspace, selection) -> str:
    return JobRunner(workspace).key(selection.to_request(workspace))


@pytest.mark.parametrize(
    ("widget", "value", "change"),
    [
        ("sb_ckpts", ["unet_tiny_s1"], {"checkpoints": ("unet_tiny_s1",)}),
        ("sb_resp", ["smse", "mass"], {"responses": ("smse", "mass")}),
    ],
    ids=["drop_a_seed", "drop_energy"],
)
def test_a_subset_of_the_cached_view_draws_at_once_without_a_job(
    workspace, monkeypatch, widget, value, change
):
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    subset = replace(default_selection(workspace), **change)
    key = _key(workspace, subset)
    runner = JobRunner(workspace)
    runner.store.delete(key)  # an earlier test may have assembled it already
    at.multiselect(key=widget).set_value(value).run()
    assert_clean(at)
    assert "cached result, assembled from cached units (no computation)" in texts(at.caption)
    assert "not computed yet" not in texts(at.info) and "Stale" not in texts(at.warning)
    assert not at.get("progress") and not [b for b in at.button if b.key == "compute"]
    (figure,) = charts(at)
    assert figure["data"][0]["type"] == "heatmap"
    assert runner.store.computations(key) == 0  # assembled from cached units, no job
    assert runner.status(key).state == "done"  # its time: bench/bench_dashboard.py


def test_an_uncached_selection_keeps_the_last_figures_marked_stale(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    (before,) = charts(at)
    at.number_input(key="sb_damping").set_value(1e-3).run()
    assert not at.exception
    banner = texts(at.warning)
    assert "Stale figures" in banner and "damping λ 0.0001 → 0.001" in banner
    assert "press **Compute** above for the current one" in banner
    assert at.button(key="compute")  # the current selection is offered for computing
    assert "Estimated time of what Compute runs" in texts(at.caption)
    (after,) = charts(at)  # the last computed heatmap is still there
    assert after["data"][0]["z"] == before["data"][0]["z"]
    assert "Diagonal dominance" in [m.label for m in at.metric]
    assert "**stale**, the last computed selection's" in texts(at.markdown)  # on the scores
    assert _report_label(at) == "Report (HTML) · stale view"  # on the button
    at.number_input(key="sb_damping").set_value(1e-4).run()  # back: current, not stale
    assert "Stale" not in texts(at.warning)
    assert "**stale**" not in texts(at.markdown)
    assert _report_label(at) == "Report (HTML)"


def _report_label(at) -> str:
    (button,) = [b for b in at.get("download_button") if b.proto.id.endswith("dl_report")]
    return button.proto.label


def test_damping_steps_by_decades_and_keeps_typed_values(workspace, monkeypatch):
    """λ's − / + divide / multiply by 10 (not ±1e-4: "−" was disabled at the default and
    "+" gave 2e-4); a typed value is kept as typed, and the URL follows."""
    at = open_app(workspace, monkeypatch)
    damping = at.number_input(key="sb_damping")
    assert damping.value == 1e-4
    damping.increment().run()
    assert at.number_input(key="sb_damping").value == 1e-3
    expected_link = replace(default_selection(workspace), damping=1e-3).to_query()
    assert at.query_params["damping"] == expected_link["damping"]
    for expected in (1e-4, 1e-5, 1e-6):
        at.number_input(key="sb_damping").decrement().run()
        assert at.number_input(key="sb_damping").value == expected  # 1e-6, not 1.0…02e-06
    at.number_input(key="sb_damping").set_value(3.5e-3).run()  # typed: kept as typed
    assert at.number_input(key="sb_damping").value == 3.5e-3
    at.number_input(key="sb_damping").increment().run()  # and steps from there
    assert at.number_input(key="sb_damping").value == 3.5e-2
    assert not at.exception


def test_the_estimate_next_to_compute_counts_only_the_units_not_cached(workspace):
    catalog = scan_workspace(workspace)
    base = default_selection(workspace)
    other = replace(base, damping=3e-3)  # nothing of it is cached: 2 seeds × 1 batch to run
    states = compute.group_states(workspace, catalog, other)
    whole, bound = compute.missing_seconds(workspace, states)
    assert whole > 0 and not bound
    runner = JobRunner(workspace)
    done_key = unit_keys(base.to_request(workspace))[0][0]
    first_key = unit_keys(other.to_request(workspace))[0][0]
    runner.store.put_unit(first_key, runner.store.get_unit(done_key))  # seed 1: "cached"
    try:
        half, _ = compute.missing_seconds(workspace, states)
    finally:
        runner.store.delete_unit(first_key)
    assert half == pytest.approx(whole / 2)  # Compute resumes: only seed 2 is left to run
    cg = compute.group_states(workspace, catalog, replace(base, estimator="cg", rtol=0.05))
    assert compute.missing_seconds(workspace, cg)[1]  # cg: counted at its iteration cap


def forget_estimates() -> None:
    """The page's estimates and its timed forwards, as on a fresh server."""
    compute._job_cost.clear()
    compute._example_seconds.clear()


def test_no_estimate_is_timed_while_another_job_holds_the_machine(workspace, monkeypatch, tmp_path):
    """Timed beside a running job, an estimate read several times slow (and was cached for
    the session, and asked for a confirmation); now none is timed until the machine is free,
    the page says why, and the estimate is timed then."""
    import os

    from coherence.cache import slots

    monkeypatch.setenv(slots.DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    request = replace(default_selection(workspace), damping=3e-3).to_request(workspace)
    forget_estimates()
    _, fd = slots.acquire("another job")
    try:
        assert compute.job_cost(request) == (0.0, 0, False)
        at = open_app(workspace, monkeypatch, {"damping": "3e-3"})
        said = " ".join(c.value for c in at.caption)
        assert "Another job is computing on this machine" in said and not at.exception
        assert at.button(key="compute").disabled  # a job of unknown size: asked first
        at.checkbox(key="unestimated").check().run()
        assert not at.button(key="compute").disabled
    finally:
        os.close(fd)
    seconds, units, _ = compute.job_cost(request)  # not cached while busy: timed now
    assert seconds > 0 and units > 0
    _, fd = slots.acquire("another job")
    try:  # the model is timed now: another request of it is priced without a new timing
        other = replace(default_selection(workspace), damping=5e-3).to_request(workspace)
        assert compute.job_cost(other)[0] > 0
    finally:
        os.close(fd)
    forget_estimates()


def test_a_new_window_or_damping_is_priced_without_timing_the_model_again(workspace, monkeypatch):
    """At 128² one timed forward of the batch took seconds, and every move of the window
    slider (or of λ, the estimator…) timed it again before the page answered. A pass's time
    depends on the model and the batch's shape only, so each model is timed once."""
    timed = []

    def spy(model, inputs):
        timed.append(tuple(inputs.shape))
        return real(model, inputs)

    real = compute.example_seconds
    monkeypatch.setattr(compute, "example_seconds", spy)
    base = default_selection(workspace)
    forget_estimates()
    first = compute.job_cost(base.to_request(workspace))
    moved = replace(base, t_start=base.t_start + 1, n_steps=base.n_steps - 1, damping=2e-3)
    second = compute.job_cost(moved.to_request(workspace))
    assert len(timed) == 1 and first[0] > 0 and second[0] > 0
    cg = compute.job_cost(replace(moved, estimator="cg", rtol=0.05).to_request(workspace))
    assert len(timed) == 1 and cg[0] > second[0] and cg[2]  # more passes, the same timing
    forget_estimates()


def test_the_estimate_adds_each_workers_setup_as_measured_here(workspace, monkeypatch):
    """Two uncached analyses (UNet vs ViT at another λ): the caption adds one setup per worker,
    a first guess until a job here has measured it, then the measured figure."""
    runner = JobRunner(workspace)
    store = runner.store
    saved = store.job_setup()
    store._cache.delete("timing:job_setup")
    try:
        params = {"damping": "0.003", "vs": "vit_tiny_s1"}
        at = open_app(workspace, monkeypatch, params)
        assert at.button(key="compute").label == "Compute 2 analyses"
        (line,) = [t for t in texts(at.caption).split("\n") if "Estimated time" in t]
        guess = compute.format_duration(2 * compute.DEFAULT_SETUP_SECONDS)
        assert f"{guess} of it to start the workers and load the models (a first guess)" in line
        store.record_job_setup(45.0)
        at = open_app(workspace, monkeypatch, params)
        (line,) = [t for t in texts(at.caption).split("\n") if "Estimated time" in t]
        measured = compute.format_duration(2 * 45.0)
        assert f"{measured} of it to start the workers and load the models (as measured" in line
    finally:
        store._cache.delete("timing:job_setup")
        if saved is not None:
            store.record_job_setup(saved)


@pytest.mark.parametrize(
    ("params", "button"),
    [({"panel": "Validation", "cf_p": "7"}, "cf_run"), ({"panel": "Sensitivity"}, "sens_compute")],
    ids=["validation", "sensitivity"],
)
def test_stale_figures_start_no_work_for_the_old_selection(workspace, monkeypatch, params, button):
    at = open_app(workspace, monkeypatch, params)
    assert_clean(at)
    assert at.button(key=button).disabled is False  # current figures: work may start
    at.number_input(key="sb_damping").set_value(1e-3).run()
    assert not at.exception
    assert "Stale figures" in texts(at.warning)
    assert at.button(key=button).disabled is True  # it would run for λ = 1e-4, not 1e-3
    assert "These figures are stale" in texts(at.caption)
    if button == "sens_compute":  # a sweep's count is the drawn selection's, not the sidebar's
        shown = "cached for the figures shown, not the sidebar's selection (stale"
        assert shown in texts(at.caption)


def test_the_check_states_its_cost_before_the_click(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch, {"panel": "Validation", "cf_p": "8"})
    assert_clean(at)
    assert at.button(key="cf_run")
    assert re.search(
        r"Estimated time: ≈ \d+ (s|min): the solve for this batch in float64", texts(at.caption)
    )


def test_the_check_estimate_times_a_float64_copy_and_leaves_the_cached_model(
    workspace, monkeypatch
):
    """The check's estimate times the solve in float64 (its precision), on a copy: the model
    every other job and panel loads stays float32."""
    import torch

    from coherence.dashboard import loaders

    timed = []

    def spy(model, inputs):
        timed.append((next(model.parameters()).dtype, inputs.dtype))
        return real(model, inputs)

    real = compute.example_seconds
    monkeypatch.setattr(compute, "example_seconds", spy)
    request = default_selection(workspace).to_request(workspace)
    forget_estimates()
    f32 = compute.job_cost(request)
    f64 = compute.job_cost(request, float64=True)
    assert timed == [(torch.float32, torch.float32), (torch.float64, torch.float64)]
    assert f64[1] == f32[1] and f64[0] > 0  # the same units, timed separately
    model, _ = loaders.model(request.checkpoints[0])
    assert next(model.parameters()).dtype == torch.float32
    forget_estimates()


def test_cuda_on_a_cpu_machine_names_no_missing_button(workspace, monkeypatch):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible: cuda is a valid choice here")
    at = open_app(workspace, monkeypatch)
    at.selectbox(key="sb_device").set_value("cuda").run()
    assert not at.exception
    assert "no CUDA GPU is visible" in texts(at.error)
    assert not [b for b in at.button if b.key == "compute"]
    shown = texts(at.info) + texts(at.warning)
    assert "Compute button above" not in shown and "press Compute" not in shown
    assert "fix the selection above" in texts(at.warning)  # the stale banner says what to do


def test_a_link_rtol_outside_the_widgets_range_is_refused(workspace, monkeypatch):
    query = default_selection(workspace).to_query() | {"est": "cg", "rtol": "1e-30"}
    at = open_app(workspace, monkeypatch, query)
    assert not at.exception
    assert "rtol='1e-30': the cg tolerance must lie in [1e-08, 0.99]" in texts(at.warning)
    assert at.number_input(key="sb_rtol").value == pytest.approx(1.5e-2)  # UNet default
    assert at.query_params["rtol"] == "0.015"  # the link now says what the screen shows
    assert "below what float32 residuals reliably reach" not in texts(at.caption)
    # a tolerance float32 may never reach is said under the widget, before any job (the CLI
    # warned; the dashboard let cg run every column to its cap)
    at.number_input(key="sb_rtol").set_value(1e-6).run()
    assert "1e-06 is below what float32 residuals reliably reach" in texts(at.caption)


def test_panel_choices_travel_in_the_link(workspace, monkeypatch):
    pair = "CE-CRP ← CE-RP"
    at = open_app(workspace, monkeypatch, {"two_time_pair": pair, "two_time_seed": "unet_tiny_s2"})
    assert_clean(at)
    assert not at.warning
    assert at.selectbox(key="two_time_pair").value == pair
    assert at.selectbox(key="two_time_seed").value == "unet_tiny_s2"
    (figure,) = charts(at)
    assert "perturbation CE-RP" in figure["layout"]["title"]["text"]
    # a choice made on the page goes into the link
    at.selectbox(key="two_time_seed").set_value("mean").run()
    assert "two_time_seed" in at.query_params and at.query_params["two_time_seed"] == "mean"
    assert at.query_params["two_time_pair"] == pair


@pytest.mark.parametrize(
    ("panel", "key"),
    [("Two-time influence", "zscale_two_time"), ("Conservation", "zscale_mass")],
)
def test_the_colour_scale_travels_in_the_link(workspace, monkeypatch, panel, key):
    at = open_app(workspace, monkeypatch, {"panel": panel, key: "diverging"})
    assert_clean(at)
    assert not at.warning
    assert at.selectbox(key=key).value == "diverging"
    heatmap = charts(at)[0]["data"][0]
    assert heatmap["zmin"] == pytest.approx(-heatmap["zmax"])  # symmetric around 0
    assert at.query_params[key] == "diverging"
    at.selectbox(key=key).set_value("auto").run()
    assert at.query_params[key] == "auto"  # a choice made on the page goes into the link


def test_the_conservation_maps_offer_a_class_pair_that_travels_in_the_link(workspace, monkeypatch):
    """The caption promised transfer of the conservation law across classes, and the maps
    showed only the intra-class mean. A class pair R ← P draws that pair's block (batch and
    seed mean), for mass and for energy alike, and travels in the link as cons_pair."""
    from coherence.report import load_groups

    selection = default_selection(workspace)
    response, perturbation = selection.classes[1], selection.classes[0]
    pair = f"{response} ← {perturbation}"
    result = load_groups(workspace, scan_workspace(workspace), selection)[0].result
    r, p = selection.classes.index(response), selection.classes.index(perturbation)
    for tab in ("Mass", "Energy"):
        at = open_app(
            workspace,
            monkeypatch,
            {"panel": "Conservation", "cons_response": tab, "cons_pair": pair},
        )
        assert_clean(at)
        assert not at.warning
        assert at.selectbox(key="cons_pair").value == pair
        (heatmap,) = [
            c for c in charts(at) if "Two-time influence on" in c["layout"]["title"]["text"]
        ]
        title = heatmap["layout"]["title"]["text"]
        pair_words = f"response {response} ← perturbation {perturbation}"
        assert title == f"Two-time influence on {tab.lower()}, {pair_words}"
        by_hand = result.H_std[tab.lower()][:, :, :, r, :, p].mean(axis=(0, 1))
        np.testing.assert_allclose(plotly_array(heatmap["data"][0]["z"]), by_hand, rtol=1e-5)
        assert at.query_params["cons_pair"] == pair
    at.selectbox(key="cons_pair").set_value("intra").run()  # back to the mean
    (heatmap,) = [c for c in charts(at) if "Two-time influence on" in c["layout"]["title"]["text"]]
    assert heatmap["layout"]["title"]["text"] == "Two-time influence on energy, intra-class mean"
    assert at.query_params["cons_pair"] == "intra"  # the open panel's choice, written back
    bad = open_app(workspace, monkeypatch, {"panel": "Conservation", "cons_pair": "x ← y"})
    assert not bad.exception
    assert "cons_pair='x ← y': not offered" in texts(bad.warning)


def test_the_conservation_response_tab_travels_in_the_link(workspace, monkeypatch):
    """Mass or Energy: a link opens the sub-tab it names, only that response is drawn, and
    switching tabs on the page rewrites the link."""

    def titles(at):
        return [c["layout"]["title"]["text"] for c in charts(at)]

    at = open_app(workspace, monkeypatch, {"panel": "Conservation", "cons_response": "Energy"})
    assert_clean(at)
    assert not at.warning
    assert any("on energy" in t for t in titles(at)) and not any("mass" in t for t in titles(at))
    assert at.query_params["cons_response"] == "Energy"
    at = open_app(workspace, monkeypatch, {"panel": "Conservation"})
    assert any("on mass" in t for t in titles(at)) and not any("energy" in t for t in titles(at))
    assert at.query_params["cons_response"] == "Mass"  # the default, written back
    at.session_state["cons_response"] = "Energy"  # AppTest cannot click a tab
    at.run()
    assert any("on energy" in t for t in titles(at))
    assert at.query_params["cons_response"] == "Energy"
    other = open_app(workspace, monkeypatch, {"panel": "Two-time influence"})
    assert "cons_response" not in other.query_params  # not the open panel's choice
    lower = open_app(workspace, monkeypatch, {"panel": "Conservation", "cons_response": "energy"})
    assert not lower.warning and lower.query_params["cons_response"] == "Energy"  # as in resp=
    bad = open_app(workspace, monkeypatch, {"panel": "Conservation", "cons_response": "Entropy"})
    assert not bad.exception
    assert "cons_response='Entropy': not offered" in texts(bad.warning)
    assert bad.query_params["cons_response"] == "Mass"


def test_bad_panel_choices_in_a_link_warn_and_use_the_default(workspace, monkeypatch):
    at = open_app(
        workspace,
        monkeypatch,
        {"two_time_seed": "no_such_seed", "two_time_pair": "x ← y", "field_h": "abc"},
    )
    assert not at.exception
    warnings = texts(at.warning)
    assert "two_time_seed='no_such_seed': not offered for this selection; using 'mean'" in warnings
    assert "two_time_pair='x ← y': not offered" in warnings
    assert "field_h='abc': not a whole number" in warnings
    assert at.query_params["two_time_seed"] == "mean"
    assert "field_h" not in at.query_params  # not the open panel's choice
    rollout = open_app(workspace, monkeypatch, {"panel": "Rollout", "field_h": "999"})
    assert not rollout.exception
    assert "field_h='999': not offered for this selection" in texts(rollout.warning)
    assert rollout.slider(key="field_h").value == 5  # the whole trajectory, the default


def test_a_linked_rollout_horizon_is_taken_without_a_streamlit_warning(workspace, monkeypatch):
    """The slider was drawn with a default beside the link's value in its state, and
    Streamlit logged "created with a default value but also had its value set via the
    Session State API", with a stack trace, on every such load. The rollout's band pools
    seeds, and its CSV says so."""
    from streamlit.elements.lib import policies

    seen: list[str] = []
    # AppTest runs without Streamlit's runtime, where the check returns at once: pretend one
    monkeypatch.setattr(policies.runtime, "exists", lambda: True)
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)  # once per process
    monkeypatch.setattr(policies._LOGGER, "warning", lambda text, *a, **k: seen.append(text % a))
    at = open_app(workspace, monkeypatch, {"panel": "Rollout", "field_h": "3"})
    assert_clean(at)
    assert at.slider(key="field_h").value == 3
    assert not [m for m in seen if "default value" in m], seen
    # another trajectory length (another range) starts at its last horizon, as the default
    # did: without a value Streamlit's new slider fell back to h = 1 (the review)
    at.session_state["field_h_max"] = 99  # as if the last range had been another
    at.run()
    assert at.slider(key="field_h").value == at.slider(key="field_h").max == 5
    assert "seeds, classes and test trajectories pooled" in texts(at.caption)


def test_the_cached_analyses_list_switches_the_selection(workspace, monkeypatch):
    at = open_app(workspace, monkeypatch)
    pick = at.selectbox(key="cached_pick")
    vit = next(o for o in pick.options if "ViT" in o)
    pick.set_value(vit).run()
    at.button(key="cached_switch").click().run()
    assert_clean(at)
    assert at.selectbox(key="sb_group").value == "ViT"
    assert at.query_params["ckpt"] == "vit_tiny_s1"
    assert "**ViT**: cached result" in texts(at.caption)
    assert charts(at)
    at.selectbox(key="sb_device").set_value("cpu").run()  # stored with another device
    shown = at.button(key="cached_switch")
    assert shown.label == "Shown" and shown.disabled  # the device is not part of the entry
    # what tells the entries apart comes first (the sidebar cuts long labels)
    assert all(
        re.match(r"(UNet|ViT)( [^·]+)? · (euclidean|\S+ λ=\S+) · ", o) for o in pick.options
    ), pick.options
    assert len(set(pick.options)) == len(pick.options)


def test_listing_the_cache_is_not_a_use_and_says_what_it_leaves_out(workspace, monkeypatch):
    """A big lab's walk: the sidebar read each listed result as a use (every page load made
    the 50 listed the newest for eviction), and listed 50 of 57 without a word; the picked
    entry's label was cut at the box's width."""
    from coherence.cache import ResultStore
    from coherence.dashboard import loaders

    store = ResultStore(workspace / "cache")
    oldest = store.entries()[-1]["key"]
    order = [entry["key"] for entry in store.entries()]
    loaders._stored_request.clear()  # read afresh, as a new server does
    assert oldest in [key for key, _, _ in loaders.cached_analyses(workspace)]
    assert [entry["key"] for entry in store.entries()] == order  # the eviction order kept
    monkeypatch.setattr(loaders, "CACHED_LISTED", 1)
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    said = " ".join(texts(at.sidebar.caption).split())
    assert f"Listed: the 1 most recently used of {len(order)} results; " in said
    assert len(at.selectbox(key="cached_pick").options) == 1
    assert at.selectbox(key="cached_pick").value in texts(at.sidebar.caption).replace("\\", "")


def test_the_cached_analyses_picker_follows_the_sidebar_to_a_cached_entry(workspace, monkeypatch):
    """Switching the group to the ViT left the picker on the UNet's entry with "Show it"
    offered; it follows the selection to its entry now, and a pick of another stays."""
    at = open_app(workspace, monkeypatch)
    assert at.selectbox(key="cached_pick").value.startswith("UNet")
    assert at.button(key="cached_switch").label == "Shown"
    at.selectbox(key="sb_group").set_value("ViT").run()
    assert_clean(at)
    assert "**ViT**: cached result" in texts(at.caption)  # the ViT's default view is cached
    assert at.selectbox(key="cached_pick").value.startswith("ViT")
    assert at.button(key="cached_switch").label == "Shown"
    unet = next(o for o in at.selectbox(key="cached_pick").options if o.startswith("UNet"))
    at.selectbox(key="cached_pick").set_value(unet).run()  # looked at, not switched to
    assert at.selectbox(key="cached_pick").value == unet
    assert at.button(key="cached_switch").label == "Show it"


def test_cached_results_the_page_cannot_show_are_counted_not_offered(workspace, monkeypatch):
    """A one-class analysis from the command line was offered, and its click said "cannot
    be computed" for a computed result: it is left out of the list, and counted."""
    from coherence.dashboard import loaders

    listed = loaders.cached_analyses
    one_class = default_selection(workspace).to_request(workspace).to_dict()
    one_class["classes"] = one_class["classes"][:1]
    monkeypatch.setattr(
        loaders,
        "cached_analyses",
        lambda root, *a, **k: [*listed(root, *a, **k), ("f" * 16, 0.0, one_class)],
    )
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    options = at.selectbox(key="cached_pick").options
    assert len(options) == len(listed(workspace)) and not any("f" * 8 in o for o in options)
    said = " ".join(texts(at.sidebar.caption).split())
    assert "1 other cached result (the command line's: one class" in said
    assert f"`coherence cache info --workspace {workspace}` lists every one" in said
    # that entry alone: counted, and not also "nothing is cached" (it said both)
    monkeypatch.setattr(
        loaders, "cached_analyses", lambda root, *a, **k: [("f" * 16, 0.0, one_class)]
    )
    said = " ".join(texts(open_app(workspace, monkeypatch).sidebar.caption).split())
    assert "1 other cached result" in said and "Nothing is cached" not in said


def test_a_cached_subset_names_its_seeds_and_responses(workspace):
    """A subset assembled from a cached analysis (one seed, no mass) read like the whole
    group's entry: its label names the seed, after the group, and the responses it holds."""
    from coherence.dashboard.sidebar import _cached_label

    catalog = scan_workspace(workspace)
    selection = default_selection(workspace)
    group = catalog.group_of(selection.dataset, selection.checkpoints[0])
    assert len(group.checkpoints) > 1 and selection.checkpoints == group.checkpoints
    whole = _cached_label(catalog, selection, "k" * 8)
    first = group.checkpoints[0]
    subset = replace(selection, checkpoints=(first,), responses=("smse",))
    part = _cached_label(catalog, subset, "k" * 8)
    seed = first.split("_")[-1]  # unet_tiny_s2 → s2: the words every name shares dropped
    assert part.startswith(f"UNet {seed} · ") and whole.startswith("UNet · ")
    assert "1 seed × " in part and " · SMSE · snapshots" in part
    assert "SMSE" not in whole  # every response: not named
    # the batches by number (trajectories 0 and 1 read alike as "1 batch"), the classes
    # where not all, and no λ for euclidean, which ignores it
    assert f"× batch {selection.trajectories[0]} · " in whole
    other = _cached_label(catalog, replace(selection, trajectories=(1,)), "k" * 8)
    assert "× batch 1 · " in other and other != whole
    two = replace(selection, classes=selection.classes[:2], estimator="euclidean")
    label = _cached_label(catalog, two, "k" * 8)
    assert f" · {','.join(selection.classes[:2])} · " in label and "λ" not in label
    assert "λ=" in whole and f"{selection.dataset} · " in whole  # all classes: not named


def test_a_moved_workspace_still_lists_its_cached_analyses(workspace, tmp_path, monkeypatch):
    """The stored requests name the files by absolute path; a copy of the workspace under
    another root (moved, mounted in a container) still offers them, and one switches to a
    cached result. An entry whose checkpoint was rewritten under the same name is still
    listed, but the click says its files changed (checked then, not on every page load)."""
    moved = copy_workspace(workspace, tmp_path / "elsewhere" / "ws")
    at = open_app(moved, monkeypatch)
    pick = at.selectbox(key="cached_pick")
    here = open_app(workspace, monkeypatch).selectbox(key="cached_pick")
    assert len(pick.options) == len(here.options) > 0
    vit = next(o for o in pick.options if "ViT" in o)
    pick.set_value(vit).run()
    at.button(key="cached_switch").click().run()
    assert_clean(at)
    assert "**ViT**: cached result" in texts(at.caption)
    assert "files behind this entry changed" not in texts(at.warning)
    weights = checkpoints_dir(moved) / "vit_tiny_s1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # other weights
    at = open_app(moved, monkeypatch)
    at.selectbox(key="cached_pick").set_value(vit).run()
    at.button(key="cached_switch").click().run()
    assert "files behind this entry changed" in texts(at.warning)
    assert "**ViT**: cached result" not in texts(at.caption)


def test_an_entry_computed_on_a_gpu_is_offered_on_a_cpu_machine(workspace, monkeypatch):
    """The device is not part of the cache key: a request stored with device cuda (computed
    on a GPU box, the workspace then mounted on a laptop) is listed and served here."""
    from coherence.dashboard import sidebar
    from coherence.dashboard.selection import from_request

    catalog = scan_workspace(workspace)
    runner = JobRunner(workspace)
    request = default_selection(workspace).to_request(workspace)
    stored = request.to_dict() | {"device": "cuda"}
    selection = from_request(catalog, stored)
    assert selection is not None and selection.device == "cuda"
    assert sidebar._same_files(catalog, selection, runner.key(request))


def test_plural_and_seed_chips(workspace, monkeypatch):
    assert plural(1, "dataset") == "1 dataset" and plural(2, "dataset") == "2 datasets"
    assert plural(2, "batch", "batches") == "2 batches"
    at = open_app(workspace, monkeypatch)
    assert "2 seeds × 1 batch (" in texts(at.caption)  # the selection line, not 'seed(s)'
    caption = texts(at.sidebar.caption)
    assert "2 datasets" in caption and "3 checkpoints" in caption
    assert at.multiselect(key="sb_ckpts").options == ["seed 1", "seed 2"]


def _check_spec(workspace, perturbation: int = 0) -> dict:
    selection = default_selection(workspace)
    return counterfactual_spec(
        checkpoint=checkpoints_dir(workspace) / "unet_tiny_s1",
        data=datasets_dir(workspace) / selection.dataset,
        classes=selection.classes,
        trajectory=0,
        t_start=selection.t_start,
        n_steps=selection.n_steps,
        perturbation=perturbation,
        response="smse",
        estimator=selection.estimator,
        damping=selection.damping,
        rtol=selection.rtol,
    )


@pytest.mark.slow
def test_the_check_runs_as_a_background_job_with_progress_cancel_and_reattach(
    workspace, monkeypatch
):
    runner = JobRunner(workspace)
    key = runner.task_key(COUNTERFACTUAL.name, _check_spec(workspace, perturbation=2))
    monkeypatch.setenv(TEST_DELAY_ENV, "0.5")  # the worker inherits it: a job of seconds
    params = {"panel": "Validation", "cf_p": "2"}
    first = open_app(workspace, monkeypatch, params)
    assert_clean(first)
    assert first.selectbox(key="cf_p").value == 2  # from the link
    first.button(key="cf_run").click().run()
    assert not first.exception
    assert first.get("progress"), "no progress bar after Run check"
    second = open_app(workspace, monkeypatch, params)  # a reload re-attaches
    assert second.get("progress") and not [b for b in second.button if b.key == "cf_run"]
    assert second.button(key="cf_cancel_jobs")
    second.button(key="cf_cancel_jobs").click().run()
    deadline = time.monotonic() + 120
    while runner.status(key).active:
        assert time.monotonic() < deadline, "the check did not stop after Cancel"
        time.sleep(0.25)
    assert runner.status(key).state == "cancelled", runner.status(key).error
    monkeypatch.delenv(TEST_DELAY_ENV)
    first.run()
    assert "The check was cancelled" in texts(first.warning)
    first.button(key="cf_run").click().run()
    deadline = time.monotonic() + 180
    while runner.status(key).state != "done":
        assert runner.status(key).state != "failed", runner.status(key).error
        assert time.monotonic() < deadline, "the check did not finish"
        time.sleep(0.5)
    validation = importlib.import_module("coherence.dashboard.panels.validation")
    rows: list[tuple[str, dict]] = []
    real = validation.downloads

    def recording(key, stem, **kwargs):  # the names and headers of the check's downloads
        rows.append((stem, kwargs))
        real(key, stem, **kwargs)

    monkeypatch.setattr(validation, "downloads", recording)
    first.run()
    assert_clean(first)
    assert len(charts(first)) == 2  # scatter and error curve
    # named and headed by the check (every check downloaded under one name, its files
    # naming every seed and response but not the checkpoint, example and response checked)
    checkpoint = first.selectbox(key="cf_ckpt").value
    (scatter_stem, scatter), (stem, curve) = rows
    assert stem.endswith(f"_counterfactual_{checkpoint}_traj0_p2_smse")
    assert scatter_stem.endswith(f"_counterfactual_scatter_{checkpoint}_traj0_p2_smse")
    assert scatter["figure"].layout.title.text.startswith("(a) ")  # both formats, both charts
    assert curve["figure"].layout.title.text.startswith("(b) ")
    meta = curve["meta"]
    assert meta["checkpoint"] == checkpoint and meta["response"] == "smse"
    assert meta["perturbed example"].startswith("#2: ") and len(meta["epsilons"]) == 4
    (errors_csv,) = [f for f in curve["files"] if f[0] == "Errors (CSV)"]
    header = errors_csv[2]().decode()
    assert f"# checkpoint: {checkpoint}\n" in header and "# perturbed example: #2: " in header
    assert "Relative error" in texts(first.caption)
    # stored as npz + JSON under the check's content key, never a pickle
    blob = runner.store._cache.get(f"artifact:{key}")
    assert blob[:2] == b"PK"
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        assert set(archive.files) >= {"epsilons", "rel_errors", "__metadata__"}
    arrays, metadata = runner.artifact(key)
    assert metadata["kind"] == "counterfactual" and arrays["rel_errors"].shape == (4,)


def test_the_conservation_hint_says_when_adding_the_responses_needs_no_computation(
    workspace, monkeypatch, tmp_path
):
    """SMSE alone, where the cached result holds mass and energy too: the hint said
    "… and compute" for what shows at once. Without that result, computing is the way."""
    at = open_app(workspace, monkeypatch, {"panel": "Conservation", "resp": "smse"})
    assert_clean(at)
    hint = next(t for t in texts(at.info).split("\n") if "to the response observables" in t)
    assert "Add mass and energy" in hint.replace("*", "")
    assert "its result is cached already" in hint and "compute" not in hint
    # stale: the panel shows the last computed selection, but the sidebar's λ is another, and
    # that is where the responses would be added: nothing cached there (the review's item)
    at.number_input(key="sb_damping").set_value(1e-3).run()
    assert "Stale figures" in texts(at.warning)
    hint = next(t for t in texts(at.info).split("\n") if "to the response observables" in t)
    assert "compute: all responses come from one pass" in hint, hint
    at.multiselect(key="sb_resp").set_value(["smse", "mass", "energy"]).run()
    assert "are chosen in the sidebar but not in the selection shown" in texts(at.info)
    bare = copy_workspace(workspace, tmp_path / "bare")
    JobRunner(bare).store.clear()
    at = open_app(bare, monkeypatch, {"panel": "Conservation", "resp": "smse"})
    hint = next(t for t in texts(at.info).split("\n") if "to the response observables" in t)
    assert "compute: all responses come from one pass" in hint


def test_scores_of_another_map_than_smse_say_so(workspace, monkeypatch):
    """Without SMSE among the responses the scores read the first one selected: the mass
    map's 0.85 stood under the plain name "Diagonal dominance" as the headline (a
    walk-through). The verdict line and the Scores panel now name the map."""
    at = open_app(workspace, monkeypatch, {"resp": "smse"})
    assert_clean(at)
    assert "the scores read" not in texts(at.markdown)
    at = open_app(workspace, monkeypatch, {"resp": "mass", "panel": "Scores"})
    assert_clean(at)
    note = "the scores read the mass map, not SMSE's: SMSE is not among the selected responses"
    assert note in texts(at.markdown)  # the verdict line
    assert note in texts(at.info)  # the Scores panel


def test_a_misspelled_link_key_is_named_with_its_likely_spelling(workspace, monkeypatch):
    """``dampng=0.01`` left λ at 1e-4 without a word (a walk-through); report links warned
    already, the dashboard now warns the same way, and a correct link gets no warning."""
    at = open_app(workspace, monkeypatch, {"dampng": "0.01", "panel": "Scores"})
    assert_clean(at)
    assert "'dampng' is no parameter of a dashboard link (did you mean 'damping'?); ignored" in (
        texts(at.warning)
    )
    assert "dampng" not in at.query_params  # said ignored: the link shown no longer holds it
    at = open_app(
        workspace, monkeypatch, {"damping": "0.0001", "panel": "Scores", "utm_source": "x"}
    )
    assert "no parameter of a dashboard link" not in texts(at.warning)  # nor a tracking key
    assert at.query_params["utm_source"] == "x"
    assert "no such tab" not in texts(at.warning)
    # a misspelled tab opened the default one without a word
    at = open_app(workspace, monkeypatch, {"panel": "Sensitivty"})
    assert "panel='Sensitivty': no such tab (did you mean 'Sensitivity'?)" in texts(at.warning)


def test_spectrum_table_decimals_and_the_conservation_maps_caveat(workspace, monkeypatch):
    """The spectrum table writes the dominant share with two decimals (0.30, as the scores do,
    not 0.3), and the Conservation panel says its maps are the estimator's own reading."""
    import json

    at = open_app(workspace, monkeypatch, {"panel": "NTK spectrum"})
    assert_clean(at)
    (table,) = [t for t in at.dataframe if "dominant share" in t.value.columns]
    formats = {
        name: config.get("type_config", {}).get("format")
        for name, config in json.loads(table.proto.columns).items()
    }
    assert formats["dominant share"] == "%.2f" and formats["decay slope"] == "%.2f"
    assert formats["participation ratio"] == "%.1f" and formats["entropy rank"] == "%.1f"
    # each faint line names its seed and trajectory (it said 'series 0'), and the median
    # stops where the first seed's rank ends (it rose above every line past it)
    selection = default_selection(workspace)
    (spectrum,) = [c for c in charts(at) if "spectrum" in c["layout"]["title"]["text"]]
    lines = spectrum["data"]
    seed = selection.checkpoints[0]
    assert f"({seed}, trajectory {selection.trajectories[0]})" in lines[0]["hovertemplate"]
    median = plotly_array(lines[-1]["y"])
    rows = np.array([plotly_array(t["y"]) for t in lines[:-1]])
    common = np.isfinite(rows).all(axis=0)
    np.testing.assert_allclose(median[common], np.median(rows[:, common], axis=0), rtol=1e-6)
    assert np.isnan(median[~common]).all()
    at = open_app(workspace, monkeypatch, {"panel": "Conservation"})
    assert "Read these maps as the estimator's own" in texts(at.caption)


def test_krylov_depth_is_a_sidebar_control_that_travels_in_the_link(workspace, monkeypatch):
    """The depth is drawn for the estimators that have one (ekfac-krylov's default 1), a
    chosen depth goes into the link and asks for its own analysis, a link with it
    reproduces it, and an estimator without a Krylov basis draws no depth and drops it."""
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    assert at.number_input(key="sb_depth").value == 1 and "depth" not in at.query_params
    at.number_input(key="sb_depth").set_value(3).run()
    assert not at.exception
    assert at.query_params["depth"] == "3"
    assert "not computed yet" in texts(at.info)  # another request key: nothing cached
    link = {key: at.query_params[key] for key in at.query_params}
    shared = open_app(workspace, monkeypatch, link)
    assert not shared.exception and not shared.warning
    assert shared.number_input(key="sb_depth").value == 3
    at.selectbox(key="sb_est").set_value("subspace").run()
    assert not at.exception
    assert not [n for n in at.number_input if n.key == "sb_depth"]
    assert "depth" not in at.query_params
    conservation = open_app(workspace, monkeypatch, {"panel": "Conservation"})
    assert "Raise **Krylov depth** in the sidebar" in texts(conservation.caption)


def test_cell_labels_keep_close_times_apart():
    """The drill-down's cell picker writes times with as many digits as keep them apart
    (12.30 and 12.35 both read 12.3 at three)."""
    from coherence.dashboard.panels.two_time import distinct_times

    assert distinct_times(np.array([12.30, 12.35, 12.40])) == ["12.3", "12.35", "12.4"]
    assert distinct_times(np.linspace(0, 0.75, 16))[:3] == ["0", "0.05", "0.1"]
    close = np.array([0.5120, 0.5125, 0.5130])
    assert len(set(distinct_times(close))) == 3


def test_the_conservation_advice_follows_the_views_depth():
    """'Raise Krylov depth' only where it is low; at depth 4 the caption says what the view
    runs at; an estimator without a depth is pointed to ekfac-krylov."""
    from coherence.dashboard.panels.conservation import _depth_advice

    assert "Raise **Krylov depth**" in _depth_advice("ekfac-krylov", 1)
    assert _depth_advice("ekfac-krylov", 4) == "This view runs at ekfac-krylov depth 4."
    assert _depth_advice("subspace", None).startswith("Choose ekfac-krylov")


def _two_time_spec(at) -> dict:
    """The two-time map's chart: the one with click targets."""
    (spec,) = [c for c in charts(at) if any(t.get("name") == "cells" for t in c["data"])]
    return spec


def _two_time_shapes(at) -> list[dict]:
    return _two_time_spec(at)["layout"].get("shapes", [])


def test_the_spectrum_tables_rank_is_no_less_than_its_effective_ranks():
    """Two seeds of ranks 4 and 2: the lower median read 2 beside a participation ratio of
    2.5 (a walkthrough); the higher median is an observed rank and bounds both medians."""
    from types import SimpleNamespace

    from coherence.dashboard.panels.models import _spectrum_row

    spectra = np.full((2, 1, 6), np.nan)
    spectra[0, 0, :4] = [4.0, 3.0, 2.0, 1.0]
    spectra[1, 0, :2] = [2.0, 1.0]
    group = SimpleNamespace(label="UNet", result=SimpleNamespace(subspace_spectra=spectra))
    row = _spectrum_row(group)
    assert row["rank"] == 4
    assert row["participation ratio"] <= row["rank"] and row["entropy rank"] <= row["rank"]


def test_cells_beyond_the_colour_range_are_counted_and_said():
    """A one-epoch model's map (5.9 to 20.4) on the paper's [0, √6] was one flat square with
    no word; a caption now counts the cells drawn at the range's ends (both groups' maps)."""
    from coherence.dashboard.panels.common import clipped_note

    said = clipped_note([np.array([[5.9, 20.4], [7.0, 8.0]])], (0.0, 2.45))
    assert said.startswith(":orange[4 of 4 cells lie beyond the colour range [0, 2.45]]")
    assert "choose **auto** or **diverging**" in said
    both = clipped_note([np.array([[0.5, -0.2]]), np.array([[np.nan, 1.0]])], (0.0, 2.45))
    assert "1 of 3 cells" in both  # the negative one; NaN is no cell drawn
    assert clipped_note([np.array([[0.0, 2.45]])], (0.0, 2.45)) == ""  # the ends are in range


def test_cells_clipped_by_less_than_a_colour_step_are_not_counted():
    """A walkthrough: '2 of 9 cells lie beyond the colour range [0, 6.93]' for two cells of
    −0.01, noise around 0 whose clipped colour is the one they would have had. A cell beyond
    an end by under 2% of the range is drawn as it would be and not counted."""
    from coherence.dashboard.panels.common import clipped_note

    noise = np.array([[-0.01, 3.0, 6.93 + 0.1], [-0.13, 6.93, 0.0]])  # 2% of 6.93 is 0.139
    assert clipped_note([noise], (0.0, 6.93)) == ""
    seen = np.array([[-0.15, 3.0, 6.93 + 0.2, 1.0]])  # beyond by more than a step
    assert clipped_note([seen], (0.0, 6.93)).startswith(":orange[2 of 4 cells lie beyond")
    assert clipped_note([np.array([[-0.05]])], (-2.0, -1.0)).startswith(":orange[1 of 1 cells")


def test_a_tabs_choices_survive_a_visit_to_another_tab(workspace, monkeypatch):
    """Streamlit drops a widget's state in a run that does not draw it, so a visit to the
    Class transfer tab reset the two-time map's colour scale and drill-down cell (a
    walkthrough at 128²); the tab gets them back, in the URL too, and a closed tab's choice
    is still known (the report draws every tab's scale)."""
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    at.selectbox(key="zscale_two_time").set_value("auto").run()
    at.selectbox(key="two_time_cell").set_value("2,3").run()
    at.session_state["panel"] = "Class transfer"
    at.run()
    assert "zscale_two_time" not in at.session_state  # the widget's own state went
    at.selectbox(key="zscale_transfer").set_value("diverging").run()
    at.session_state["panel"] = "Two-time influence"
    at.run()
    assert_clean(at)
    assert at.selectbox(key="zscale_two_time").value == "auto"
    assert at.selectbox(key="two_time_cell").value == "2,3"
    assert at.query_params["zscale_two_time"] == "auto"
    assert at.query_params["two_time_cell"] == "2,3"
    assert "zscale_transfer" not in at.session_state  # closed: kept_choice answers for it
    assert at.session_state["_panel_choices_kept"]["zscale_transfer"] == "diverging"


def test_the_drill_down_cell_travels_in_the_link(workspace, monkeypatch):
    """A picked cell (and its class, trajectory and channel) goes into the link and comes back
    from it; before a cell is picked the link carries none of the four."""
    from coherence.dashboard import panel_links
    from coherence.dashboard.panels.two_time import CELL_KEY, NO_CELL

    assert panel_links.UNSET[CELL_KEY] == NO_CELL  # the two modules agree
    assert set(panel_links.REQUIRES.values()) == {CELL_KEY}
    at = open_app(workspace, monkeypatch)
    assert_clean(at)
    assert not any(k.startswith("two_time_cell") for k in at.query_params)
    assert not _two_time_shapes(at)  # no cell picked: nothing outlined
    at.selectbox(key=CELL_KEY).set_value("2,3").run()
    (outline,) = _two_time_shapes(at)  # the picked cell is outlined on the map
    (heatmap,) = [t for t in _two_time_spec(at)["data"] if t["type"] == "heatmap"]
    t_p, t_r = plotly_array(heatmap["x"])[3], plotly_array(heatmap["y"])[2]
    assert outline["x0"] < t_p < outline["x1"]  # column 3: t_p
    assert outline["y0"] < t_r < outline["y1"]  # row 2: t_r
    link = {k: at.query_params[k] for k in at.query_params if k.startswith("two_time_cell")}
    assert link["two_time_cell"] == "2,3"
    assert set(link) == {
        "two_time_cell",
        "two_time_cell_class",
        "two_time_cell_batch",
        "two_time_cell_channel",
    }
    last_channel = at.selectbox(key="two_time_cell_channel").options[-1]
    query = default_selection(workspace).to_query() | link
    query["two_time_cell_channel"] = last_channel
    shared = open_app(workspace, monkeypatch, query)
    assert_clean(shared)
    assert not shared.warning, texts(shared.warning)
    assert shared.selectbox(key=CELL_KEY).value == "2,3"
    assert shared.selectbox(key="two_time_cell_channel").value == last_channel
    assert "input distance d(r, p) = " in texts(shared.markdown)  # the cell is drilled into
    bad = open_app(workspace, monkeypatch, {"two_time_cell": "99,99"})
    assert not bad.exception
    assert "two_time_cell='99,99': not offered for this selection" in texts(bad.warning)
    assert "two_time_cell" not in bad.query_params


def test_the_lag_chart_zooms_to_its_tails_and_the_link_keeps_it(workspace, monkeypatch):
    """The Δ = 0 peak squashed the tails: "Δ ≠ 0" fits the y axis to the other lags (the
    peak written above the plot); the choice travels in the link (left out while the whole
    curve is shown) and a value the tab does not offer is said and replaced."""
    influence = importlib.import_module("coherence.dashboard.panels.influence")
    exported = []
    real = influence.downloads
    monkeypatch.setattr(
        influence,
        "downloads",
        lambda key, stem, **kw: (exported.append((stem, kw["meta"])), real(key, stem, **kw)),
    )
    at = open_app(workspace, monkeypatch, {"panel": "Time lag"})
    assert_clean(at)
    assert "range" not in charts(at)[0]["layout"].get("yaxis", {})
    assert "lag_y" not in at.query_params
    whole_stem, whole_meta = exported[-1]
    assert whole_meta["y axis"] == "whole curve"
    at.radio(key="lag_y").set_value("tails").run()
    assert_clean(at)
    assert exported[-1][0] == f"{whole_stem}_tails" and exported[-1][1]["y axis"] == "tails"
    (zoomed,) = charts(at)
    lo, hi = zoomed["layout"]["yaxis"]["range"]
    (intra,) = [t for t in zoomed["data"] if str(t.get("name", "")).endswith("intra-class")]
    lags, values = plotly_array(intra["x"]), plotly_array(intra["y"])
    assert values[lags == 0][0] > hi and lo <= values[lags != 0].min()
    assert zoomed["layout"]["annotations"][0]["text"].startswith("at Δ = 0: UNet intra ")
    assert at.query_params["lag_y"] == "tails"
    shared = open_app(workspace, monkeypatch, {"panel": "Time lag", "lag_y": "tails"})
    assert_clean(shared)
    assert shared.radio(key="lag_y").value == "tails" and not shared.warning
    bad = open_app(workspace, monkeypatch, {"panel": "Time lag", "lag_y": "log"})
    assert not bad.exception
    assert bad.radio(key="lag_y").value == "whole"
    assert "lag_y='log': not offered for this selection" in texts(bad.warning)


@pytest.mark.slow
def test_a_cell_in_a_link_names_the_same_snapshots_in_a_moved_window(
    workspace, tmp_path, monkeypatch
):
    """In the window 1:4 (snapshots 1–5) the link's cell "2,3" is snapshots 2 and 3: the
    map's row 1 and column 2 (by window position it had been snapshots 3 and 4), and a cell
    of snapshot 0, outside the window, is not offered."""
    from coherence.dashboard.panels.two_time import CELL_KEY

    moved = copy_workspace(workspace, tmp_path / "ws")
    selection = replace(default_selection(moved), t_start=1, n_steps=4)
    JobRunner(moved).run(selection.to_request(moved))  # the window's analysis, cached
    at = open_app(moved, monkeypatch, selection.to_query() | {CELL_KEY: "2,3"})
    assert_clean(at)
    assert not at.warning, texts(at.warning)
    assert at.selectbox(key=CELL_KEY).value == "2,3"
    (outline,) = _two_time_shapes(at)
    (heatmap,) = [t for t in _two_time_spec(at)["data"] if t["type"] == "heatmap"]
    t_p, t_r = plotly_array(heatmap["x"])[2], plotly_array(heatmap["y"])[1]  # steps 3, 2
    assert outline["x0"] < t_p < outline["x1"] and outline["y0"] < t_r < outline["y1"]
    assert "(step 2)" in texts(at.markdown) and "(step 3)" in texts(at.markdown)
    off = open_app(moved, monkeypatch, selection.to_query() | {CELL_KEY: "0,3"})
    assert "two_time_cell='0,3': not offered for this selection" in texts(off.warning)


def test_the_drill_down_cell_names_snapshot_steps_and_keeps_them_when_the_window_moves():
    """The cell was kept by its position in the window ('5,3'): after the window moved from
    0:16 to 4:12 the drill-down named times no longer on the map, and a link's cell pointed at
    other snapshots. It names snapshot steps now; steps off the map pick nothing."""
    from coherence.dashboard.panels.two_time import NO_CELL, cell_position

    assert cell_position("5,3", range(0, 16)) == (5, 3)
    assert cell_position("6,5", range(4, 12)) == (2, 1)  # the same snapshots, moved
    assert cell_position("5,3", range(4, 12)) is None  # step 3 left the window
    assert cell_position(NO_CELL, range(16)) is None and cell_position("x", range(16)) is None


def test_a_cg_job_past_the_confirmation_says_its_estimate_is_a_bound(workspace, monkeypatch):
    """cg is estimated at its iteration cap: the caption said "up to", but the checkbox
    asked to "Start a job estimated at 13.4 h" (a walk-through) as if that were expected."""
    monkeypatch.setenv("COHERENCE_CONFIRM_MINUTES", "0")
    at = open_app(workspace, monkeypatch, {"est": "cg", "rtol": "0.05"})
    assert_clean(at)
    (box,) = [c for c in at.checkbox if c.key == "confirm_long_job"]
    assert box.label.startswith("Start a job estimated at up to "), box.label
    assert "(up to: cg counted at its iteration cap)" in texts(at.caption)
    at = open_app(workspace, monkeypatch, {"est": "subspace", "damping": "0.01"})
    (box,) = [c for c in at.checkbox if c.key == "confirm_long_job"]
    assert "up to" not in box.label, box.label


@pytest.mark.slow
def test_rollouts_run_as_a_background_job_on_the_first_visit_and_then_come_from_the_cache(
    workspace, monkeypatch, tmp_path
):
    """The Rollout panel rolled the models out in the page's own process (39 s of a frozen
    page on the demo at one thread, beside any job, and again after every restart). It
    starts a background job on the first visit, shows its progress, and draws the cached
    result; the test workspace (as `coherence study` leaves one) has its default's already."""
    at = open_app(workspace, monkeypatch, {"panel": "Rollout"})
    assert_clean(at)
    assert not at.get("progress") and len(charts(at)) == 2  # cached: curves and fields
    moved = copy_workspace(workspace, tmp_path / "ws")
    runner = JobRunner(moved)
    selection = default_selection(moved)
    key = runner.task_key("rollout", selection.rollout_spec(moved))
    runner.store._cache.delete(f"artifact:{key}")  # as before a restart of the old page
    before = runner.store.computations(key)
    monkeypatch.setenv(TEST_DELAY_ENV, "0.3")  # the worker inherits it: a job of seconds
    first = open_app(moved, monkeypatch, {"panel": "Rollout"})
    assert not first.exception
    assert first.get("progress") or runner.status(key).state == "done"
    assert runner.status(key).state in ("running", "done")
    deadline = time.monotonic() + 180
    while runner.status(key).state != "done":
        assert runner.status(key).state != "failed", runner.status(key).error
        assert time.monotonic() < deadline, "the rollouts did not finish"
        time.sleep(0.5)
    assert runner.store.computations(key) == before + 1
    first.run()
    assert_clean(first)
    assert len(charts(first)) == 2
    again = open_app(moved, monkeypatch, {"panel": "Rollout"})  # no second job
    assert len(charts(again)) == 2 and runner.store.computations(key) == before + 1


@pytest.mark.slow  # 15–25 s: the default suite stays under 10 minutes
def test_a_repaired_link_is_explained_when_the_rollout_panel_starts_its_job(
    workspace, monkeypatch, tmp_path
):
    """A link's bad value was replaced silently on a first visit to the Rollout tab: the tab
    starts its job and reruns the page at once, and the warnings of the first run went with
    it, while the address bar already held the repaired selection. They stay until a run of
    the page reaches its end."""
    moved = copy_workspace(workspace, tmp_path / "ws")
    runner = JobRunner(moved)
    key = runner.task_key("rollout", default_selection(moved).rollout_spec(moved))
    runner.store._cache.delete(f"artifact:{key}")
    monkeypatch.setenv(TEST_DELAY_ENV, "0.3")
    at = open_app(moved, monkeypatch, {"panel": "Rollout", "classes": "XX-NONE"})
    assert not at.exception
    assert runner.status(key).state in ("running", "done")  # the tab started its job
    assert "URL parameter classes='XX-NONE'" in texts(at.warning)
    wait_for(lambda: runner.status(key).state == "done", "the rollouts", timeout=180)
    at.run()  # the page's own rerun at the job's end: they stay (they went after 1–3 s)
    assert "URL parameter classes='XX-NONE'" in texts(at.warning) and len(charts(at)) == 2
    at.run()
    assert "URL parameter classes='XX-NONE'" in texts(at.warning)
    chosen = at.multiselect(key="sb_ckpts").value[:1]  # the visitor moves on: they go
    at.multiselect(key="sb_ckpts").set_value(chosen).run()
    at.run()
    assert "URL parameter" not in texts(at.warning)


@pytest.mark.slow
def test_rollouts_a_changed_selection_left_queued_are_withdrawn_and_restart_on_return(
    workspace, monkeypatch, tmp_path
):
    """The Rollout panel starts its selection's rollouts on its own, so browsing selections
    with the tab open queued one job per selection, each run in turn ahead of what the user
    asked for next. One left behind while it waits for a slot is cancelled; shown again, it
    starts afresh rather than reporting the cancellation."""
    moved = copy_workspace(workspace, tmp_path / "ws")
    runner = JobRunner(moved)
    first = default_selection(moved)
    dropped = replace(first, checkpoints=first.checkpoints[:1])  # a cached subset: not stale
    watchers.registry.clear()  # pages of earlier tests showed these (content-keyed) jobs
    keys = [runner.task_key("rollout", s.rollout_spec(moved)) for s in (first, dropped)]
    for key in keys:
        runner.store._cache.delete(f"artifact:{key}")
    before = [runner.store.computations(key) for key in keys]
    _, fd = slots.acquire("another job")  # every slot is taken: the rollouts queue
    try:
        at = open_app(moved, monkeypatch, {"panel": "Rollout"})
        assert not at.exception
        wait_for(lambda: runner.status(keys[0]).queued, "the first selection's rollouts to queue")
        at.multiselect(key="sb_ckpts").set_value(list(dropped.checkpoints)).run()
        assert not at.exception and "Stale" not in texts(at.warning)
        wait_for(lambda: runner.status(keys[0]).state == "cancelled", "the first to be withdrawn")
        wait_for(lambda: runner.status(keys[1]).queued, "the shown selection's rollouts to queue")
        at.multiselect(key="sb_ckpts").set_value(list(first.checkpoints)).run()
        assert not at.exception
        assert "The rollouts were cancelled." not in texts(at.warning)
        assert not [b for b in at.button if b.key == "ro_run"]  # started, not offered
        wait_for(lambda: runner.status(keys[1]).state == "cancelled", "the second to be withdrawn")
        wait_for(lambda: runner.status(keys[0]).queued, "the first to queue again")
    finally:
        os.close(fd)  # the slot is free: the queued rollouts run
    wait_for(lambda: runner.status(keys[0]).state == "done", "the first to finish", timeout=180)
    assert runner.status(keys[1]).state == "cancelled"  # withdrawn, nothing computed
    after = [runner.store.computations(key) for key in keys]
    assert after == [before[0] + 1, before[1]]
    at.run()
    assert_clean(at)
    assert len(charts(at)) == 2


@pytest.mark.slow
def test_a_rollout_another_page_shows_is_not_withdrawn_and_leaving_works_on_any_tab(
    workspace, monkeypatch, tmp_path
):
    """Leaving a selection cancelled its queued rollouts for every page, though another page
    (session) showed them and had never left; and a page that left from another tab than
    Rollout withdrew nothing (tabs are lazy), so the job ran ahead of the next Compute."""
    moved = copy_workspace(workspace, tmp_path / "ws")
    runner = JobRunner(moved)
    first = default_selection(moved)
    dropped = replace(first, checkpoints=first.checkpoints[:1])
    watchers.registry.clear()  # pages of earlier tests showed these (content-keyed) jobs
    keys = [runner.task_key("rollout", s.rollout_spec(moved)) for s in (first, dropped)]
    for key in keys:
        runner.store._cache.delete(f"artifact:{key}")
    _, fd = slots.acquire("another job")
    try:
        mine = open_app(moved, monkeypatch, {"panel": "Rollout"})
        wait_for(lambda: runner.status(keys[0]).queued, "the first selection's rollouts to queue")
        theirs = open_app(moved, monkeypatch, {"panel": "Rollout"})  # joins the same job
        assert not theirs.exception and theirs.get("progress")
        mine.multiselect(key="sb_ckpts").set_value(list(dropped.checkpoints)).run()
        wait_for(lambda: runner.status(keys[1]).queued, "the second selection's rollouts to queue")
        assert runner.status(keys[0]).queued  # the other page still shows it: kept
        mine.session_state["panel"] = "Class transfer"  # leave from another tab
        mine.multiselect(key="sb_ckpts").set_value(list(first.checkpoints)).run()
        assert not mine.exception
        wait_for(lambda: runner.status(keys[1]).state == "cancelled", "the second to be withdrawn")
        assert runner.status(keys[0]).queued
    finally:
        os.close(fd)
    wait_for(
        lambda: runner.status(keys[0]).state == "done", "the shared job to finish", timeout=180
    )
    theirs.run()
    assert_clean(theirs)
    assert len(charts(theirs)) == 2


def test_a_page_closed_or_reloaded_drops_out_of_a_jobs_watchers(monkeypatch):
    """A page shows a waiting job through the progress panel, which marks it every poll; a
    closed page stops marking, and after SEEN_SECONDS no longer keeps others from
    withdrawing the job (a page listed forever would have kept every reloaded page's)."""
    watchers.registry.clear()
    clock, page = [100.0], ["theirs"]
    monkeypatch.setattr(watchers.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(watchers, "page_name", lambda: page[0])
    watchers.mark_shown(["k"])
    page[0] = "mine"
    watchers.mark_shown(["k"])
    clock[0] += watchers.SEEN_SECONDS - 1
    assert watchers.shown_elsewhere("k")  # theirs, still open; mine is not counted
    clock[0] += 2
    assert not watchers.shown_elsewhere("k")
    assert "k" not in watchers.registry().seen  # forgotten, not kept per key forever


def test_conservation_on_navier_stokes_data_says_why_in_its_own_words(tmp_path, monkeypatch):
    """On NS data the tab printed the Euler caption (relative error of total mass, the
    Krylov depth advice) above "… exist for compressible Euler only; ns32 is ns"."""
    from coherence.surrogates.training import train
    from tests.fixtures import simulate, tiny_args

    root = tmp_path / "ws"
    data = simulate(datasets_dir(root), "tiny_ns", "ns", ("NS-Sines", "NS-Gauss"))
    train(data, checkpoints_dir(root) / "unet_ns_s3", tiny_args(epochs=1))
    at = open_app(root, monkeypatch, {"data": "tiny_ns", "panel": "Conservation"})
    assert not at.exception
    said = " ".join(texts(at.info).split())
    assert "tiny_ns is incompressible Navier–Stokes data, whose kinetic energy decays" in said
    assert "relative error of total mass" not in texts(at.caption)
    assert "Krylov depth" not in texts(at.caption)


@pytest.mark.slow  # 15–25 s: the default suite stays under 10 minutes
def test_a_dataset_with_walls_is_shown_with_what_training_would_refuse(
    workspace, monkeypatch, tmp_path
):
    """A Well folder of one's own with walls (or uneven snapshots) trained without a word;
    training now refuses it, and the page shows it with the reason (it still opens: a
    dataset that opened before that check keeps its models and results)."""
    import h5py

    moved = copy_workspace(workspace, tmp_path / "ws")
    for path in datasets_dir(moved).rglob("*.hdf5"):
        with h5py.File(path, "a") as f:
            for group in f["boundary_conditions"].values():
                group.attrs["bc_type"] = "wall"
    at = open_app(moved, monkeypatch)
    assert not at.exception
    assert "boundaries wall; the surrogates and responses assume a periodic" in texts(at.warning)
    plain = open_app(workspace, monkeypatch)
    assert "boundaries" not in texts(plain.warning)
