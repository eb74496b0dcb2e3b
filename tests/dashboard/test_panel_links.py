"""The panels' choices in the link, on a page of a few stand-in widgets (no workspace): what
a link restores and refuses, what the address bar keeps of the open panel only, and the
choices a tab gets back when it is opened again."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest


def _page():
    import streamlit as st

    from coherence.dashboard import panel_links

    panel = st.session_state.get("plan_panel")
    if "plan_started" not in st.session_state:
        st.session_state["plan_started"] = True
        for warning in panel_links.restore():
            st.warning(warning)
    if st.session_state.get("plan_forget"):
        panel_links.forget("zscale_transfer")
    if st.session_state.get("plan_range") is not None:
        st.session_state["field_h"] = st.session_state["plan_range"]
        panel_links.keep_in_range("field_h", 0, 10, 5)
        st.text(f"field_h {st.session_state['field_h']!r}")
    if panel:
        panel_links.recall(panel)
    if panel == "Two-time influence":
        st.selectbox("pair", ["a", "b"], key="two_time_pair")
        st.selectbox("cell", ["none", "2,3"], key="two_time_cell")
        st.selectbox("class", ["CE-RP", "CE-CRP"], key="two_time_cell_class")
    if panel == "Class transfer":
        st.selectbox("scale", ["auto", "diverging"], key="zscale_transfer")
    if panel == "Time lag":
        st.selectbox("lag", ["whole", "tails"], key="lag_y")
    if panel == "Training dynamics":
        st.selectbox("λ", ["none", "0.01"], key="dyn_vs_damping")
    st.text(f"kept {panel_links.kept_choice('zscale_transfer')!r}")
    for warning in panel_links.settle(panel):
        st.warning(warning)


def page(params: dict[str, str] | None = None, **plan) -> AppTest:
    at = AppTest.from_function(_page, default_timeout=30)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    for key, value in plan.items():
        at.session_state[f"plan_{key}"] = value
    return at.run()


def warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def test_a_link_restores_whole_numbers_and_spellings_and_refuses_the_rest():
    long = "x" * 201
    at = page({"field_h": "12", "ov_traj": "-1", "cons_response": "energy", "ov_class": long})
    assert not at.exception
    assert at.session_state["field_h"] == 12
    assert at.session_state["cons_response"] == "Energy"  # the tab's label
    assert "ov_traj" not in at.session_state and "ov_class" not in at.session_state
    assert warnings(at) == [
        "URL parameter ov_class='" + "x" * 57 + "…': too long; using the default",
        "URL parameter ov_traj='-1': not a whole number; using the panel's default instead",
    ]
    assert page({"ov_class": "x" * 200}).session_state["ov_class"] == "x" * 200


def test_a_value_the_open_panel_does_not_offer_is_named_with_the_one_used():
    at = page(
        {"two_time_pair": "zzz", "zscale_transfer": "diverging", "two_time_cell_class": "CE-CRP"},
        panel="Two-time influence",
    )
    assert not at.exception
    # another panel's choice is no warning here, and leaves the address bar
    assert warnings(at) == [
        "URL parameter two_time_pair='zzz': not offered for this selection; using 'a' instead"
    ]
    # no cell picked: the cell and its class stay out of the link
    assert dict(at.query_params) == {"two_time_pair": "a"}
    at.selectbox(key="two_time_cell").set_value("2,3").run()
    assert at.query_params["two_time_cell"] == "2,3"
    assert at.query_params["two_time_cell_class"] == "CE-CRP"


@pytest.mark.parametrize(
    ("panel", "key", "unset", "other"),
    [
        ("Time lag", "lag_y", "whole", "tails"),
        ("Training dynamics", "dyn_vs_damping", "none", "0.01"),
    ],
)
def test_a_choice_at_its_nothing_picked_value_stays_out_of_the_link(panel, key, unset, other):
    at = page(panel=panel)
    assert at.selectbox(key=key).value == unset and key not in at.query_params
    at.selectbox(key=key).set_value(other).run()
    assert at.query_params[key] == other


def test_a_tab_opened_again_gets_its_choices_back_and_a_new_choice_is_kept():
    at = page(panel="Class transfer")
    at.selectbox(key="zscale_transfer").set_value("diverging").run()
    assert at.selectbox(key="zscale_transfer").value == "diverging"  # not the kept 'auto'
    assert "kept 'diverging'" in texts(at)  # the widget's own value, this very run
    at.session_state["plan_panel"] = "Time lag"
    at.run()
    assert "kept 'diverging'" in texts(at)  # a closed tab's choice, for the report
    assert "zscale_transfer" not in at.query_params
    at.session_state["plan_panel"] = "Class transfer"
    at.run()
    assert at.selectbox(key="zscale_transfer").value == "diverging"
    assert at.query_params["zscale_transfer"] == "diverging"
    at.session_state["plan_forget"] = True  # a choice the view no longer offers
    at.session_state["plan_panel"] = "Time lag"
    at.run()
    at.session_state["plan_forget"] = False
    at.session_state["plan_panel"] = "Class transfer"
    at.run()
    assert at.selectbox(key="zscale_transfer").value == "auto"


@pytest.mark.parametrize(("value", "kept"), [(10, 10), (0, 0), (11, 5), (-1, 5), ("3", 5)])
def test_a_slider_value_outside_its_range_goes_back_to_the_default(value, kept):
    assert f"field_h {kept!r}" in texts(page(range=value))
