"""What the dashboard shows for a job, from the three facts it is read from: whether the key's
lock is held, the job's last progress record, and whether a result (here a task artifact) is
cached. Each case lays these out for real: a ResultStore in tmp_path, a lock file held by a
``KeyLock`` of this process (flock excludes another open of the same file, as a worker's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coherence.cache.locks import KeyLock
from coherence.cache.progress import ProgressTracker, recorded
from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.status import job_status
from coherence.cache.store import ResultStore
from coherence.errors import CoherenceError

KEY = "5" * 64


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "cache") as store:
        yield store


@pytest.fixture
def held(store):
    """The key's lock, held as a running worker holds it."""
    lock = KeyLock(store.lock_path(KEY))
    assert lock.acquire()
    yield lock
    lock.release()


def _record(state: str, **fields) -> ProgressRecord:
    base = {
        "fraction": 0.4,
        "stage": "subspace JVPs",
        "started": 100.0,
        "updated": 130.0,
        "eta_seconds": 45.0,
        "log": "/cache/logs/x.log",
        "units_done": 3,
        "units_total": 6,
        "units_cached": 2,
        "note": "computes on 2 threads: another process keeps 6 cores busy",
    }
    return ProgressRecord(state, **{**base, **fields})


def _cache_result(store: ResultStore) -> None:
    store.put_artifact(KEY, {"x": np.zeros(2)}, {"what": "test"})


def test_never_computed_or_evicted_is_missing(store):
    assert job_status(store, KEY).state == "missing"
    store.set_progress(KEY, _record("done", eta_seconds=0.0))  # its result was evicted
    status = job_status(store, KEY)
    assert (status.state, status.fraction, status.error) == ("missing", 0.0, None)


def test_a_running_record_under_a_free_lock_is_a_killed_worker(store):
    store.set_progress(KEY, _record("running"))
    status = job_status(store, KEY)
    assert status.state == "failed" and not status.active
    assert "killed or crashed" in status.error
    assert "its log is /cache/logs/x.log" in status.error
    assert "submit the analysis again" in status.error
    assert (status.units_done, status.units_total, status.units_cached) == (3, 6, 2)
    assert status.eta_seconds is None and status.note is None  # no estimate for a dead job
    assert status.log == "/cache/logs/x.log"


def test_a_cancelled_job_shows_cancelled_with_its_message(store):
    message = "job 555555555555 was cancelled; submit it again to recompute"
    store.set_progress(KEY, _record("cancelled", eta_seconds=None, error=message))
    status = job_status(store, KEY)
    assert (status.state, status.error, status.fraction) == ("cancelled", message, 0.4)
    assert status.eta_seconds is None and status.note is None


def test_a_running_job_shows_its_progress_eta_units_and_note(store, held):
    store.set_progress(KEY, _record("running"))
    status = job_status(store, KEY)
    assert status.state == "running" and status.active and not status.queued
    assert (status.fraction, status.stage, status.eta_seconds) == (0.4, "subspace JVPs", 45.0)
    assert (status.units_done, status.units_total, status.units_cached) == (3, 6, 2)
    assert status.note == _record("running").note
    assert (status.started, status.updated, status.error) == (100.0, 130.0, None)


def test_a_new_job_under_the_lock_does_not_show_the_last_ones_failure(store, held):
    """The lock is taken before the new job writes its first record: the record read is the
    previous job's, failed; the status is running, without that error or progress."""
    store.set_progress(KEY, _record("failed", eta_seconds=None, error="boom"))
    status = job_status(store, KEY)
    assert (status.state, status.stage, status.error) == ("running", "running", None)
    assert status.fraction == 0.0 and status.units_total is None


def test_a_job_that_stored_its_result_is_done_while_its_worker_still_holds_the_lock(store, held):
    _cache_result(store)
    store.set_progress(KEY, _record("done", eta_seconds=0.0, error="stale"))
    status = job_status(store, KEY)
    assert status.state == "done" and not status.active
    assert (status.fraction, status.stage, status.eta_seconds) == (1.0, "done", 0.0)
    assert status.error is None and status.note is None
    assert status.age_seconds is not None and 0.0 <= status.age_seconds < 60


def test_a_cached_result_after_a_failed_record_is_done_in_full(store):
    """A record that ended failed (or still says running at 40 %) beside a stored result: the
    result wins, at 100 % and without the old error."""
    _cache_result(store)
    store.set_progress(KEY, _record("failed", eta_seconds=None, error="boom"))
    status = job_status(store, KEY)
    assert (status.state, status.fraction, status.error, status.eta_seconds) == (
        "done",
        1.0,
        None,
        0.0,
    )


def _tracker(store: ResultStore) -> ProgressTracker:
    return ProgressTracker(store, KEY, log_path=store.log_path(KEY), interval=0.0)


def test_a_job_ends_done_and_a_late_cancel_request_is_cleared(store):
    tracker = _tracker(store)
    with recorded(store, KEY, tracker, store.log_path(KEY)):
        tracker(0.5, "per-example gradients")
        store.request_cancel(KEY)  # too late: the job is past its last progress call
    record = store.get_progress(KEY)
    assert (record.state, record.fraction, record.eta_seconds) == ("done", 1.0, 0.0)
    assert not store.cancel_requested(KEY)  # a resubmitted job is not cancelled by it
    assert store.computations(KEY) == 1


def test_a_cancelled_job_is_recorded_cancelled_and_its_flag_cleared(store):
    tracker = _tracker(store)
    store.request_cancel(KEY)
    with pytest.raises(CoherenceError, match="was cancelled"), recorded(store, KEY, tracker, None):
        tracker(0.1, "per-example gradients")
    record = store.get_progress(KEY)
    assert record.state == "cancelled" and "submit it again" in record.error
    assert record.eta_seconds is None
    assert not store.cancel_requested(KEY)


def test_failures_are_recorded_with_one_line_and_internal_ones_name_the_log(store):
    tracker = _tracker(store)
    with pytest.raises(CoherenceError), recorded(store, KEY, tracker, store.log_path(KEY)):
        raise CoherenceError("the checkpoint is gone")
    record = store.get_progress(KEY)
    assert (record.state, record.error, record.eta_seconds) == (
        "failed",
        "the checkpoint is gone",
        None,
    )
    with pytest.raises(ZeroDivisionError), recorded(store, KEY, tracker, store.log_path(KEY)):
        raise ZeroDivisionError("division by zero\nsecond line")
    error = store.get_progress(KEY).error
    assert error == (
        f"internal error: ZeroDivisionError: division by zero, see {store.log_path(KEY)}"
    )


def test_a_job_without_units_writes_none_for_the_counts(store):
    tracker = _tracker(store)
    tracker(0.2, "training")
    record = store.get_progress(KEY)
    assert (record.units_done, record.units_total, record.units_cached) == (None, None, None)
    tracker.set_units(total=5, cached=2)
    tracker(0.5, "per-example gradients")  # before a unit is computed: the cached ones count
    record = store.get_progress(KEY)
    assert (record.units_done, record.units_total, record.units_cached) == (2, 5, 2)


def test_a_record_reads_back_with_its_numbers_typed(store):
    """JSON writes 1.0 as 1 in other writers (and old records): read back as floats / ints."""
    fields = {"state": "running", "fraction": 1, "stage": "x", "started": 10, "updated": 12}
    fields |= {"eta_seconds": 3, "units_done": 2, "units_total": 4, "units_cached": 1}
    record = ProgressRecord.from_json(json.dumps(fields).encode())
    assert isinstance(record.fraction, float) and isinstance(record.eta_seconds, float)
    assert isinstance(record.started, float) and isinstance(record.updated, float)
    assert isinstance(record.units_done, int) and not isinstance(record.units_done, bool)
    assert type(record.units_done) is int and type(record.units_total) is int


@pytest.mark.parametrize("data", [b"[]", b'"running"', b"3"])
def test_a_record_that_is_not_a_json_object_is_refused_as_a_miss(store, data):
    store._cache.set(f"progress:{KEY}", data)
    with pytest.raises(ValueError, match="not a progress record"):
        ProgressRecord.from_json(data)
    assert store.get_progress(KEY) is None
    assert job_status(store, KEY).state == JobState.MISSING
