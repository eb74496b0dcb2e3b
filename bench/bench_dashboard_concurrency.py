"""Dashboard under concurrent sessions (issue 13): page load to first heatmap for one session
vs ``--sessions`` sessions loading at once, and the server's health endpoint while they load
and while ``--jobs`` uncached analyses are submitted at once.

Targets: p95 of the concurrent loads ≤ 2 × the single session's median; every submitted job
finishes (they queue: the job runner decides how many run at a time); ``/_stcore/health``
answers within 1 s throughout.

Measured like bench_dashboard (Debian's chromium through Playwright, ``performance.now()`` when
plotly has drawn the two-time heatmap's image), with Playwright's async API so that the
sessions really are concurrent: each is a new page of one browser, all navigating at once.
A thread polls the health endpoint every 0.1 s (1 s timeout) during both phases. The
submissions go through ``JobRunner.submit`` from ``--jobs`` threads at once, as the Compute
buttons of that many sessions would: small requests (one checkpoint, two classes, a 4-step
window, one trajectory), made distinct by their damping so that none is cached.

Note: the browser and the server share the machine's cores, so on a small machine the
concurrent loads also measure the browser rendering ten plotly pages at once.

Run: python -m bench.bench_dashboard_concurrency [--workspace PATH] [--sessions 10] [--jobs 10]
(without --workspace: bench_dashboard's demo-sized stand-in, built in a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.bench_dashboard import HEATMAP_DRAWN, build_workspace, start_server
from bench.common import write_result
from coherence.cache.jobs import JobRunner
from coherence.dashboard.selection import default_selection
from tests.browser import CHROMIUM, CHROMIUM_ARGS

HEALTH_PERIOD_S = 0.1
HEALTH_TARGET_S = 1.0
LOAD_RATIO_TARGET = 2.0
JOB_TIMEOUT_S = 1800


@dataclass
class HealthProbe:
    """Polls ``/_stcore/health`` in a thread; latencies in seconds (a failure counts as the
    timeout and is counted)."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthProbe:
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=HEALTH_TARGET_S):
                    pass
                self.latencies.append(time.perf_counter() - started)
            except OSError:
                self.failures += 1
                self.latencies.append(time.perf_counter() - started)
            self._stop.wait(HEALTH_PERIOD_S)

    def summary(self) -> dict[str, float | int]:
        values = np.asarray(self.latencies or [float("nan")])
        return {
            "probes": len(self.latencies),
            "p95_s": float(np.percentile(values, 95)),
            "max_s": float(values.max()),
            "over_1s": int((values > HEALTH_TARGET_S).sum()),
            "failures": self.failures,
        }


async def _load(browser, url: str) -> float:
    page = await browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        await page.goto(url, timeout=300_000)
        await page.wait_for_function(HEATMAP_DRAWN, timeout=300_000, polling="raf")
        return await page.evaluate("() => performance.now()") / 1000.0
    finally:
        await page.close()


async def _loads(url: str, sessions: int, single_loads: int) -> tuple[float, list, list]:
    """(cold load, single-session loads one after another, concurrent loads)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            cold = await _load(browser, url)
            single = [await _load(browser, url) for _ in range(single_loads)]
            concurrent = await asyncio.gather(*(_load(browser, url) for _ in range(sessions)))
        finally:
            await browser.close()
    return cold, single, list(concurrent)


def submit_at_once(workspace: Path, jobs: int) -> tuple[list[str], float, dict[str, int]]:
    """``jobs`` distinct small uncached analyses submitted from as many threads at once;
    waits until none is active. Returns (keys, seconds until all ended, final states)."""
    base = default_selection(workspace)
    small = replace(
        base,
        checkpoints=base.checkpoints[:1],
        classes=base.classes[:2],
        trajectories=(0,),
        t_start=0,
        n_steps=min(4, base.n_steps),
        responses=("smse",),
    )
    stamp = time.time_ns() % 997  # a fresh damping per run: nothing is cached from before
    requests = [
        replace(small, damping=1e-3 * (1 + stamp / 997 + i / (10 * jobs))).to_request(workspace)
        for i in range(jobs)
    ]
    runner = JobRunner(workspace)
    keys: list[str] = [""] * jobs
    barrier = threading.Barrier(jobs)

    def submit(i: int) -> None:
        barrier.wait()
        keys[i] = JobRunner(workspace).submit(requests[i])  # one runner per session

    started = time.perf_counter()
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while any(runner.status(k).active for k in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    states: dict[str, int] = {}
    for key in keys:
        state = runner.status(key).state
        states[state] = states.get(state, 0) + 1
    return keys, seconds, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, help="measure this workspace (cached default)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent page loads")
    parser.add_argument("--single", type=int, default=3, help="single-session loads to time")
    parser.add_argument("--jobs", type=int, default=10, help="uncached analyses submitted at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_dashboard_concurrency_") as tmp:
        if args.workspace is not None:
            workspace, what = args.workspace.resolve(), f"workspace {args.workspace}"
        else:
            workspace = build_workspace(Path(tmp) / "workspace")
            what = "demo-sized stand-in (synthetic cached result)"
        if default_selection(workspace) is None:
            raise SystemExit(f"{workspace}: no default analysis; run `coherence demo` first")
        process, url = start_server(workspace, Path(tmp) / "streamlit.log")
        try:
            with HealthProbe(url) as loading:
                cold, single, concurrent = asyncio.run(_loads(url, args.sessions, args.single))
            with HealthProbe(url) as submitting:
                _, job_seconds, states = submit_at_once(workspace, args.jobs)
        finally:
            process.terminate()
            process.wait(timeout=30)
    single_median = statistics.median(single)
    p95 = float(np.percentile(concurrent, 95))
    ratio = p95 / single_median
    load_health, job_health = loading.summary(), submitting.summary()
    finished = states.get("done", 0)
    rows = [
        {"measure": "cold server, first session", "value": cold, "unit": "s"},
        {"measure": f"one session, median of {len(single)}", "value": single_median, "unit": "s"},
        {"measure": f"{args.sessions} sessions at once, p95", "value": p95, "unit": "s"},
        {
            "measure": f"{args.sessions} sessions at once, median",
            "value": statistics.median(concurrent),
            "unit": "s",
        },
        {"measure": "p95 / single median (target ≤ 2)", "value": ratio, "unit": "×"},
        {"measure": "health during loads, p95", "value": load_health["p95_s"], "unit": "s"},
        {"measure": "health during loads, max", "value": load_health["max_s"], "unit": "s"},
        {"measure": f"{args.jobs} jobs submitted at once: finished", "value": finished, "unit": ""},
        {"measure": f"{args.jobs} jobs: until all ended", "value": job_seconds, "unit": "s"},
        {"measure": "health during jobs, p95", "value": job_health["p95_s"], "unit": "s"},
        {"measure": "health during jobs, max", "value": job_health["max_s"], "unit": "s"},
    ]
    over = load_health["over_1s"] + job_health["over_1s"]
    notes = (
        f"{what}; `streamlit run app.py` on loopback, Debian chromium headless via Playwright "
        f"(async: {args.sessions} new pages of one browser navigating at once). The load p95 "
        f"is {ratio:.1f}× the single session's median ({'meets' if ratio <= 2 else 'misses'} "
        f"the ≤ {LOAD_RATIO_TARGET:.0f}× target); the browser shares the cores with the "
        f"server. Jobs: {args.jobs} small distinct uncached analyses (1 checkpoint, 2 "
        f"classes, 4 steps, 1 trajectory) submitted through JobRunner.submit from as many "
        f"threads at once; final states {states}. Health probes every "
        f"{HEALTH_PERIOD_S:g} s: {load_health['probes'] + job_health['probes']} in all, "
        f"{over} over {HEALTH_TARGET_S:g} s, "
        f"{load_health['failures'] + job_health['failures']} failed. Load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine "
        "inflates every figure)."
    )
    for row in rows:
        print(f"{row['measure']:44s} {row['value']:.3g} {row['unit']}")
    print(notes)
    write_result(
        "dashboard_concurrency", "Dashboard: concurrent sessions and submissions", rows, notes
    )


if __name__ == "__main__":
    main()
