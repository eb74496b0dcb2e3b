"""End to end in a real browser: `streamlit run app.py` driven by Debian's chromium.

Load the default analysis (cached: no click), screenshot every panel, download a file,
change the selection and compute it in a background worker, follow the shared URL in a new
session, and compare UNet and ViT side by side. Screenshots land in
test-artifacts/dashboard/ (look at them after a change to the dashboard).
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from coherence.dashboard.panels import PANELS
from tests.browser import CHROMIUM, CHROMIUM_ARGS, streamlit_served
from tests.fixtures import (
    ARTIFACTS,
    COMPARE,
    copy_workspace,
    fill_sweeps,
    train_on_with_snapshots,
)

SHOTS = ARTIFACTS / "dashboard"
HEATMAP = ".js-plotly-plot .heatmaplayer"
SLOW = 120_000  # ms: the first script run of a server imports torch; a worker computes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # ≈ 70 s: a server, a browser, and one background analysis
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install "
        "chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def own_workspace(workspace, tmp_path_factory):
    """A copy of the session's workspace, cache included: these tests compute and cache new
    selections and checks, which must not turn up as "already computed" in later tests."""
    return copy_workspace(workspace, tmp_path_factory.mktemp("browser") / "workspace")


@pytest.fixture(scope="module")
def server(own_workspace):
    """`streamlit run app.py` on a free loopback port, as `coherence serve` runs it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_served(own_workspace, ARTIFACTS / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def new_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1500, "height": 2200}, accept_downloads=True)
    page.set_default_timeout(SLOW)
    page.goto(url)
    page.wait_for_selector(HEATMAP)
    return page


def settle(page, seconds: float = 0.5) -> None:
    """Wait until Streamlit's script run is over, then a moment.

    Over means no running indicator and no element left stale from the previous run:
    during a rerun Streamlit keeps the old elements (data-stale) beside the new ones, and
    the indicator appears only after a short delay, so either check alone can pass early.
    """
    idle = (
        "() => !document.querySelector('[data-testid=stStatusWidget]')"
        " && !document.querySelector('[data-stale=true]')"
    )
    page.wait_for_function(idle, timeout=SLOW)
    time.sleep(seconds)
    page.wait_for_function(idle, timeout=SLOW)


def settled_elements(page, selector: str, expected: int, seconds: float = 15.0) -> list:
    """The elements matching selector once their count is expected, or after seconds (the
    caller asserts the count): a rerun may still be replacing the previous run's elements."""
    deadline = time.monotonic() + seconds
    while (elements := page.locator(selector).all()) and len(elements) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return elements


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_tab(page, label: str) -> None:
    page.locator("[data-testid=stTab]", has_text=label).first.click()
    page.wait_for_function(
        "label => [...document.querySelectorAll('[data-testid=stTab]')].some("
        "t => t.getAttribute('aria-selected') === 'true' && t.innerText.trim() === label)",
        arg=label,
    )
    settle(page)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = page.locator("[data-testid=stSelectbox]", has_text=label).first
    box.get_by_role("button", name="Open").click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()
    page.wait_for_function(
        "([label, option]) => [...document.querySelectorAll('[data-testid=stSelectbox]')]"
        ".some(b => b.innerText.includes(label) && b.querySelector('input').value"
        ".includes(option))",
        arg=[label, option],
    )
    settle(page)


def test_load_panels_download_compute_share_compare(server, browser):
    page = new_page(browser, server)  # the cached default: a heatmap with no click
    errors: list[str] = []  # plotly.js errors stop a figure half drawn, with no hover
    page.on("pageerror", lambda error: errors.append(str(error)))
    assert "data=tiny_ce" in page.url and "est=ekfac-krylov" in page.url
    assert page.get_by_text("cached result").count() >= 1
    assert page.get_by_text("Deploy").count() == 0  # toolbarMode viewer: no developer menu
    assert page.title() == "Coherence Explorer"
    settle(page)

    for i, (label, _) in enumerate(PANELS, start=1):
        open_tab(page, label)
        if label == "Validation":
            page.get_by_role("button", name="Run check").click()
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
            settle(page, 1.0)
        if label in ("Training dynamics", "Sensitivity"):  # the cached epoch / λ drawn
            page.wait_for_selector(".js-plotly-plot")
        assert page.locator("[data-testid=stException]").count() == 0, label
        # every chart drawn to the end: its hover and zoom layer exists
        assert page.evaluate(
            "() => [...document.querySelectorAll('.js-plotly-plot')]"
            ".every(g => g.querySelector('.draglayer .nsewdrag'))"
        ), label
        name = re.sub(r"\W+", "_", label).lower()
        shot(page, f"{i:02d}_{name}")
    assert "panel=Scores" in page.url  # the open tab is part of the link
    assert not errors, errors

    open_tab(page, "Two-time influence")
    with page.expect_download() as download:
        page.get_by_role("button", name="Data (CSV)").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("# dataset: tiny_ce")  # the parameter header
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert re.fullmatch(
        r"tiny_ce_w0-5_ekfac-krylov_lam1e-4_[0-9a-f]{6}_UNet_two_time\.csv",  # as its figure
        download.value.suggested_filename,
    )
    assert len(rows) == 25 and set(rows[0]) == {"t_p", "t_r", "step_p", "step_r", "value"}
    assert all(float(row["value"]) == float(row["value"]) for row in rows)  # no NaN

    page.get_by_text("Analysis files and provenance").click()  # lazy: drawn when opened
    whole = page.get_by_role("button", name="Whole analysis")
    whole.wait_for()
    with page.expect_download() as download:
        whole.click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = sorted(archive.namelist())
        stem = download.value.suggested_filename.removesuffix(".zip")
        assert re.fullmatch(r"tiny_ce_w0-5_ekfac-krylov_lam1e-4_[0-9a-f]{6}_analysis_UNet", stem)
        assert names == [f"{stem}.json", f"{stem}.npz"]
        with np.load(io.BytesIO(archive.read(names[1])), allow_pickle=False) as arrays:
            assert arrays["H_std"].shape == (2, 1, 5, 3, 5, 3)  # [S, B, T, C, T, C]
        assert json.loads(archive.read(names[0]))["request"]["estimator"] == "ekfac-krylov"
    shot(page, "10b_analysis_files")

    choose(page, "Estimator", "euclidean")  # a new selection: not in the cache
    page.wait_for_url(re.compile(r"est=euclidean"))  # the rerun writes the new selection
    compute = page.get_by_role("button", name="Compute")
    compute.wait_for()
    shot(page, "11_new_selection_not_computed")
    compute.click()
    try:
        page.wait_for_selector("[data-testid=stProgress]", timeout=15_000)
        shot(page, "12_computing")
    except Exception:  # the job may finish before the first poll: fine
        pass
    page.get_by_text("cached result").first.wait_for()
    page.wait_for_selector(HEATMAP)
    settle(page, 1.0)
    shot(page, "13_computed")

    shared = page.url  # follow the link in a new session: same view, from the cache
    other = new_page(browser, shared)
    settle(other, 1.0)
    assert other.get_by_text("cached result").count() >= 1
    box = other.locator("[data-testid=stSelectbox]", has_text="Estimator").first
    assert "euclidean" in box.locator("input").input_value()
    assert other.get_by_role("button", name="Compute").count() == 0
    shot(other, "14_shared_link")
    other.close()

    compare = new_page(browser, f"{server}/?vs={','.join(COMPARE)}")
    settle(compare, 1.0)
    assert compare.locator(f"{HEATMAP}").count() == 2  # UNet | ViT on one colour axis
    shot(compare, "15_compare_two_time")
    open_tab(compare, "Time lag")
    shot(compare, "16_compare_time_lag")
    compare.close()
    page.close()


HEATMAP_HREF = (
    "() => { const i = document.querySelector('.js-plotly-plot .heatmaplayer image');"
    " return i ? i.getAttribute('href') : null; }"
)


def test_subset_stale_and_link_choices(server, browser):
    """Issue 16: a subset of the cached view redraws with no job; an uncached selection keeps
    the last figures under a stale banner; a link carries the panel's choices. (The cached
    analyses switch is covered by the AppTest in test_ux.py.)"""
    page = new_page(browser, server)
    settle(page, 1.0)
    assert page.get_by_text("seed 1", exact=True).count() >= 1  # short chips, not cut names
    assert page.get_by_text("2 datasets").count() == 1
    before = page.evaluate(HEATMAP_HREF)
    seeds = page.locator("[data-testid=stMultiSelect]", has_text="Seeds").first.locator("input")
    seeds.click()
    started = time.monotonic()
    seeds.press("Backspace")  # drop the last seed: a subset of the cached result
    page.wait_for_function(f"old => ({HEATMAP_HREF})() !== old", arg=before)
    redrawn = time.monotonic() - started
    settle(page)
    assert page.get_by_text("cached result").count() >= 1
    assert page.get_by_role("button", name="Compute").count() == 0
    assert re.search(r"ckpt=unet_tiny_s1(&|$)", page.url)
    assert redrawn < 5.0, f"the subset took {redrawn:.1f} s to redraw"
    shot(page, "17_subset_from_cache")

    damping = page.locator("[data-testid=stNumberInput]", has_text="Damping").locator("input")
    damping.fill("1.0e-03")
    damping.press("Enter")
    page.get_by_text("Stale figures").wait_for()
    settle(page)
    assert page.locator(HEATMAP).count() == 1  # the last figures stay
    assert page.get_by_role("button", name="Compute").count() == 1
    # the report button says what it exports (its tooltip alone was missed)
    assert page.get_by_role("button", name="Report (HTML) · stale view").count() == 1
    shot(page, "18_stale_figures")
    assert "damping=0.001" in page.url  # the sidebar's selection …
    with page.expect_download() as download:
        page.get_by_role("button", name="Report (HTML)").click()
    report = Path(download.value.path()).read_text()
    # … but the report holds the figures shown, and its link names their selection
    assert re.search(r"damping=0?\.?0*1e-0?4|damping=0\.0001", report), "the shown λ"
    assert "damping=0.001" not in report
    page.close()

    pair = "CE-CRP ← CE-RP"
    linked = new_page(browser, f"{server}/?two_time_pair={pair}&two_time_seed=unet_tiny_s2")
    settle(linked, 1.0)
    title = linked.locator(".js-plotly-plot .gtitle").first.text_content()
    assert "perturbation CE-RP" in title
    box = linked.locator("[data-testid=stSelectbox]", has_text="Class pair").first
    assert "CE-RP" in box.locator("input").input_value()
    shot(linked, "19_link_with_panel_choices")

    linked.close()


def axis_fit(page, index: int = 0) -> dict:
    """The drawn x/y ranges of the index-th chart next to its heatmap cells' edges."""
    return page.evaluate(
        """i => {
            const g = document.querySelectorAll('.js-plotly-plot')[i];
            const L = g._fullLayout, out = {};
            for (const name of Object.keys(L).filter(k => /^[xy]axis\\d*$/.test(k))) {
                out[name] = L[name].range.slice();
            }
            out.heatmaps = g._fullData.filter(t => t.type === 'heatmap').map(t => {
                // categories (class names) sit at 0..n-1; numbers at their values
                const e = v => typeof v[0] === 'string' ? [-0.5, v.length - 0.5] :
                    [v[0] - (v[1] - v[0]) / 2, v[v.length - 1] +
                     (v[v.length - 1] - v[v.length - 2]) / 2];
                return {x: e(t.x), y: e(t.y), xaxis: t.xaxis, yaxis: t.yaxis};
            });
            return out;
        }""",
        index,
    )


def titles_over_plots(page, index: int = 0) -> list:
    """Axis titles of the index-th chart drawn over a plot area (its own or a neighbour's)."""
    return page.evaluate(
        """i => {
            const g = document.querySelectorAll('.js-plotly-plot')[i];
            const areas = [...g.querySelectorAll('.draglayer .nsewdrag')]
                .map(e => e.getBoundingClientRect());
            const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1
                && a.top < b.bottom - 1 && b.top < a.bottom - 1;
            const out = [];
            for (const t of g.querySelectorAll('[class^=g-x] text, [class^=g-y] text')) {
                const r = t.getBoundingClientRect();
                areas.forEach((a, k) => {
                    if (r.width && hit(r, a)) out.push([t.textContent, k]);
                });
            }
            return out;
        }""",
        index,
    )


def title_gaps(page, index: int = 0) -> list:
    """Pixels between each panel title (an annotation) of the index-th chart and the top of
    the plot area under it: a square map in a half-width column keeps its top there."""
    return page.evaluate(
        """i => {
            const g = document.querySelectorAll('.js-plotly-plot')[i];
            const areas = [...g.querySelectorAll('.draglayer .nsewdrag')]
                .map(e => e.getBoundingClientRect());
            const out = [];
            for (const t of g.querySelectorAll('.annotation')) {
                const r = t.getBoundingClientRect();
                const below = areas.filter(a => a.left < r.right && r.left < a.right
                    && a.top >= r.bottom - 1);
                if (below.length) out.push(Math.min(...below.map(a => a.top - r.bottom)));
            }
            return out;
        }""",
        index,
    )


def bar_and_maps(page, index: int = 0) -> tuple[dict, list]:
    """The colour bar's fill and the plot areas of the index-th chart (page pixels): square
    maps in half-width columns are shorter than the plot area, and the bar is to end with
    them, not overhang them."""
    return page.evaluate(
        """i => {
            const g = document.querySelectorAll('.js-plotly-plot')[i];
            const box = e => { const r = e.getBoundingClientRect();
                               return {top: r.top, bottom: r.bottom}; };
            return [box(g.querySelector('.colorbar .cbfills')),
                    [...g.querySelectorAll('.draglayer .nsewdrag')].map(box)];
        }""",
        index,
    )


def assert_fits(fit: dict) -> None:
    assert fit["heatmaps"], fit
    for h in fit["heatmaps"]:
        x = fit["xaxis" + h["xaxis"][1:]]
        y = fit["yaxis" + h["yaxis"][1:]]
        assert x == pytest.approx(h["x"], abs=1e-6), (x, h)  # no empty axis range
        assert sorted(y) == pytest.approx(sorted(h["y"]), abs=1e-6), (y, h)


def test_fit_tour_drill_down_report_and_png(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(SLOW)
    page.goto(server)
    page.wait_for_selector(HEATMAP)
    settle(page)
    assert_fits(axis_fit(page))  # the wide tab: the axes span exactly the data
    assert page.get_by_text("What am I looking at?").count() == 1
    box = page.locator(HEATMAP).first.bounding_box()
    assert box["y"] + box["height"] <= 1000, box  # wholly above the fold with the tour shown
    tour_box = page.get_by_text("What am I looking at?").bounding_box()
    assert tour_box["x"] > box["x"] + box["width"] / 2, (tour_box, box)  # beside the map
    shot(page, "20_tour_verdict_1600")
    page.set_viewport_size({"width": 1024, "height": 768})  # a first visit on a small laptop
    settle(page, 1.0)
    labels = settled_elements(page, "[data-testid=stMetricLabel]", 4)
    assert len({round(label.bounding_box()["y"]) for label in labels}) == 1  # one row
    box = page.locator(HEATMAP).first.bounding_box()
    assert box["y"] + box["height"] / 4 < 768, box  # the map's top rows in view
    text = page.locator("[data-testid=stMarkdownContainer]", has_text="What am I looking at?")
    assert text.bounding_box()["height"] < 450, text.bounding_box()  # short, in a narrow column
    shot(page, "20a_tour_verdict_1024")
    page.set_viewport_size({"width": 1600, "height": 1000})
    settle(page, 1.0)
    page.get_by_role("button", name="Got it").click()
    page.get_by_text("What am I looking at?").wait_for(state="detached")
    settle(page, 1.0)
    shot(page, "20b_after_tour_1600")
    again = page.context.new_page()  # a later visit from this browser: no tour
    again.goto(server)
    again.wait_for_selector(HEATMAP)
    settle(again)
    assert again.get_by_text("What am I looking at?").count() == 0
    again.close()
    box = page.locator(HEATMAP).first.bounding_box()
    assert box["y"] + box["height"] <= 1000, box  # the headline heatmap: wholly above the fold
    report = page.get_by_role("button", name="Report (HTML)").bounding_box()
    title = page.get_by_role("heading", name="Coherence Explorer").bounding_box()
    assert abs(report["y"] + report["height"] / 2 - (title["y"] + title["height"] / 2)) < 12
    page.set_viewport_size({"width": 1024, "height": 768})  # a small laptop
    settle(page, 1.0)
    labels = settled_elements(page, "[data-testid=stMetricLabel]", 4)
    assert len({round(label.bounding_box()["y"]) for label in labels}) == 1  # one row
    box = page.locator(HEATMAP).first.bounding_box()
    assert box["y"] + box["height"] / 4 < 768, box  # the map's top rows in view
    page.set_viewport_size({"width": 1600, "height": 1000})
    settle(page, 1.0)

    with page.expect_download() as download:  # a PNG at publication resolution
        page.get_by_role("button", name="Figure (PNG)").click()
    png = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename.endswith("_two_time.png")
    from coherence.analysis.exports import png_text

    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    # the map's own layout (square plot + colour bar: 570 × 480 CSS px), 3000 px wide
    assert width == 3000 and abs(height - round(480 * 3000 / 570)) <= 1, (width, height)
    text = png_text(png)
    assert "bright diagonal" in text["Description"] and text["dataset"] == "tiny_ce"
    assert re.fullmatch(r"[0-9a-f]{64}", text["UNet: cache key"])
    with page.expect_download() as download:  # the same figure as SVG, provenance inside
        page.get_by_role("button", name="Figure (SVG)").click()
    svg = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.endswith("_two_time.svg")
    assert svg.lstrip().startswith(("<svg", "<?xml")) and "<metadata" in svg
    assert "tiny_ce" in svg and "bright diagonal" in svg

    with page.expect_download() as download:  # the report, then offline in chromium
        page.get_by_role("button", name="Report (HTML)").click()
    report = tmp_path / download.value.suggested_filename
    download.value.save_as(report)
    assert f"{server}/?" in report.read_text()  # the view it came from, in its provenance
    offline = browser.new_context(offline=True)
    view = offline.new_page()
    failed = []
    view.on("requestfailed", lambda request: failed.append(request.url))
    view.goto(report.as_uri())
    view.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].every(g => g._fullLayout)"
        " && document.querySelectorAll('.js-plotly-plot').length > 0"
    )
    drawn = view.evaluate(
        "() => [...document.querySelectorAll('section.figure')].map(s => "
        "!!s.querySelector('.js-plotly-plot .main-svg, table.scores'))"
    )
    assert drawn and all(drawn), drawn  # every figure drawn, offline (the scores: a table)
    assert not failed, failed
    assert_fits(axis_fit(view))
    view.screenshot(path=str(SHOTS / "21_report_offline.png"), full_page=True)
    offline.close()

    heatmap = page.locator(HEATMAP).first.bounding_box()  # click a cell: drill down
    x, y = heatmap["x"] + heatmap["width"] * 0.7, heatmap["y"] + heatmap["height"] * 0.3
    page.mouse.move(x - 4, y - 4)
    page.mouse.move(x, y, steps=4)  # plotly clicks the point it hovers
    page.mouse.click(x, y)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
    settle(page)
    assert page.get_by_text("input distance d(r, p)").count() == 1
    outline = page.locator(".js-plotly-plot", has=page.locator(".heatmaplayer")).first
    assert outline.locator(".shapelayer path").count() == 1  # the clicked cell, outlined
    shot(page, "22_drill_down")
    context.close()


def test_compare_fits_and_reads_at_1024(server, browser):
    page = browser.new_page(viewport={"width": 1024, "height": 1800}, accept_downloads=True)
    page.set_default_timeout(SLOW)
    page.goto(f"{server}/?vs={','.join(COMPARE)}")
    page.wait_for_selector(HEATMAP)
    settle(page, 1.0)
    page.get_by_role("button", name="Got it").click()  # in compare mode: in the sidebar
    page.get_by_text("What am I looking at?").wait_for(state="detached")
    settle(page)
    # the scores as one table, a row per group: every cell's text wraps inside its column
    cells = settled_elements(page, ".st-key-compare_scores [data-testid=stMarkdownContainer]", 14)
    assert len(cells) == 14, [c.inner_text() for c in cells]  # 4 titles + 2 × (group + 4)
    for cell in cells:
        assert cell.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), cell.inner_text()
    assert any(c.inner_text().startswith("Diagonal dominance") for c in cells)
    fit = axis_fit(page)
    assert len(fit["heatmaps"]) == 2
    assert_fits(fit)
    assert not titles_over_plots(page)  # the right panel's y title stays off the left one
    gaps = title_gaps(page)
    assert len(gaps) == 2 and all(g < 24 for g in gaps), gaps  # "UNet", "ViT" on their maps
    bar, maps = bar_and_maps(page)
    assert len(maps) == 2 and bar["bottom"] <= min(m["bottom"] for m in maps) + 4, (bar, maps)
    shot(page, "23_compare_1024")
    with page.expect_download() as download:  # a group's CSV says whose values it holds
        page.get_by_role("button", name="Data ViT (CSV)").click()
    header = [
        line for line in Path(download.value.path()).read_text().splitlines() if line[:1] == "#"
    ]
    assert "# values of: ViT" in header and any("UNet" in line for line in header), header
    page.get_by_text("Difference map").click()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2")
    settle(page)
    assert_fits(axis_fit(page, 1))
    open_tab(page, "Class transfer")
    assert_fits(axis_fit(page))
    assert not titles_over_plots(page)
    gaps = title_gaps(page)
    assert len(gaps) == 2 and all(g < 24 for g in gaps), gaps
    shot(page, "24_compare_transfer_1024")
    open_tab(page, "Input distance")
    page.wait_for_selector(".js-plotly-plot .scatterlayer")  # smoothed on first visit
    settle(page)
    assert not titles_over_plots(page)
    shot(page, "25_compare_distance_1024")
    # the panels' tab strip wraps instead of scrolling: every tab, the open one included, is
    # on screen (12 tabs need ≈ 1100 px; here the main column has ≈ 660)
    strip = page.locator("[data-testid=stTabs].st-key-panel [role=tablist]").first
    assert strip.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    box = strip.bounding_box()
    for tab in strip.locator("[data-testid=stTab]").all():
        t = tab.bounding_box()
        assert box["x"] <= t["x"] and t["x"] + t["width"] <= box["x"] + box["width"] + 1
    assert strip.locator("[aria-selected=true]").inner_text() == "Input distance"
    page.close()
    # at 1500×1000 the two maps start above the fold (two rows of metric cards had pushed
    # them to its edge), on a first visit too: the tour stands in the sidebar there (its
    # box above the scores spanned the page and pushed the maps' top from 713 to 878 px)
    wide = browser.new_page(viewport={"width": 1500, "height": 1000})
    wide.set_default_timeout(SLOW)
    wide.goto(f"{server}/?vs={','.join(COMPARE)}")
    wide.wait_for_selector(HEATMAP)
    settle(wide, 1.0)
    assert wide.get_by_text("What am I looking at?").count() == 1  # a first visit
    _, maps = bar_and_maps(wide)
    assert len(maps) == 2 and max(m["top"] for m in maps) < 1000 - 200, maps
    wide.close()


def _contrast(page, selector: str) -> float:
    """WCAG contrast of the first ``selector``'s text on white, with the opacity it inherits
    (captions are drawn translucent)."""
    return page.locator(selector).first.evaluate(
        """e => {
          const lin = c => { c /= 255; return c <= 0.04045 ? c / 12.92
                                                            : ((c + 0.055) / 1.055) ** 2.4; };
          let alpha = 1;
          for (let n = e; n; n = n.parentElement) alpha *= +getComputedStyle(n).opacity;
          const [r, g, b, a = 1] = getComputedStyle(e).color.match(/[0-9.]+/g).map(Number);
          const over = [r, g, b].map(c => alpha * a * c + (1 - alpha * a) * 255);
          const L = 0.2126 * lin(over[0]) + 0.7152 * lin(over[1]) + 0.0722 * lin(over[2]);
          return 1.05 / (L + 0.05);
        }"""
    )


def test_reads_at_200_percent_zoom_and_by_keyboard(server, browser):
    """An accessibility walk found: captions at 3.9:1 contrast (their orange notes 2.8:1),
    no visible focus on the compare toggle, and at 200 % zoom a sidebar laid over the page
    whose collapse button the keyboard could not reach. WCAG AA asks 4.5:1 for text."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(SLOW)
    page.goto(server)
    page.wait_for_selector(HEATMAP)
    settle(page, 1.0)
    assert _contrast(page, "[data-testid=stCaptionContainer] p") >= 4.5
    toggle = page.locator("[data-testid=stCheckbox]").first
    toggle.locator("input").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # a keyboard focus (focus-visible), not a script's
    ring = toggle.locator("label").evaluate("e => getComputedStyle(e).outlineStyle")
    assert ring == "solid"
    # the sidebar's collapse button shows while the sidebar holds the keyboard's focus (it
    # showed on hover only: Tab never reached it)
    collapse = page.locator("[data-testid=stSidebarCollapseButton]")
    assert collapse.evaluate("e => getComputedStyle(e).visibility") == "visible"
    page.close()
    zoomed = browser.new_page(viewport={"width": 750, "height": 500}, device_scale_factor=2)
    zoomed.set_default_timeout(SLOW)
    zoomed.goto(server)
    zoomed.wait_for_selector(HEATMAP)
    settle(zoomed, 1.0)
    sidebar = zoomed.locator("[data-testid=stSidebar]")
    box = sidebar.bounding_box()  # starts closed (off screen): it lay over the whole page
    assert box is None or box["x"] + box["width"] <= 1, box
    assert zoomed.locator("h1").first.evaluate(  # the title is on top at its own centre
        "e => { const r = e.getBoundingClientRect();"
        " return e.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2)); }"
    )
    zoomed.close()


@pytest.fixture(scope="module")
def swept_server(workspace, tmp_path_factory):
    """A server on a copy of the workspace whose UNets keep snapshots of epochs 1–3, with
    the default view's dynamics and two more sensitivity settings cached (as the demo has
    them for its ViT): the sweep panels drawn filled, not in their one-point state."""
    root = copy_workspace(workspace, tmp_path_factory.mktemp("swept") / "workspace")
    fill_sweeps(train_on_with_snapshots(root))
    with streamlit_served(root, ARTIFACTS / "streamlit_sweeps.log") as url:
        yield url


TRACES = (  # [type, mode, points] of every trace of every chart, as plotly.js drew it (its
    # full data: the spec's arrays arrive base64-encoded, decoded there)
    "() => [...document.querySelectorAll('.js-plotly-plot')].map(g => (g._fullData || []).map("
    "t => [t.type, t.mode || '', t.x && t.x.length !== undefined ? t.x.length : 0]))"
)


def test_filled_sweep_panels_draw_curves_epoch_maps_and_agreement(swept_server, browser):
    """The browser drew the sweep panels only in their one-point state (an audit): the
    trends over three epochs, one map per epoch, the λ curves and the estimators' agreement
    are drawn to the end here, with no page error."""
    page = new_page(browser, f"{swept_server}/?panel=Training+dynamics")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    settle(page, 1.0)
    page.wait_for_function(f"() => ({TRACES})().flat().filter(t => t[0] === 'heatmap').length >= 3")
    charts = page.evaluate(TRACES)
    trends = [t for chart in charts for t in chart if t[1] == "lines+markers"]
    assert trends and all(points == 3 for _, _, points in trends), trends  # epochs 1, 2, 3
    maps = [chart for chart in charts if sum(t[0] == "heatmap" for t in chart) == 3]
    assert len(maps) == 1, charts  # the two-time map of each epoch, side by side
    assert page.get_by_text("3 of 3 epoch analyses cached").count() == 1
    shot(page, "20_training_dynamics_filled")

    open_tab(page, "Sensitivity")
    page.wait_for_function(f"() => ({TRACES})().flat().some(t => t[0] === 'histogram')")
    charts = page.evaluate(TRACES)
    lines = [t for chart in charts for t in chart if t[1] == "lines+markers" and t[2] == 2]
    assert lines, charts  # ekfac-krylov at λ = 1e-4 and 1e-2
    assert any(t[0] == "histogram" for chart in charts for t in chart)  # per-row ρ
    assert page.get_by_text("Needs two estimators").count() == 0
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".every(g => g.querySelector('.draglayer .nsewdrag'))"
    )
    shot(page, "21_sensitivity_filled")
    # the Report button holds both sweeps, though the link now names the open tab's only
    with page.expect_download() as download:
        page.get_by_role("button", name="Report (HTML)").click()
    report = Path(download.value.path()).read_text()
    for heading in ("Training dynamics", "Sensitivity", "Agreement between estimators"):
        assert f"<h2>{heading}</h2>" in report, heading
    # no sweep left out: only the tabs a report never holds are listed
    left_out = report[report.index("Not in this report:") :].split("</ul>")[0]
    assert left_out.count("<li>") == 1 and "Overview, Rollout, Validation" in left_out
    assert not errors, errors
    page.close()
