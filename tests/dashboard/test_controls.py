"""The table of sidebar controls: every row decodes what it encodes, the session state holds
what the URL holds, stale state is repaired, and the rules the request owns are reported in
the request's words (no streamlit involved)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coherence.analysis.request import MAX_EXAMPLES
from coherence.dashboard.checks import problems, window_problem
from coherence.dashboard.controls import (
    CONTROLS,
    QUERY_KEYS,
    encode,
    load_state,
    prepare_state,
    read_state,
)
from coherence.dashboard.selection import (
    DEFAULT_DAMPING,
    Selection,
    decode_query,
    default_selection,
)
from coherence.errors import RequestError

from .test_selection import synthetic_catalog

# The URL's key order before the table (links in study reports keep their form).
URL_ORDER = ["data", "ckpt", "classes", "traj", "window", "resp", "est", "damping", "device"]

SELECTIONS = [
    Selection(
        dataset="ce_demo",
        checkpoints=("unet_s10", "unet_s42"),
        classes=("CE-RP", "CE-RPUI"),
        trajectories=(0, 1, 2, 5),
        t_start=3,
        n_steps=7,
        responses=("smse", "mass"),
        estimator="cg",
        damping=3.0000000000000004e-05,
        rtol=0.015,
        compare=("vit_s10",),
    ),
    Selection(
        dataset="ce_demo",
        checkpoints=("vit_s10",),
        classes=("CE-CRP", "CE-RPUI"),
        trajectories=(4,),
        t_start=0,
        n_steps=20,
        responses=("energy",),
        estimator="krylov",
        damping=1e-12,
        device="cpu",
        depth=3,
    ),
]


def test_table_keys_are_unique_and_cover_the_selection():
    assert len(set(QUERY_KEYS)) == len(QUERY_KEYS) == len(CONTROLS)
    assert len({c.state for c in CONTROLS}) == len(CONTROLS)
    fields = {f for c in CONTROLS for f in c.assign((0, 0))}
    assert fields == set(vars(SELECTIONS[0]))


@pytest.mark.parametrize("selection", SELECTIONS)
def test_every_row_decodes_what_it_encodes(selection):
    catalog = synthetic_catalog()
    query = encode(selection)
    decoded, warnings = decode_query(query, catalog)
    assert warnings == []
    assert decoded == selection
    assert encode(decoded) == query
    for control in CONTROLS:  # row by row: the value its text stands for
        text = query.get(control.key)
        assert text == control.text(control.value(vars(selection)))


def test_url_keeps_its_key_order():
    cg_compare, plain = (encode(s) for s in SELECTIONS)
    assert list(cg_compare) == [*URL_ORDER, "rtol", "vs"]
    assert list(plain) == [*URL_ORDER, "depth"]  # a depth other than the estimator's own


@pytest.mark.parametrize("selection", SELECTIONS)
def test_session_state_holds_what_the_url_holds(selection):
    catalog = synthetic_catalog()
    state: dict = {}
    load_state(state, selection, catalog)
    assert state["sb_window"] == (selection.t_start, selection.t_start + selection.n_steps)
    before = dict(state)
    prepare_state(state, catalog)  # a valid state is left as it is
    assert state == before
    assert read_state(state, catalog) == selection


def test_stale_session_state_is_repaired():
    catalog = synthetic_catalog()
    state: dict = {}
    load_state(state, default_selection(catalog), catalog)
    state |= {
        "sb_est": "newton",
        "sb_damping": 1e300,
        "sb_classes": ["CE-RP", "ghost"],
        "sb_device": "tpu",
        "sb_window": (5, 2),
        "sb_ckpts": ["unet_s10", "vit_s10"],
    }
    prepare_state(state, catalog)
    selection = read_state(state, catalog)
    assert selection.estimator == "ekfac-krylov" and selection.device == "auto"
    assert selection.damping == DEFAULT_DAMPING
    assert selection.classes == ("CE-RP",)
    assert (selection.t_start, selection.n_steps) == (0, 16)
    assert selection.checkpoints == ("unet_s10",)  # a seed of another group is dropped


def test_a_window_with_both_ends_together_keeps_its_start():
    """Pressing ArrowLeft on the end handle of 3–4 reset the window to 0–16 and the user's
    start was lost (a walk-through): it keeps the start with the fewest steps allowed, 2."""
    catalog = synthetic_catalog(snapshots=17)  # 16 transitions
    for together, kept in (((3, 3), (3, 5)), ((16, 16), (14, 16)), ((0, 0), (0, 2))):
        state: dict = {}
        load_state(state, default_selection(catalog), catalog)
        state["sb_window"] = together
        prepare_state(state, catalog)
        assert state["sb_window"] == kept
        selection = read_state(state, catalog)
        assert (selection.t_start, selection.n_steps) == (kept[0], 2)
        assert problems(selection, catalog) == []


def test_a_one_step_window_is_refused_before_computing():
    """One step was computed, and then the verdict and the four scores vanished without a
    word (every score compares times): the checks refuse it, in the sidebar and in a link."""
    catalog = synthetic_catalog()
    entry = catalog.dataset("ce_demo")
    assert "a window of 1 time step has no time structure" in window_problem(entry, 3, 4, 1)
    assert window_problem(entry, 3, 4, 2) is None
    selection, warnings = decode_query({"window": "4:1"}, catalog)
    assert len(warnings) == 1 and "choose at least 2 steps" in warnings[0]
    assert selection.n_steps >= 2
    # a dataset of one transition keeps its only window (a review: it became unusable)
    single = synthetic_catalog(snapshots=2)
    assert window_problem(single.dataset("ce_demo"), 3, 0, 1) is None
    assert problems(default_selection(single), single) == []


def test_empty_session_state_gets_every_default():
    catalog = synthetic_catalog()
    state: dict = {}
    prepare_state(state, catalog)
    selection = read_state(state, catalog)
    assert selection.dataset == "ce_demo" and selection.compare == ()
    assert "sb_rtol" not in state  # cg is not chosen: its tolerance is not asked for
    state["sb_est"] = "cg"
    prepare_state(state, catalog)
    assert read_state(state, catalog).rtol == 1.5e-2  # the paper's, for the UNet group


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("rtol", "5", "the cg tolerance must lie in [1e-08, 0.99]"),
        ("rtol", "0x1", "not a number"),
        ("damping", "-1", "λ must lie in [1e-12, 1e+06]"),
        ("vs", "ghost", "not in the workspace"),
        ("resp", "", "no response observable selected"),
        ("window", "0:300", "needs snapshots 0..300"),
        ("depth", "17", "the Krylov depth must be a whole number from 1 to 16"),
        ("depth", "2.5", "whole number"),
        ("depth", "٣", "whole number"),  # str.isdigit() takes it; int() would too
    ],
)
def test_more_bad_values_are_explained_and_replaced(key, value, why):
    catalog = synthetic_catalog()
    selection, warnings = decode_query({key: value, "est": "cg"}, catalog)
    assert len(warnings) == 1 and why in warnings[0], warnings
    expected, _ = decode_query({"est": "cg"}, catalog)
    assert selection == expected


def test_the_depth_follows_the_estimator():
    """The depth widget belongs to the estimator it was set for: ekfac-krylov's depth 2 is
    not carried to krylov (whose default is 4), coming back restores ekfac-krylov's default,
    an estimator without a Krylov basis reads no depth, and a stale value is repaired."""
    catalog = synthetic_catalog()
    state: dict = {}
    load_state(state, replace(default_selection(catalog), depth=2), catalog)
    assert state["sb_depth"] == 2 and read_state(state, catalog).depth == 2
    state["sb_est"] = "krylov"
    prepare_state(state, catalog)
    assert state["sb_depth"] == 4 and read_state(state, catalog).resolved_depth == 4
    state["sb_depth"] = 6
    prepare_state(state, catalog)
    assert read_state(state, catalog).depth == 6  # a choice for krylov stays
    state["sb_est"] = "subspace"
    prepare_state(state, catalog)
    assert read_state(state, catalog).depth is None
    state["sb_est"] = "ekfac-krylov"
    prepare_state(state, catalog)
    assert read_state(state, catalog).resolved_depth == 1
    for stale in (0, 17, True, "3", 2.5):
        state["sb_depth"] = stale
        prepare_state(state, catalog)
        assert state["sb_depth"] == 1, stale


def test_euclidean_reads_the_default_damping_whatever_the_widget_or_link_held():
    """euclidean does not use λ; a changed λ recomputed its one result under a new key. Its
    widget is greyed out at the default, the λ chosen before comes back with the next
    estimator, a link's other λ is named and replaced, and a Selection holds the default."""
    from coherence.dashboard.control_kinds import Scope
    from coherence.dashboard.controls import Damping

    catalog = synthetic_catalog()
    state: dict = {}
    load_state(state, replace(default_selection(catalog), damping=1e-2), catalog)
    assert read_state(state, catalog).damping == 1e-2
    state["sb_est"] = "euclidean"
    prepare_state(state, catalog)
    assert state["sb_damping"] == DEFAULT_DAMPING
    assert read_state(state, catalog).damping == DEFAULT_DAMPING
    state["sb_est"] = "subspace"
    prepare_state(state, catalog)
    assert read_state(state, catalog).damping == 1e-2  # the λ chosen before is back
    load_state(state, replace(default_selection(catalog), estimator="euclidean"), catalog)
    state["sb_est"] = "cg"
    prepare_state(state, catalog)
    assert read_state(state, catalog).damping == DEFAULT_DAMPING  # a new selection: no λ kept
    euclidean = replace(default_selection(catalog), estimator="euclidean", damping=1e-2)
    assert euclidean.damping == DEFAULT_DAMPING  # one selection per result
    assert decode_query(encode(euclidean), catalog) == (euclidean, [])  # round trip
    linked, warnings = decode_query({"est": "euclidean", "damping": "0.01"}, catalog)
    assert linked.damping == DEFAULT_DAMPING
    assert warnings == [
        "URL parameter damping='0.01': euclidean (M = I) does not use λ; using 0.0001 instead"
    ]
    assert decode_query({"est": "ekfac", "damping": "0.01"}, catalog)[0].damping == 1e-2
    (damping,) = [c for c in CONTROLS if isinstance(c, Damping)]
    scope = Scope(catalog=catalog, values={"estimator": "euclidean"})
    assert damping.widget_args(scope)["disabled"] is True
    assert "disabled" not in damping.widget_args(replace(scope, values={"estimator": "cg"}))


def test_a_cached_euclidean_result_at_another_damping_is_not_offered():
    """The CLI may cache euclidean at λ = 1e-2; the page's euclidean is at the default, so
    that entry would open another analysis: from_request leaves it out."""
    from coherence.dashboard.selection import from_request

    catalog = synthetic_catalog()
    base = replace(default_selection(catalog), estimator="euclidean")
    request = base.to_request(catalog.root).to_dict()
    assert from_request(catalog, request) == base
    assert from_request(catalog, request | {"damping": 1e-2}) is None
    # nor any other request the page does not make: its click showed another analysis as
    # "files changed" (a cg with --max-iter, a cold start, another energy threshold)
    cg = replace(base, estimator="cg", rtol=1.5e-2)
    stored = cg.to_request(catalog.root).to_dict()
    assert from_request(catalog, stored) == cg
    for other in (
        {"max_iter": 2000},
        {"cg_start": "cold", "depth": None},
        {"energy_threshold": 0.5},
        {"classes": [base.classes[0]]},  # the CLI's one class: the page shows "cannot be
        # computed" for it, the result computed
    ):
        assert from_request(catalog, stored | other) is None, other


def test_a_bad_link_depth_names_the_default_it_falls_back_to():
    """Never raises (a 5000-digit depth raised int()'s ValueError), and says what is used."""
    catalog = synthetic_catalog()
    selection, warnings = decode_query({"est": "krylov", "depth": "9" * 5000}, catalog)
    assert len(warnings) == 1 and "whole number from 1 to 16" in warnings[0]
    assert selection.resolved_depth == 4
    euclidean, warnings = decode_query({"est": "euclidean", "depth": "abc"}, catalog)
    assert warnings == [] and euclidean.depth is None  # ignored, as the request ignores it
    selection, warnings = decode_query({"est": "krylov", "depth": "0"}, catalog)
    assert warnings == [
        "URL parameter depth='0': the Krylov depth must be a whole number from 1 to 16; "
        "using the estimator's default depth (4) instead"
    ]
    assert selection.estimator == "krylov" and selection.resolved_depth == 4


def test_the_batch_size_rule_is_the_requests():
    catalog = synthetic_catalog(snapshots=300)
    _, warnings = decode_query({"window": "0:200"}, catalog)
    assert len(warnings) == 1 and f"2 ≤ N ≤ {MAX_EXAMPLES}" in warnings[0]
    assert "a batch of 3 classes × 200 steps has N = 600" in warnings[0]  # request's words
    entry = catalog.dataset("ce_demo")
    assert window_problem(entry, 3, 0, 170) is None  # N = 510
    assert "N = 513" in window_problem(entry, 3, 0, 171)
    assert "use a start ≤" in window_problem(entry, 1, 290, 20)  # batch.check_window's advice
    # ten digits were told "expected START:STEPS (two whole numbers)": they are two
    _, warnings = decode_query({"window": "0:1000000000"}, catalog)
    assert len(warnings) == 1 and "two whole numbers" not in warnings[0]
    assert "have 300 (0..299); use at most 299 steps" in warnings[0], warnings


def test_selection_reports_the_requests_verdict():
    base = default_selection(synthetic_catalog())
    with pytest.raises(RequestError, match=r"damping=-1.*must be a finite number > 0"):
        replace(base, damping=-1.0)
    with pytest.raises(RequestError, match=r"rtol=1\.5.*must lie in \(0, 1\)"):
        replace(base, estimator="cg", rtol=1.5)
    with pytest.raises(RequestError, match="device='tpu'"):
        replace(base, device="tpu")
    cuda = replace(base, device="cuda")  # valid without a GPU: the page explains it
    assert "no CUDA GPU is visible" in problems(cuda, synthetic_catalog())[0]


def test_the_first_chart_pause_reads_its_override(monkeypatch):
    from coherence.dashboard import first_paint

    for raw, seconds in (("0", 0.0), ("0.25", 0.25), ("60", 5.0), ("-1", 0.0)):
        monkeypatch.setenv(first_paint.FIRST_CHART_PAUSE_ENV, raw)
        assert first_paint.pause_seconds() == seconds
    for bad in ("x", "nan", "inf"):
        monkeypatch.setenv(first_paint.FIRST_CHART_PAUSE_ENV, bad)
        assert first_paint.pause_seconds() == first_paint.FIRST_CHART_PAUSE_S
    monkeypatch.delenv(first_paint.FIRST_CHART_PAUSE_ENV)
    assert first_paint.pause_seconds() == first_paint.FIRST_CHART_PAUSE_S == 1.4


def test_the_window_caption_names_input_and_target_times():
    """The maps' axes are the input times; the caption says where they end and where the last
    target lies (a researcher saw "t = 0 … 0.8" beside axes that stop at 0.75)."""
    from coherence.dashboard.control_kinds import Scope
    from coherence.dashboard.control_rows import Window

    catalog = synthetic_catalog(snapshots=17)  # times 0, 1/16, …, 1
    scope = Scope(catalog, {"dataset": "ce_demo", "classes": ("CE-RP", "CE-CRP", "CE-RPUI")})
    window = next(c for c in CONTROLS if isinstance(c, Window))
    state = {window.state: (0, 16)}
    assert window.caption(state, scope) == (
        "16 steps: inputs at t = 0 … 0.938, targets up to 1; N = 3 × 16 = 48 examples per batch"
    )
    state = {window.state: (4, 8)}
    assert window.caption(state, scope).startswith("4 steps: inputs at t = 0.25 … 0.438, ")
    state = {window.state: (5, 5)}  # both ends together
    assert window.caption(state, scope) == "0 steps; N = 3 × 0 = 0 examples per batch"
