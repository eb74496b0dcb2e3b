"""Jobs on real worker processes: computed once, shared, crash-safe, cancellable.

A tiny real dataset and checkpoint; the Euclidean estimator without Lanczos keeps each
analysis cheap. ``COHERENCE_TEST_JOB_DELAY`` (a test hook read only by the progress callback)
stretches a job to a few seconds so it can be killed or cancelled mid-way on any machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from coherence.analysis.pipeline import run_analysis
from coherence.cache import jobs, slots
from coherence.cache.jobs import TEST_DELAY_ENV, JobRunner
from coherence.errors import RequestError
from coherence.surrogates import checkpoint as ckpt
from tests.fixtures import WORKER_TIMEOUT as TIMEOUT
from tests.fixtures import computing, finished, quick_request, wait_for


@pytest.fixture
def counted(monkeypatch):
    """Every run_analysis call made by this process's jobs."""
    calls = []

    def counting(request, **kwargs):
        calls.append(request)
        return run_analysis(request, **kwargs)

    monkeypatch.setattr(jobs, "run_analysis", counting)
    return calls


def test_second_request_is_served_from_cache(workspace, checkpoint, tiny_dataset, counted):
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    stages = []
    first = runner.run(request, progress=lambda f, s: stages.append(f))
    assert len(counted) == 1 and stages[-1] == pytest.approx(1.0)
    key = runner.key(request)
    status = runner.status(key)
    assert status.state == "done" and status.fraction == 1.0 and 0 <= status.age_seconds < 60

    second = runner.run(request)
    assert len(counted) == 1  # no recomputation
    for response in request.responses:
        np.testing.assert_array_equal(second.H[response], first.H[response])
        np.testing.assert_array_equal(second.H_std[response], first.H_std[response])
    np.testing.assert_array_equal(second.distances, first.distances)
    # computed or served, the provenance names the cache key (the fresh one had none)
    assert first.provenance["cache_key"] == second.provenance["cache_key"] == key
    assert JobRunner(workspace).result(key) is not None  # another store instance reads it
    assert runner.store.computations(key) == 1

    # a renamed checkpoint keeps the key: served, shown under its new name
    renamed = checkpoint.parent / "renamed"
    checkpoint.rename(renamed)
    third = runner.run(quick_request(renamed, tiny_dataset))
    assert len(counted) == 1
    assert third.checkpoints == ("renamed",) and third.request.checkpoints == (str(renamed),)
    np.testing.assert_array_equal(third.H["smse"], first.H["smse"])

    # a changed request field misses
    runner.run(quick_request(renamed, tiny_dataset, damping=1e-3))
    assert len(counted) == 2

    # one changed weight (saved as a checkpoint: a hand-edited file is refused by its
    # manifest) misses, and gives different numbers
    model, config = ckpt.load(renamed)
    with torch.no_grad():
        list(model.parameters())[-1].add_(0.05)
    ckpt.save_checkpoint(renamed, model, config, ckpt.read_history(renamed), None)
    changed = quick_request(renamed, tiny_dataset)
    assert runner.status(runner.key(changed)).state == "missing"
    fourth = runner.run(changed)
    assert len(counted) == 3
    assert not np.array_equal(fourth.H["smse"], first.H["smse"])


def test_failed_job_records_its_error(workspace, checkpoint, tiny_dataset, counted):
    runner = JobRunner(workspace)
    bad = quick_request(checkpoint, tiny_dataset, trajectories=(7,))  # the test split has 2
    with pytest.raises(RequestError) as raised:
        runner.run(bad)
    status = runner.status(runner.key(bad))
    assert status.state == "failed" and status.error == str(raised.value)
    assert runner.store.get(runner.key(bad)) is None


@pytest.mark.slow
def test_concurrent_requests_share_one_computation(
    workspace, checkpoint, tiny_dataset, counted, monkeypatch
):
    monkeypatch.setenv(TEST_DELAY_ENV, "0.3")  # inherited by the worker: a job of seconds
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    key = runner.submit(request)
    assert runner.status(key).state == "running"  # from submit on: the worker holds the lock
    assert runner.submit(request) == key  # re-attaches, starts nothing
    seen = []
    result = runner.run(request, progress=lambda f, s: seen.append(s))  # a second "tab"
    assert counted == []  # this process waited and read the worker's result
    assert runner.store.computations(key) == 1
    assert any(s.startswith("computed by another process") for s in seen)
    assert result.H["smse"].shape == (1, 1, 2, 2, 2, 2) and np.isfinite(result.H["smse"]).all()
    assert runner.status(key).state == "done"
    assert runner.submit(request) == key and runner.store.computations(key) == 1


@pytest.mark.slow
def test_a_worker_job_measures_its_setup_for_the_next_estimates(
    workspace, checkpoint, tiny_dataset
):
    """A background job of two computed units records the seconds it spent outside them
    (interpreter, imports, loading): positive, and less than the job's whole wall time."""
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset, trajectories=(0, 1))
    started = time.time()
    key = runner.submit(request)
    assert wait_for(lambda: finished(runner, key), "the job").state == "done"
    wall = time.time() - started
    setup = runner.store.job_setup()
    assert setup is not None and 0.5 < setup < wall  # importing torch alone takes longer
    single = quick_request(checkpoint, tiny_dataset, damping=1e-3)
    key = runner.submit(single)
    assert wait_for(lambda: finished(runner, key), "the second job").state == "done"
    assert runner.store.job_setup() == setup  # one unit: nothing to tell its setup from


@pytest.mark.slow
def test_two_worker_processes_compute_once(workspace, checkpoint, tiny_dataset):
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    key = runner.key(request)
    runner.store.put_request(key, request)
    command = [sys.executable, "-m", jobs.WORKER_MODULE, "--workspace", str(workspace)]
    env = {**os.environ, TEST_DELAY_ENV: "0.2"}
    workers = [
        subprocess.Popen(
            [*command, "--key", key], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=TIMEOUT)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert runner.store.computations(key) == 1, logs
    assert sum("done in" in log for log in logs) == 1, logs
    assert runner.result(key) is not None


@pytest.mark.slow
def test_killed_worker_leaves_no_entry_and_retry_succeeds(
    workspace, checkpoint, tiny_dataset, monkeypatch
):
    monkeypatch.setenv(TEST_DELAY_ENV, "0.5")
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    key = runner.submit(request)
    record = wait_for(lambda: computing(runner, key), "the worker to start computing")
    os.kill(record.pid, signal.SIGKILL)
    status = wait_for(lambda: finished(runner, key), "the killed worker's lock to be freed")
    assert status.state == "failed" and "killed" in status.error
    assert runner.store.get(key) is None and not runner.store.contains(key)
    assert runner.store.info()["entries"] == 0

    monkeypatch.setenv(TEST_DELAY_ENV, "0")
    assert runner.submit(request) == key  # the stale record does not block a fresh job
    status = wait_for(lambda: finished(runner, key), "the retry")
    assert status.state == "done", status.error
    assert runner.store.computations(key) == 2
    assert np.isfinite(runner.result(key).H["smse"]).all()


@pytest.mark.slow
def test_cancel_stops_the_job_without_an_entry(workspace, checkpoint, tiny_dataset, monkeypatch):
    monkeypatch.setenv(TEST_DELAY_ENV, "0.5")
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    key = runner.submit(request)
    wait_for(lambda: computing(runner, key), "the worker to start computing")
    assert runner.cancel(key)
    status = wait_for(lambda: finished(runner, key), "the job to stop", timeout=60)
    assert status.state == "cancelled" and "cancelled" in status.error
    assert runner.store.get(key) is None
    assert not runner.cancel(key)  # nothing runs any more
    assert not runner.store.cancel_requested(key)


@pytest.mark.slow
def test_jobs_queue_for_a_compute_slot_and_a_queued_job_can_be_cancelled(
    workspace, checkpoint, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv(slots.DIR_ENV, str(tmp_path / "slots"))  # inherited by the workers
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    monkeypatch.setenv(slots.THREADS_ENV, "1")
    runner = JobRunner(workspace)
    _, busy = slots.acquire("another computation")  # the machine's only slot is taken
    try:
        first = runner.submit(quick_request(checkpoint, tiny_dataset))
        wait_for(lambda: runner.status(first).queue_position == 1, "the first job to queue")
        second = runner.submit(quick_request(checkpoint, tiny_dataset, damping=1e-3))
        status = wait_for(
            lambda: (s := runner.status(second)).queue_position == 2 and s, "the second job"
        )
        assert status.state == "running" and status.active and "queued, position 2" in status.stage
        assert runner.store.computations(first) == 0  # nothing computes while queued
        assert runner.cancel(second)
        status = wait_for(lambda: finished(runner, second), "the queued job to stop", timeout=60)
        assert status.state == "cancelled" and "while queued" in status.error
        assert not runner.store.cancel_requested(second)
        assert runner.status(first).queue_position == 1
    finally:
        os.close(busy)
    status = wait_for(lambda: finished(runner, first), "the first job to run")
    assert status.state == "done", status.error
    assert runner.store.computations(first) == 1 and runner.store.computations(second) == 0
    log = runner.store.log_path(first).read_text()
    assert "queued, position 1" in log and "compute slot 1 of 1, 1 torch threads" in log
