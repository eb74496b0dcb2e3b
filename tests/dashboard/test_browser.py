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
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from coherence.dashboard.panels import PANELS
from coherence.workspace import ENV_VAR
from tests.browser import CHROMIUM, CHROMIUM_ARGS

from .conftest import ARTIFACTS, COMPARE, REPO

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(workspace):
    """`streamlit run app.py` on a free loopback port, as `coherence serve` runs it."""
    port = free_port()
    env = dict(os.environ, **{ENV_VAR: str(workspace)})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")  # noqa: SIM115 (closed in the finally)
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py")]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    command += ["--client.toolbarMode", "viewer", "--server.fileWatcherType", "none"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


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
    """Wait until Streamlit's script run is over (no running indicator), then a moment."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=SLOW
    )
    time.sleep(seconds)


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
    assert "data=tiny_ce" in page.url and "est=subspace" in page.url
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
        name = re.sub(r"\W+", "_", label).lower()
        shot(page, f"{i:02d}_{name}")
    assert "panel=Scores" in page.url  # the open tab is part of the link

    open_tab(page, "Two-time influence")
    with page.expect_download() as download:
        page.get_by_role("button", name="Data (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert download.value.suggested_filename == "tiny_ce_two_time_UNet.csv"
    assert len(rows) == 25 and set(rows[0]) == {"t_p", "t_r", "step_p", "step_r", "value"}
    assert all(float(row["value"]) == float(row["value"]) for row in rows)  # no NaN

    page.get_by_text("Analysis files and provenance").click()  # lazy: drawn when opened
    whole = page.get_by_role("button", name="Whole analysis")
    whole.wait_for()
    with page.expect_download() as download:
        whole.click()
    with zipfile.ZipFile(download.value.path()) as archive:
        names = sorted(archive.namelist())
        assert names == ["tiny_ce_analysis_UNet.json", "tiny_ce_analysis_UNet.npz"]
        with np.load(io.BytesIO(archive.read(names[1])), allow_pickle=False) as arrays:
            assert arrays["H_std"].shape == (2, 1, 5, 3, 5, 3)  # [S, B, T, C, T, C]
        assert json.loads(archive.read(names[0]))["request"]["estimator"] == "subspace"
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
