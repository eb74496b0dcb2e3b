"""The report's sweep sections (``coherence.report_sweeps``): what a mutation campaign found no
test to check. The page's own words for a left-out sweep (the tests compared the page with
``LeftOut.page_text``, which cannot fail), and an overlay λ equal to the selection's own, which
the Report button can hand over (the session keeps the overlay when the sidebar's λ moves
onto it) or for an estimator whose Ĥ ignores λ, neither of which may draw a second set of
lines; and in compare mode, which group's maps are left out and whose pair the agreement
chart draws."""

from __future__ import annotations

import html
import re
from dataclasses import replace

from coherence.cache.jobs import JobRunner
from coherence.dashboard import sweep_views, sweeps
from coherence.dashboard.compute import group_labels
from coherence.dashboard.selection import default_selection
from coherence.dashboard.workspace_scan import scan_workspace
from coherence.report import build_report
from tests.fixtures import COMPARE, fill_sweeps

from .test_sweep_panels import _figure_of, trained_on  # noqa: F401  (a fixture)


def test_the_page_names_the_left_out_sweep_and_why(workspace):
    """Under the headline, each left-out sweep is named with its reason, in these words."""
    catalog = scan_workspace(workspace)
    built = build_report(workspace, catalog, default_selection(catalog), distance=None)
    page = built.page.decode()
    said = "Training dynamics: these checkpoints keep no snapshot of an earlier epoch."
    assert html.escape(said) in page
    assert page.index(html.escape(said)) > page.index("Not in this report:")


def test_an_overlay_at_the_selections_own_lambda_draws_no_second_lines(trained_on):  # noqa: F811
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
    trained_on,  # noqa: F811
):
    """Compare mode: the UNets have three epochs analysed, the ViT (no snapshots) one; the
    ViT's maps across epochs are said left out (a strip of one epoch is no comparison), and
    the agreement chart's title names the group whose pair it draws."""
    catalog = scan_workspace(trained_on)
    both = replace(default_selection(catalog), compare=COMPARE)
    runner = JobRunner(trained_on)
    epochs, _ = sweeps.dynamics_points(trained_on, both, runner)
    settings, _ = sweeps.sensitivity_points(trained_on, both, catalog, runner)
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


def test_an_estimator_that_ignores_lambda_gets_no_overlay(trained_on):  # noqa: F811
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
