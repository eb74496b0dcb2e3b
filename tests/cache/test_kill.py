"""kill -9 of a job worker at random moments, including inside the cache write: the cache
opens, holds no partial entry, the job's status is failed (not done), and a retry gives
exactly the uninterrupted result.

The workers are real (``tests.cache.killable_worker``: the product's worker with a pause
between writing a result's value file and committing its row, so a kill can land there).
Default suite: one kill inside the write (test_jobs kills one mid-computation); ``-m slow``:
20 at random moments, a fifth of them inside the write.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from coherence.cache import jobs, sqlview
from coherence.cache.jobs import JobRunner
from coherence.cache.keys import unit_keys
from coherence.cache.store import ORPHAN_GRACE_SECONDS, ResultStore
from coherence.workspace import cache_dir
from tests.fixtures import WORKER_TIMEOUT as TIMEOUT
from tests.fixtures import computing, finished, quick_request, wait_for


@pytest.fixture
def campaign(workspace, checkpoint, tiny_dataset, tmp_path, monkeypatch):
    """A runner whose workers are killable mid-write, and a way to catch their processes."""
    monkeypatch.setattr(jobs, "WORKER_MODULE", "tests.cache.killable_worker")
    marker = tmp_path / "writing"
    monkeypatch.setenv("KILL_MARKER", str(marker))
    spawned: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        process = popen(*args, **kwargs)
        spawned.append(process)
        return process

    monkeypatch.setattr(jobs.subprocess, "Popen", recording)
    runner = JobRunner(workspace)
    request = quick_request(checkpoint, tiny_dataset)
    return runner, request, marker, spawned, monkeypatch


def run_to_end(runner: JobRunner, request, monkeypatch):
    monkeypatch.setenv("KILL_WRITE_PAUSE", "0")
    key = runner.submit(request)
    status = wait_for(lambda: finished(runner, key), "the job to finish")
    assert status.state == "done", status.error
    return runner.result(key)


def assert_same(result, reference) -> None:
    for response in reference.H:
        np.testing.assert_array_equal(result.H[response], reference.H[response])
        np.testing.assert_array_equal(result.H_std[response], reference.H_std[response])
    np.testing.assert_array_equal(result.distances, reference.distances)
    assert result.diagnostics[0][0]["estimator"] == reference.diagnostics[0][0]["estimator"]


def kill_and_check(campaign, reference, moment: str, rng: random.Random, span: float) -> str:
    """One submitted job, SIGKILLed at ``moment`` ("write", "compute" or "random"); checks
    the aftermath and a retry. Returns the state the killed job ended in."""
    runner, request, marker, spawned, monkeypatch = campaign
    key = runner.key(request)
    runner.store.delete(key)
    for row in unit_keys(request):  # and its units, so the job computes again
        for unit in row:
            runner.store.delete_unit(unit)
    marker.unlink(missing_ok=True)
    monkeypatch.setenv("KILL_WRITE_PAUSE", "30" if moment == "write" else "0")
    monkeypatch.setenv(jobs.TEST_DELAY_ENV, "0.2" if moment == "compute" else "0")
    runner.submit(request)
    worker = spawned[-1]
    if moment == "write":
        wait_for(marker.exists, "the worker to write the result file")
    elif moment == "compute":
        wait_for(lambda: computing(runner, key), "the worker to start computing")
        time.sleep(rng.uniform(0, 0.5))
    else:
        time.sleep(rng.uniform(0, span))
    worker.send_signal(signal.SIGKILL)
    exit_code = worker.wait(TIMEOUT)
    status = wait_for(lambda: finished(runner, key), "the killed job's status")

    fresh = ResultStore(cache_dir(runner.workspace))  # the cache opens after the kill
    try:
        if status.state == "failed":
            assert exit_code == -signal.SIGKILL and "killed" in status.error, status
            assert not fresh.contains(key) and fresh.get(key) is None  # no partial entry
            assert fresh.info()["entries"] == 0
        else:  # killed after the commit, or finished before the signal: a complete entry
            assert moment == "random" and status.state == "done", (exit_code, status)
            assert_same(fresh.get(key), reference)
    finally:
        fresh.close()
    retried = run_to_end(runner, request, monkeypatch)
    assert_same(retried, reference)
    return status.state


def orphan_files(runner: JobRunner) -> list:
    store_dir = runner.store.directory / "store"
    referenced = sqlview.referenced_files(runner.store._cache)
    return [
        p
        for p in store_dir.glob("*/*/*.val")
        if p.relative_to(store_dir).as_posix() not in referenced
    ]


@pytest.mark.slow
def test_kill_during_the_cache_write(campaign):
    runner, request, _, _, _ = campaign
    reference = runner.run(request)  # in this process, on the same slot threads as a worker
    rng = random.Random(0)
    assert kill_and_check(campaign, reference, "write", rng, 0.0) == "failed"
    (leftover,) = orphan_files(runner)  # the killed writer's value file, never committed
    past = time.time() - ORPHAN_GRACE_SECONDS - 60
    os.utime(leftover, (past, past))
    ResultStore(cache_dir(runner.workspace)).close()  # opening cleans old orphans
    assert not leftover.exists() and orphan_files(runner) == []
    # the reference and the killed job computed; the retry assembled the killed job's stored
    # unit (it finished before the result write that the kill interrupted)
    assert runner.store.computations(runner.key(request)) == 2


@pytest.mark.slow
def test_kill_campaign_at_random_moments(campaign):
    runner, request, _, spawned, monkeypatch = campaign
    started = time.perf_counter()
    reference = run_to_end(runner, request, monkeypatch)
    span = 1.2 * (time.perf_counter() - started)  # up to a little past a whole job
    rng = random.Random(20240613)
    moments = ["write", "compute", "random", "random", "random"] * 4
    states = [kill_and_check(campaign, reference, m, rng, span) for m in moments]
    assert len(states) == 20 and states.count("failed") >= 12, states
    for process in spawned:  # every worker ends (the last may still be exiting)
        assert process.wait(TIMEOUT) in (0, -signal.SIGKILL)
