"""The figure cache shared by sessions: one build per (results, options), never across
results or options, and no caching for a group without a content key."""

from __future__ import annotations

from types import SimpleNamespace

import plotly.graph_objects as go

from coherence.dashboard.compute import GroupState
from coherence.dashboard.panels.common import shared_figure


def _ctx(*keys: str | None, n_examples: int = 48, compare: bool | None = None) -> SimpleNamespace:
    groups = tuple(
        GroupState(label=f"group {i}", checkpoints=("c",), key=k, result=object())
        for i, k in enumerate(keys)
    )
    compare = len(groups) > 1 if compare is None else compare
    return SimpleNamespace(ready=groups, n_examples=n_examples, compare=compare)


def _counting_build(calls: list[str], name: str):
    def build() -> go.Figure:
        calls.append(name)
        return go.Figure(layout={"title": {"text": name}})

    return build


def test_built_once_per_results_and_options():
    calls: list[str] = []
    key = ("test_panel", "intra", "mean")
    first = shared_figure(_ctx("k-results-1"), key, _counting_build(calls, "a"))
    again = shared_figure(_ctx("k-results-1"), key, _counting_build(calls, "b"))
    assert again is first and calls == ["a"]

    other_result = shared_figure(_ctx("k-results-2"), key, _counting_build(calls, "c"))
    other_option = shared_figure(
        _ctx("k-results-1"), ("test_panel", "x ← y", "mean"), _counting_build(calls, "d")
    )
    other_size = shared_figure(_ctx("k-results-1", n_examples=24), key, _counting_build(calls, "e"))
    compare = shared_figure(_ctx("k-results-1", "k-results-2"), key, _counting_build(calls, "f"))
    # compare mode with one group computed draws it under its name: not the single view's
    lone = shared_figure(_ctx("k-results-1", compare=True), key, _counting_build(calls, "g"))
    assert calls == ["a", "c", "d", "e", "f", "g"]
    drawn = (first, other_result, other_option, other_size, compare, lone)
    assert {f.layout.title.text for f in drawn} == {"a", "c", "d", "e", "f", "g"}


def test_a_group_without_a_key_is_never_cached():
    calls: list[str] = []
    key = ("test_panel_unkeyed",)
    shared_figure(_ctx(None), key, _counting_build(calls, "a"))
    shared_figure(_ctx(None), key, _counting_build(calls, "b"))
    assert calls == ["a", "b"]
