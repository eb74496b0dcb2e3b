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

The browser and the server share the machine's cores, so on a small machine the browser's
concurrent loads mostly measure chromium drawing ten plotly pages at once. Two more figures
separate the server from the client: the CPU seconds of the server process and of the rest
of the machine during each phase, and the same loads replayed by ``bench.streamlit_client``
(the recorded requests of one page load, over the network, without rendering: what a
session costs the server when each visitor's browser runs on their own machine).

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

from bench.bench_dashboard import HEATMAP_DRAWN, build_workspace
from bench.common import machine_busy_seconds, process_cpu_seconds, write_result
from bench.streamlit_client import PageRequests, page_load, record_requests, use_threads_for
from coherence.cache.jobs import JobRunner
from coherence.dashboard.selection import default_selection
from tests.browser import CHROMIUM, CHROMIUM_ARGS, start_streamlit, stop_streamlit

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


@dataclass
class CpuMeter:
    """CPU seconds of the server process and of the whole machine over a ``with`` block."""

    server_pid: int
    server_s: float = 0.0
    machine_s: float = 0.0
    wall_s: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = (
            process_cpu_seconds(self.server_pid),
            machine_busy_seconds(),
            time.monotonic(),
        )
        return self

    def __exit__(self, *exc) -> None:
        server, busy, wall = self._start
        self.server_s = process_cpu_seconds(self.server_pid) - server
        self.machine_s = machine_busy_seconds() - busy
        self.wall_s = time.monotonic() - wall


@dataclass
class Loads:
    """Seconds to the first heatmap: one session at a time, then ``sessions`` at once."""

    single: list[float]
    concurrent: list[float]
    single_cpu: CpuMeter
    concurrent_cpu: CpuMeter

    @property
    def single_median(self) -> float:
        return statistics.median(self.single)

    @property
    def p95(self) -> float:
        return float(np.percentile(self.concurrent, 95))


async def _measure(load, server_pid: int, sessions: int, single_loads: int) -> Loads:
    """``load()`` one at a time, then ``sessions`` of them at once, with the CPU of each."""
    with CpuMeter(server_pid) as single_cpu:
        single = [await load() for _ in range(single_loads)]
    with CpuMeter(server_pid) as concurrent_cpu:
        concurrent = await asyncio.gather(*(load() for _ in range(sessions)))
    return Loads(single, list(concurrent), single_cpu, concurrent_cpu)


async def _browser_loads(
    url: str, server_pid: int, sessions: int, single_loads: int
) -> tuple[float, Loads, PageRequests]:
    """(cold load, browser loads, the requests of one page load for the replay)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            cold = await _load(browser, url)
            requests = await record_requests(browser, url, HEATMAP_DRAWN)
            loads = await _measure(lambda: _load(browser, url), server_pid, sessions, single_loads)
        finally:
            await browser.close()
    return cold, loads, requests


async def _replayed_loads(
    url: str, requests: PageRequests, server_pid: int, sessions: int, single_loads: int
) -> Loads:
    """The same loads as network requests only (bench.streamlit_client)."""
    use_threads_for(sessions)
    await page_load(url, requests)  # warm: the first replay starts the threads
    return await _measure(lambda: page_load(url, requests), server_pid, sessions, single_loads)


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
        process, url = start_streamlit(workspace, Path(tmp) / "streamlit.log")
        try:
            with HealthProbe(url) as loading:
                cold, browser, requests = asyncio.run(
                    _browser_loads(url, process.pid, args.sessions, args.single)
                )
                replayed = asyncio.run(
                    _replayed_loads(url, requests, process.pid, args.sessions, args.single)
                )
            with HealthProbe(url) as submitting:
                _, job_seconds, states = submit_at_once(workspace, args.jobs)
        finally:
            stop_streamlit(process)
    rows, notes = _report(args, what, cold, browser, replayed, requests)
    load_health, job_health = loading.summary(), submitting.summary()
    rows += [
        {"measure": "health during loads, p95", "value": load_health["p95_s"], "unit": "s"},
        {"measure": "health during loads, max", "value": load_health["max_s"], "unit": "s"},
        {
            "measure": f"{args.jobs} jobs submitted at once: finished",
            "value": states.get("done", 0),
            "unit": "",
        },
        {"measure": f"{args.jobs} jobs: until all ended", "value": job_seconds, "unit": "s"},
        {"measure": "health during jobs, p95", "value": job_health["p95_s"], "unit": "s"},
        {"measure": "health during jobs, max", "value": job_health["max_s"], "unit": "s"},
    ]
    over = load_health["over_1s"] + job_health["over_1s"]
    notes += (
        f" Jobs: {args.jobs} small distinct uncached analyses (1 checkpoint, 2 classes, 4 "
        f"steps, 1 trajectory) submitted through JobRunner.submit from as many threads at "
        f"once; final states: {', '.join(f'{v} {k}' for k, v in states.items())}. "
        f"Health probes every {HEALTH_PERIOD_S:g} s during the loads (browser and replay) "
        f"and the jobs: "
        f"{load_health['probes'] + job_health['probes']} in all, {over} over "
        f"{HEALTH_TARGET_S:g} s, {load_health['failures'] + job_health['failures']} failed. "
        f"Load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other "
        "work on the machine inflates every figure)."
    )
    for row in rows:
        print(f"{row['measure']:58s} {row['value']:.3g} {row['unit']}")
    print(notes)
    write_result(
        "dashboard_concurrency", "Dashboard: concurrent sessions and submissions", rows, notes
    )


def _report(args, what: str, cold: float, browser: Loads, replayed: Loads, requests) -> tuple:
    """Rows and notes for the page loads: browser, CPU split, replay, and the estimate for
    visitors whose browsers run on their own machines."""
    n = args.sessions
    browser_ratio = browser.p95 / browser.single_median
    client_s = max(browser.single_median - replayed.single_median, 0.0)
    remote_p95 = client_s + replayed.p95
    remote_ratio = remote_p95 / browser.single_median
    per_load = {
        "browser_server": browser.single_cpu.server_s / len(browser.single),
        "browser_rest": (browser.single_cpu.machine_s - browser.single_cpu.server_s)
        / len(browser.single),
        "replay_server": replayed.single_cpu.server_s / len(replayed.single),
    }
    rows = [
        {"measure": "browser: cold server, first session", "value": cold, "unit": "s"},
        {
            "measure": f"browser: one session, median of {len(browser.single)}",
            "value": browser.single_median,
            "unit": "s",
        },
        {"measure": f"browser: {n} sessions at once, p95", "value": browser.p95, "unit": "s"},
        {
            "measure": "browser: p95 / single median (target ≤ 2)",
            "value": browser_ratio,
            "unit": "×",
        },
        {
            "measure": "browser, one load: server CPU",
            "value": per_load["browser_server"],
            "unit": "s",
        },
        {
            "measure": "browser, one load: CPU of the rest (chromium)",
            "value": per_load["browser_rest"],
            "unit": "s",
        },
        {
            "measure": f"browser, {n} at once: server CPU / rest",
            "value": browser.concurrent_cpu.server_s
            / max(browser.concurrent_cpu.machine_s - browser.concurrent_cpu.server_s, 1e-9),
            "unit": "",
        },
        {
            "measure": f"replay: one session, median of {len(replayed.single)}",
            "value": replayed.single_median,
            "unit": "s",
        },
        {"measure": f"replay: {n} sessions at once, p95", "value": replayed.p95, "unit": "s"},
        {
            "measure": "replay, one load: server CPU",
            "value": per_load["replay_server"],
            "unit": "s",
        },
        {
            "measure": f"estimate, remote browsers: {n} at once, p95",
            "value": remote_p95,
            "unit": "s",
        },
        {
            "measure": "estimate: p95 / single median (target ≤ 2)",
            "value": remote_ratio,
            "unit": "×",
        },
    ]
    notes = (
        f"{what}; `streamlit run app.py` on loopback. Browser: Debian chromium headless via "
        f"Playwright (async: {n} new pages of one browser navigating at once), time to the "
        f"first heatmap's image; its p95 is {browser_ratio:.1f}× the single median "
        f"({'meets' if browser_ratio <= LOAD_RATIO_TARGET else 'misses'} the ≤ "
        f"{LOAD_RATIO_TARGET:.0f}× target), but on this machine the browser and the server "
        f"share the cores: per load the server used {per_load['browser_server']:.2f} CPU s "
        f"and the rest of the machine (chromium) {per_load['browser_rest']:.2f} CPU s. "
        f"Replay: bench.streamlit_client repeats one page load's requests "
        f"({len(requests.before_session)} files before the websocket, the script run until "
        f"the first plotly chart, then {len(requests.after_session)} files including "
        f"plotly's chunk) without rendering. Estimate for visitors on their own machines: "
        f"the client's part of a single load (browser median − replay median = "
        f"{client_s:.2f} s) plus the replay's p95 under {n} sessions = {remote_p95:.2f} s, "
        f"{remote_ratio:.2f}× the single browser load "
        f"({'meets' if remote_ratio <= LOAD_RATIO_TARGET else 'misses'} the target)."
    )
    return rows, notes


if __name__ == "__main__":
    main()
