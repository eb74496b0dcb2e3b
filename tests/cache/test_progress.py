"""Job progress (issue 16): the ETA from per-unit durations, smoothed; the units a resumed job
found cached, shown in its progress text; a job's silent phases labelled."""

from __future__ import annotations

import itertools
import time

import pytest

from coherence.cache import jobs
from coherence.cache.jobs import TEST_DELAY_ENV, JobRunner, JobStatus, ProgressTracker
from coherence.cache.store import ResultStore
from coherence.dashboard.compute import progress_text
from tests.fixtures import quick_request

KEY = "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(jobs.time, "time", clock)
    return clock


def test_eta_follows_unit_durations_not_the_uneven_pace_inside_a_unit(tmp_path, clock):
    tracker = ProgressTracker(ResultStore(tmp_path / "cache"), KEY, interval=0.0)
    tracker.set_units(total=4, cached=1)
    # before a unit is done: from the computed fraction's pace, cached units left out
    clock.now += 10
    tracker((1 + 0.5) / 4, "per-example gradients")  # half of the first unit in 10 s
    # a sixth of the work to compute (3 units) in 10 s: 50 s left
    assert tracker.raw_eta(clock.now) == pytest.approx(50)
    clock.now += 10  # the unit took 20 s in all
    tracker.unit_done()
    assert tracker.eta(clock.now) == pytest.approx(2 * 20)  # two units left
    # inside the next unit the fraction jumps (gradients fast, JVPs slow): the ETA counts down
    etas = []
    for seconds, fraction in [(1, 0.3), (2, 0.31), (10, 0.35), (5, 0.9)]:
        clock.now += seconds
        tracker((2 + fraction) / 4, "subspace JVPs")
        etas.append(tracker.eta(clock.now))
    assert all(a > b for a, b in itertools.pairwise(etas))  # never climbs
    assert etas[-1] == pytest.approx(40 - 18, abs=2.0)
    record = tracker.store.get_progress(KEY)
    assert (record.units_done, record.units_total, record.units_cached) == (2, 4, 1)


def test_progress_text_names_units_cached_and_silent_phases():
    status = JobStatus(
        KEY,
        "running",
        fraction=0.5,
        stage="assembling the result (input distances)",
        eta_seconds=90,
        updated=100.0,
        units_done=3,
        units_total=6,
        units_cached=2,
    )
    text = progress_text("UNet", status, now=130.0)
    assert "3 of 6 units done (2 from the cache)" in text
    assert "about 1 min left" in text and "50%" in text  # 90 s, counted down by 30 s quiet
    assert "still working: this phase reports no steps (30 s)" in text
    assert "still working" not in progress_text("UNet", status, now=105.0)
    assert "about 2 min left" in progress_text("UNet", status, now=100.0)
    late = progress_text("UNet", status, now=200.0)  # the 90 s have run out
    assert "left" not in late and "taking longer than estimated" in late


@pytest.mark.slow
def test_a_cancelled_job_resumes_from_its_finished_units(
    workspace, checkpoint, tiny_dataset, monkeypatch
):
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1))
    monkeypatch.setenv(TEST_DELAY_ENV, "0.4")
    key = runner.submit(request)
    deadline = time.monotonic() + 120
    while (runner.status(key).units_done or 0) < 1:
        assert runner.status(key).state in ("running", "missing"), runner.status(key)
        assert time.monotonic() < deadline, "no unit finished"
        time.sleep(0.1)
    runner.cancel(key)
    while runner.status(key).active:
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(0.1)
    assert runner.status(key).state == "cancelled"
    cached, total = runner.cached_unit_count(request)
    assert (cached, total) == (1, 2)
    runner.submit(request)  # resubmitted: computes only the missing units
    seen = None
    while (status := runner.status(key)).state != "done":
        assert status.state == "running", status
        if status.units_total:
            seen = status
        assert time.monotonic() < deadline, "the resumed job did not finish"
        time.sleep(0.1)
    assert seen is not None and seen.units_cached == cached
    assert f"({cached} from the cache)" in progress_text("UNet", seen)
    assert runner.store.computations(key) == 2


def test_a_jobs_setup_is_the_time_beyond_its_steady_units(tmp_path, clock):
    """Setup = the worker's start before the job + the job's time beyond its computed units at
    the pace of all but the first (which includes loading and tracing)."""
    tracker = ProgressTracker(ResultStore(tmp_path / "cache"), KEY, interval=0.0)
    tracker.set_units(total=4, cached=1)
    clock.now += 10  # the first computed unit: 4 s of work + 6 s loading and tracing
    tracker.unit_done()
    assert tracker.setup_seconds(3.0) is None  # one unit: its tracing cannot be told apart
    for seconds in (4, 5):
        clock.now += seconds
        tracker.unit_done()
    clock.now += 1  # storing the result
    # 20 s in all, 3 computed units at the steady 5 s (median of the later ones): 5 s beyond
    assert tracker.setup_seconds(3.0) == pytest.approx(3.0 + 20 - 3 * 5)
    clock.now -= 30  # a clock that went back: never a negative setup
    assert tracker.setup_seconds(3.0) == pytest.approx(3.0)


def test_a_finished_unit_shows_at_once(tmp_path, clock):
    """The unit count is written when a unit finishes, not at the next rate-limited step
    (the last unit's count lagged behind a job at 100 %)."""
    tracker = ProgressTracker(ResultStore(tmp_path / "cache"), KEY, interval=60.0)
    tracker.set_units(total=3, cached=0)
    tracker(0.1, "per-example gradients")  # written: the first record
    clock.now += 1
    tracker(0.3, "subspace JVPs")  # within the interval: not written
    assert tracker.store.get_progress(KEY).stage == "per-example gradients"
    tracker.unit_done()
    assert tracker.store.get_progress(KEY).units_done == 1


def test_the_eta_leaves_out_the_first_unit_and_caps_the_countdown_inside_a_unit(tmp_path, clock):
    """Per unit: the mean of the last RECENT_UNITS durations, the first unit (loading and
    tracing) left out while it is among them; the time spent in the current unit is taken off
    only up to 95 % of a unit (a unit running late does not bring the ETA to zero); the first
    per-unit figure replaces the fraction-based one, later ones are blended with it."""
    tracker = ProgressTracker(ResultStore(tmp_path / "cache"), KEY, interval=60.0)
    tracker.set_units(total=10, cached=0)
    clock.now += 1
    tracker(0.001, "per-example gradients")
    clock.now += 9
    tracker(0.09, "subspace JVPs")  # by the pace of the fraction: 91 s left
    assert tracker.eta(clock.now) == pytest.approx(10 * 0.91 / 0.09)
    for seconds in (30, 10, 10):  # the first unit includes loading and tracing
        clock.now += seconds
        tracker.unit_done()
    # 7 units left at 10 s, not at the mean 16.7 s with the first; not blended with 91 s
    assert tracker.eta(clock.now) == pytest.approx(70)
    clock.now += 4  # inside the next unit: counted down, then blended
    assert tracker.eta(clock.now) == pytest.approx(0.3 * 66 + 0.7 * 66)
    clock.now += 100  # running late: at most 9.5 s of the unit is taken off
    assert tracker.raw_eta(clock.now) == pytest.approx(70 - 9.5)
    assert tracker.eta(clock.now) == pytest.approx(0.3 * 60.5)  # the countdown ran out
    for seconds in (20, 6, 6, 6, 6):  # more than RECENT_UNITS: the last five, all counted
        clock.now += seconds
        tracker.unit_done()
    assert tracker.unit_seconds[3:] == [124, 6, 6, 6, 6]
    assert tracker.raw_eta(clock.now) == pytest.approx(2 * (124 + 4 * 6) / 5)
