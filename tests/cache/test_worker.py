"""The worker's refusals and exit statuses, run in-process on a real ResultStore: each way a
job cannot start is recorded as failed with a sentence the dashboard shows (and the worker's
log), a cancel while queued is recorded and its flag cleared, and the exit status says how the
job ended (0 done or nothing to do, 1 failed, 3 cancelled)."""

from __future__ import annotations

import numpy as np
import pytest

from coherence.cache import tasks, worker
from coherence.cache.locks import KeyLock
from coherence.cache.progress import JobCancelled
from coherence.cache.store import ResultStore
from coherence.errors import CoherenceError
from coherence.workspace import cache_dir

KEY = "7" * 64


@pytest.fixture
def store(tmp_path):
    with ResultStore(cache_dir(tmp_path)) as store:
        yield store


def _failure(store: ResultStore) -> str:
    record = store.get_progress(KEY)
    assert record.state == "failed" and record.log == str(store.log_path(KEY))
    return record.error


def test_no_stored_request_fails_and_says_to_submit_again(store):
    assert worker.work(store, KEY, trust_code=False) == 1
    assert _failure(store) == "no request is stored for this key; submit the analysis again"


def test_a_task_of_another_kind_under_the_key_is_refused(store):
    store.put_task(KEY, "counterfactual", {"checkpoint": "c"})
    assert worker.work(store, KEY, trust_code=False, kind="rollout") == 1
    assert _failure(store) == "no rollout job is stored for this key; submit it again"


def test_a_malformed_task_spec_fails_with_its_reason(store):
    store.put_task(KEY, "counterfactual", {"checkpoint": "c"})
    assert worker.work(store, KEY, trust_code=False, kind="counterfactual") == 1
    assert "field 'data' is missing or malformed" in _failure(store)


def test_a_task_whose_inputs_changed_since_it_was_submitted_fails(store, monkeypatch):
    """The inputs now hash to another key (a checkpoint was retrained in place)."""
    store.put_task(KEY, "counterfactual", {"checkpoint": "c"})
    monkeypatch.setattr(tasks, "task_key", lambda kind, spec: "8" * 64)
    assert worker.work(store, KEY, trust_code=False, kind="counterfactual") == 1
    error = _failure(store)
    assert "no longer matches its key" in error and error.endswith("submit it again")


def test_a_cached_task_is_not_computed_again(store):
    store.put_artifact(KEY, {"x": np.zeros(1)}, {})
    assert worker.work(store, KEY, trust_code=False, kind="counterfactual") == 0
    assert store.get_progress(KEY) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (JobCancelled("job was cancelled"), 3),
        (CoherenceError("a checkpoint is gone"), 1),
        (RuntimeError("a bug"), 1),
    ],
)
def test_the_exit_status_says_how_the_job_ended(tmp_path, monkeypatch, error, status):
    def work(*args, **kwargs):
        raise error

    monkeypatch.setattr(worker, "work", work)
    assert worker.compute(str(tmp_path), KEY, None, trust_code=False) == status
    monkeypatch.setattr(worker, "work", lambda *args, **kwargs: 0)
    assert worker.compute(str(tmp_path), KEY, None, trust_code=False) == 0


def test_a_job_cancelled_while_queued_is_recorded_and_its_flag_cleared(tmp_path, store):
    store.request_cancel(KEY)
    assert worker.cancelled_while_queued(str(tmp_path), KEY) == 3
    record = store.get_progress(KEY)
    assert record.state == "cancelled" and "cancelled while queued" in record.error
    assert record.log == str(store.log_path(KEY))
    assert not store.cancel_requested(KEY)  # the next job for the key is not cancelled
    # a task's worker names its kind (it said "analysis" for a rollout too)
    assert worker.cancelled_while_queued(str(tmp_path), KEY, "rollout") == 3
    assert store.get_progress(KEY).error.startswith(f"rollout {KEY[:12]} was cancelled")


def test_a_second_worker_for_a_running_key_exits_quietly(tmp_path, store):
    lock = KeyLock(store.lock_path(KEY))
    assert lock.acquire()
    try:
        assert worker.main(["--workspace", str(tmp_path), "--key", KEY]) == 0
    finally:
        lock.release()
    assert store.get_progress(KEY) is None  # the running job's record is left alone
