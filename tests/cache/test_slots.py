"""Compute slots on real processes: bounded, first come first served, freed by kill -9,
cancellable while queued, and torch threads set to the slot's share of the cores."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from coherence.cache import slots
from coherence.cache.locks import KeyLock
from coherence.cache.progress import ProgressTracker
from coherence.cache.states import JobState, ProgressRecord
from coherence.cache.status import from_record, job_status
from coherence.cache.store import ResultStore
from coherence.cli import app
from coherence.errors import RequestError
from tests.fixtures import busy_core, wait_for

TIMEOUT = 60

# A stdlib-only waiter: takes a slot, says so on stdout, holds it for argv[2] seconds.
WAITER = """
import sys, time
from coherence.cache import slots
cancellable = sys.argv[3] == "c"
if cancellable:
    slots.install_cancel_handler()
try:
    slot, fd = slots.acquire(sys.argv[1], cancellable=cancellable, poll_seconds=0.05)
except slots.QueueCancelled:
    print("cancelled", flush=True)
    sys.exit(3)
print(f"got {slot.index}", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def slot_dir(tmp_path, monkeypatch):
    directory = tmp_path / "slots"
    monkeypatch.setenv(slots.DIR_ENV, str(directory))
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    return directory


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_leftover_waiters():
    """A failed test must not leave slot holders or waiters running."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def start_waiter(label: str, hold: float, cancellable: bool = False) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WAITER, label, str(hold), "c" if cancellable else "n"],
        stdout=subprocess.PIPE,
        text=True,
    )
    STARTED.append(process)
    return process


def test_settings_follow_the_core_count_and_the_overrides(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv(slots.MAX_JOBS_ENV, raising=False)
    monkeypatch.delenv(slots.THREADS_ENV, raising=False)
    taken = [0]  # cores other processes keep busy (measured in the tests below)
    monkeypatch.setattr(slots, "cores_taken_by_others", lambda: taken[0])
    assert slots.max_jobs() == (1 if cores <= 4 else cores // 2)
    assert slots.threads_per_job() == max(1, cores // slots.max_jobs())
    taken[0] = cores  # every core busy: one thread still
    assert slots.threads_per_job() == 1
    taken[0] = 0
    monkeypatch.setenv(slots.MAX_JOBS_ENV, str(2 * cores))
    assert slots.max_jobs() == 2 * cores and slots.threads_per_job() == 1
    monkeypatch.setenv(slots.THREADS_ENV, "3")
    assert slots.threads_per_job() == 3
    for bad in ("zero", "0", "-2", "1.5"):
        monkeypatch.setenv(slots.MAX_JOBS_ENV, bad)
        with pytest.raises(RequestError, match=r"COHERENCE_MAX_JOBS.*whole number ≥ 1"):
            slots.max_jobs()


def test_slots_bound_the_work_and_waiters_go_first_come_first_served(slot_dir):
    holder = start_waiter("holder", 600)
    assert holder.stdout.readline().strip() == "got 0"
    first = start_waiter("first", 0.2)
    wait_for(lambda: slots.queue_position("first") == 1, "the first waiter to queue")
    second = start_waiter("second", 0.2)
    wait_for(lambda: slots.queue_position("second") == 2, "the second waiter to queue")
    time.sleep(0.3)
    assert slots.queue_position("first") == 1  # nobody got past the busy slot
    assert [t.label for t in slots.waiting()] == ["first", "second"]

    holder.send_signal(signal.SIGKILL)  # the OS frees its slot
    holder.wait(TIMEOUT)
    assert first.stdout.readline().strip() == "got 0"
    assert slots.queue_position("second") == 1
    assert second.stdout.readline().strip() == "got 0"  # only after the first let go
    assert first.wait(TIMEOUT) == 0 and second.wait(TIMEOUT) == 0
    assert slots.waiting() == [] and list((slot_dir / "queue").iterdir()) == []


def test_dead_waiters_leave_the_queue_and_two_slots_run_two_jobs(slot_dir, monkeypatch):
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "2")
    holders = [start_waiter(f"h{i}", 600) for i in range(2)]
    assert sorted(h.stdout.readline().strip() for h in holders) == ["got 0", "got 1"]
    doomed = start_waiter("doomed", 0.1)
    wait_for(lambda: slots.queue_position("doomed") == 1, "a waiter to queue")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(TIMEOUT)
    wait_for(lambda: slots.queue_position("doomed") is None, "the dead ticket to be dropped")
    assert list((slot_dir / "queue").iterdir()) == []
    for holder in holders:
        holder.kill()
        holder.wait(TIMEOUT)


def test_a_queued_waiter_can_be_cancelled(slot_dir):
    holder = start_waiter("holder", 600)
    assert holder.stdout.readline().strip() == "got 0"
    plain = start_waiter("plain", 0.1)
    wait_for(lambda: slots.queue_position("plain") == 1, "the plain waiter to queue")
    queued = start_waiter("queued", 0.1, cancellable=True)
    wait_for(lambda: slots.queue_position("queued") == 2, "the cancellable waiter to queue")
    assert not slots.cancel_waiter("plain")  # not cancellable: never signalled
    assert slots.cancel_waiter("queued")
    assert queued.stdout.readline().strip() == "cancelled" and queued.wait(TIMEOUT) == 3
    assert slots.queue_position("plain") == 1
    holder.kill()
    holder.wait(TIMEOUT)
    assert plain.stdout.readline().strip() == "got 0" and plain.wait(TIMEOUT) == 0


def test_a_job_waiting_for_a_slot_shows_its_place_in_the_queue(slot_dir, tmp_path):
    """A job holds its key's lock while it waits for a compute slot: its status is running,
    queued at its place (the dashboard shows "queued, position N")."""
    key = "9" * 64
    holder = start_waiter("holder", 600)
    assert holder.stdout.readline().strip() == "got 0"
    with ResultStore(tmp_path / "cache") as store:
        lock = KeyLock(store.lock_path(key))
        assert lock.acquire()
        try:
            start_waiter("other", 0.1)
            wait_for(lambda: slots.queue_position("other") == 1, "a waiter to queue")
            start_waiter(key, 0.1)
            wait_for(lambda: slots.queue_position(key) == 2, "the job to queue")
            status = job_status(store, key)
            assert status.state == "running" and status.queued and status.queue_position == 2
            assert status.stage == "queued, position 2: waiting for a free compute slot"
        finally:
            lock.release()
    holder.kill()
    holder.wait(TIMEOUT)


def test_compute_slot_sets_torch_threads_and_is_reentrant(slot_dir, monkeypatch):
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    monkeypatch.setenv(slots.THREADS_ENV, "1")
    before = torch.get_num_threads()
    with slots.compute_slot("outer") as outer:
        assert torch.get_num_threads() == 1 and outer.threads == 1
        with slots.compute_slot("inner") as inner:  # the same process: no deadlock
            assert inner == outer
        assert slots.held_slot() == outer
    assert torch.get_num_threads() == before and slots.held_slot() is None
    # the slot was freed: another process takes it at once
    other = start_waiter("other", 0)
    assert other.stdout.readline().strip() == "got 0" and other.wait(TIMEOUT) == 0


def test_cli_train_waits_for_a_slot(slot_dir, tiny_dataset, tmp_path):
    _, fd = slots.acquire("test holds the only slot")
    out = tmp_path / "ckpt"
    args = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]
    args += ["--batch-size", "4", "--transitions", "2", "--device", "cpu"]
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=CliRunner().invoke(app, args)))
    try:
        worker.start()
        wait_for(lambda: slots.queue_position("train") == 1, "`coherence train` to queue")
        time.sleep(0.5)
        assert not (out / "model.safetensors").exists()  # nothing trained while queued
    finally:
        os.close(fd)
    worker.join(TIMEOUT * 3)
    result = outcome["r"]
    assert result.exit_code == 0, result.output
    assert "queued, position 1" in result.output and (out / "model.safetensors").exists()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_cli_train_beside_a_busy_process_says_why_it_takes_fewer_threads(
    slot_dir, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.delenv(slots.THREADS_ENV, raising=False)
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    monkeypatch.setattr(slots, "_load_reading", [])
    args = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "ckpt")]
    args += ["--epochs", "1", "--batch-size", "4", "--transitions", "2", "--device", "cpu"]
    with busy_core():
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert re.search(r"other processes keep [12] of 2 cores busy: computing on 1 torch", said)


def test_a_cost_probe_takes_a_free_slot_and_says_when_another_job_holds_them(slot_dir, monkeypatch):
    """A probe timed beside another process's computation ran oversubscribed: a 25 s
    analysis was quoted at 26 min (and asked for a confirmation). A probe now holds a free
    slot, on a job's threads, while it times, says when there was none, and never waits."""
    monkeypatch.setenv(slots.THREADS_ENV, "1")
    before = torch.get_num_threads()
    with slots.measuring_slot() as quiet:
        assert quiet and torch.get_num_threads() == 1
        waiter = start_waiter("next", 0)  # queues behind the probe's slot
        wait_for(lambda: slots.queue_position("next") == 1, "the next job to queue")
    assert torch.get_num_threads() == before
    assert waiter.stdout.readline().strip() == "got 0" and waiter.wait(TIMEOUT) == 0
    _, fd = slots.acquire("other")
    try:
        assert slots.busy()
        with slots.measuring_slot() as quiet:
            assert not quiet  # at once, without queuing
    finally:
        os.close(fd)
    assert not slots.busy()
    with slots.compute_slot("this job"), slots.measuring_slot() as quiet:
        assert quiet and not slots.busy()  # its own slot


def test_a_probe_in_another_thread_of_this_process_is_not_another_job(slot_dir, monkeypatch):
    """Two dashboard reruns overlapped: the older one's cost probe held the only slot, and
    the newer one read it as another process's job ("Another job is computing on this
    machine", Compute greyed out) while nothing else ran. The slot is this process's own:
    busy() says no, and a second probe waits for the first instead of giving up."""
    import threading

    monkeypatch.setenv(slots.THREADS_ENV, "1")
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first_probe() -> None:
        with slots.measuring_slot() as quiet:
            assert quiet
            inside.set()
            release.wait(TIMEOUT)
            order.append("first done")

    thread = threading.Thread(target=first_probe)
    thread.start()
    try:
        assert inside.wait(TIMEOUT)
        assert not slots.busy()  # held by this process's own probe
        threading.Timer(0.3, release.set).start()
        with slots.measuring_slot() as quiet:  # waits for the first, then times quietly
            order.append("second timed")
            assert quiet
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert order == ["first done", "second timed"]
    _, fd = slots.acquire("another process's job")  # a real holder still counts
    try:
        assert slots.busy()
        # ... also while a probe of this process runs without a slot (it yielded False)
        probing, done = threading.Event(), threading.Event()

        def slotless_probe() -> None:
            with slots.measuring_slot() as quiet:
                order.append(f"slotless quiet={quiet}")
                probing.set()
                done.wait(TIMEOUT)

        other = threading.Thread(target=slotless_probe)
        other.start()
        try:
            assert probing.wait(TIMEOUT)
            assert slots.busy()
        finally:
            done.set()
            other.join(TIMEOUT)
        assert order[-1] == "slotless quiet=False"
    finally:
        os.close(fd)
    with slots.measuring_slot() as outer, slots.measuring_slot() as inner:  # nested: no wait
        assert outer and inner
    assert not slots.busy()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_job_beside_another_process_computes_on_the_cores_left(slot_dir, tmp_path, monkeypatch):
    """Slots keep this project's jobs apart, not a user's own scripts: beside one busy
    process on 2 cores the demo UNet trained at 14.6 s an epoch on 2 threads and 5.7 s on 1
    (bench_foreign_load). A job now takes its share less the cores others keep busy, and says
    so."""
    monkeypatch.delenv(slots.THREADS_ENV, raising=False)
    monkeypatch.setenv(slots.MAX_JOBS_ENV, "1")
    monkeypatch.setattr(slots, "_load_reading", [])  # no reading kept from an earlier test
    said: list[str] = []
    with busy_core():  # two cores, one of them another process's
        with slots.compute_slot("beside a busy process", on_crowded=said.append) as slot:
            assert slot.threads == 1 == torch.get_num_threads()
            assert slot.cores_taken in (1, 2)  # 2 if yet another process ran there meanwhile
            assert (
                said
                == [slot.crowded_note()]
                == [
                    f"other processes keep {slot.cores_taken} of 2 cores busy: computing on 1 "
                    "torch thread, not 2 (2 would compete with them for the cores; "
                    "COHERENCE_TORCH_THREADS sets the count)"
                ]
            )
            with slots.compute_slot("nested", on_crowded=said.append):
                assert len(said) == 1  # the slot held is reused: said once
            record = _tracked_record(tmp_path)  # a job's progress record carries the note
            assert record.note == said[0]
            assert from_record("k", JobState.RUNNING, record).note == said[0]
            assert from_record("k", JobState.DONE, record).note is None
        monkeypatch.setenv(slots.THREADS_ENV, "2")  # the user's choice stands, unremarked
        with slots.compute_slot("told how many", on_crowded=said.append) as slot:
            assert slot.threads == 2 and slot.cores_taken == 0 and slot.crowded_note() is None
            assert len(said) == 1 and _tracked_record(tmp_path).note is None


def _tracked_record(tmp_path) -> ProgressRecord:
    """The progress record a job computing in this process's slot writes."""
    with ResultStore(tmp_path / "cache") as store:
        ProgressTracker(store, "a" * 64).write(JobState.RUNNING)
        record = store.get_progress("a" * 64)
    assert record is not None
    return record


def test_the_reading_leaves_out_this_process_a_part_core_and_a_passing_burst(monkeypatch):
    """Busy time over the sample, less this process's own (a dashboard's other threads, the
    job's own work), in cores: 0.7 of a core and more counts as a whole one (a browser
    redrawing a chart takes less), and a busy sample counts only if a second one, a moment
    later, is busy too (the last slot holder's exit must not halve the next job's threads)."""
    cpus = {0, 1, 2}
    clock = [100.0]  # a scripted clock: each sample lasts exactly its 0.2 s
    fake_time = SimpleNamespace(
        monotonic=lambda: clock[0], sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds)
    )
    monkeypatch.setattr(slots, "time", fake_time)
    monkeypatch.setattr(slots, "_affinity", lambda: cpus)

    def taken(*samples: tuple[float, float]) -> int:
        """The reading when each sample in turn sees (busy cores, this process's cores)."""
        monkeypatch.setattr(slots, "_load_reading", [])
        reads, totals = [], {"busy": 0.0, "own": 0.0}

        def busy(seen):
            assert seen == cpus  # only the CPUs this process may run on
            if len(reads) % 2:  # the read after a sample: its time went by
                machine, mine = samples[len(reads) // 2]
                totals["busy"] += machine * 0.2
                totals["own"] += mine * 0.2
            reads.append(seen)
            return totals["busy"]

        monkeypatch.setattr(slots, "busy_cpu_seconds", busy)
        monkeypatch.setattr(slots, "_own_cpu_seconds", lambda: totals["own"])
        result = slots.cores_taken_by_others(sample_seconds=0.2)
        assert len(reads) == 2 * len(samples)  # as many samples as scripted, no more
        return result

    assert taken((1.5, 1.0)) == 0  # half a core of others'
    assert taken((0.6, 0.0)) == 0 and taken((0.8, 0.0), (0.8, 0.0)) == 1  # 0.7 a core
    assert taken((1.6, 0.6), (1.6, 0.6)) == 1
    assert taken((2.0, 2.0)) == 0  # all of it this process's own
    assert taken((3.0, 0.0), (3.0, 0.0)) == 3  # at most the CPUs this process may use
    assert taken((1.0, 0.0), (0.2, 0.0)) == 0  # a passing burst
    assert taken((2.0, 0.0), (1.0, 0.0)) == 1  # the smaller of two busy samples
    monkeypatch.setattr(slots, "_load_reading", [])
    monkeypatch.setattr(slots, "busy_cpu_seconds", lambda cpus: None)  # no /proc/stat here
    assert slots.cores_taken_by_others() == 0


def test_an_affinity_set_that_names_no_line_of_proc_stat_reads_every_cpu():
    """lxcfs numbers a container's CPUs from 0 whatever their ids on the host: a reading of
    only the affinity set's lines would then be 0 and the rule silently off."""
    one = slots.busy_cpu_seconds({min(os.sched_getaffinity(0))})
    every = slots.busy_cpu_seconds({10**6})  # no such CPU line
    assert one is not None and every is not None and every >= one > 0
